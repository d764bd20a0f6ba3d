import math

import pytest
import torch
import torch.nn.functional as F

from models.training.config import BatchSchedule, TrainConfig
from models.training.gradcache import grad_cached_backward, plain_backward
from models.training.losses import clip_loss, false_negative_mask


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_clip_loss_matches_hand_computation_on_3x3():
    img = torch.eye(3)
    txt = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    scale = torch.tensor(math.log(2.0))  # logits = 2 * cosine
    c = 1 / math.sqrt(2)
    sims = [[1, c, 0], [0, c, 0], [0, 0, 1]]
    logits = [[2 * v for v in row] for row in sims]
    rows = sum(_lse(logits[i]) - logits[i][i] for i in range(3)) / 3
    cols = sum(_lse([logits[j][i] for j in range(3)]) - logits[i][i] for i in range(3)) / 3
    expected = 0.5 * (rows + cols)
    assert clip_loss(img, txt, scale).item() == pytest.approx(expected, rel=1e-6)


def test_masking_a_false_negative_removes_it_from_both_softmaxes():
    img = torch.eye(3)
    txt = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    scale = torch.tensor(math.log(2.0))
    groups = torch.tensor([7, 7, -1])  # items 0 and 1: same duplicate cluster; -1 = no cluster
    mask = false_negative_mask(groups)
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    c = 1 / math.sqrt(2)
    logits = [[2, 2 * c, 0], [0, 2 * c, 0], [0, 0, 2]]
    rows = (_lse([2, 0]) - 2 + _lse([2 * c, 0]) - 2 * c + _lse([0, 0, 2]) - 2) / 3
    cols = (_lse([2, 0]) - 2 + _lse([2 * c, 0]) - 2 * c + _lse([0, 0, 2]) - 2) / 3
    masked = clip_loss(img, txt, scale, groups).item()
    assert masked == pytest.approx(0.5 * (rows + cols), rel=1e-6)
    # The masked pair (text 0 scored highly against image 1's row) was a hard negative: the loss drops.
    assert masked < clip_loss(img, txt, scale).item()
    assert logits  # the table above is the hand computation


def test_no_groups_or_singletons_mask_nothing():
    assert false_negative_mask(None) is None
    assert false_negative_mask(torch.tensor([[-1], [3], [4]])) is None


def test_logit_scale_is_clamped():
    img = txt = torch.eye(2)
    big = clip_loss(img, txt, torch.tensor(50.0), max_logit_scale=math.log(100))
    capped = clip_loss(img, txt, torch.tensor(math.log(100)))
    assert big.item() == pytest.approx(capped.item())


def _towers():
    torch.manual_seed(0)
    image = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    text = torch.nn.Linear(6, 8)
    scale = torch.nn.Parameter(torch.tensor(2.0))
    return image, text, scale


def _step(cached, x, t, groups):
    image, text, scale = _towers()

    def ei(b):
        return F.normalize(image(b), dim=-1)

    def et(b):
        return F.normalize(text(b), dim=-1)

    def loss(a, b):
        return clip_loss(a, b, scale, groups)

    value = grad_cached_backward(ei, et, loss, x, t, chunk=3) if cached else plain_backward(ei, et, loss, x, t)
    return value, [p.grad.clone() for p in (*image.parameters(), *text.parameters(), scale)]


def test_gradient_cache_equals_full_batch_gradients():
    x = torch.randn(10, 3, 2, 2)
    t = torch.randn(10, 6)
    groups = torch.tensor([0, 0, 1, -1, 2, 2, -1, 3, 4, 5])
    v0, g0 = _step(False, x, t, groups)
    v1, g1 = _step(True, x, t, groups)
    assert v0 == pytest.approx(v1, rel=1e-6)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_batch_schedule_doubles_at_given_epochs():
    s = BatchSchedule(base=64, double_at=(2, 4), max_size=200)
    assert [s.batch_size(e) for e in range(6)] == [64, 64, 128, 128, 200, 200]
    with pytest.raises(ValueError, match="base must be >= 2"):
        BatchSchedule(base=1)


def test_mlm_on_locked_text_tower_is_refused():
    with pytest.raises(ValueError, match="mlm_weight > 0 needs lock_text=False"):
        TrainConfig(mlm_weight=0.5, lock_text=True)
