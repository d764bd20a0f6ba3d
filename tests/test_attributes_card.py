"""The tagger's model card says which of ZhichunRoad's regularisers its training used."""

from models.attributes.card import _regulariser_line
from models.attributes.train import TrainConfig


def test_the_card_names_r_drop_and_fgm_only_when_used():
    assert _regulariser_line(TrainConfig()) == ""
    line = _regulariser_line(TrainConfig(rdrop=1.0))
    assert "R-Drop (alpha 1" in line and "FGM" not in line
    both = _regulariser_line(TrainConfig(rdrop=0.5, fgm=1.0))
    assert "R-Drop (alpha 0.5" in both and "FGM (epsilon 1" in both
