"""The tagger's training step with ZhichunRoad's regularisers (FGM, R-Drop) on a one-layer MiniLM top."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from models.attributes.train import TrainConfig, make_optimizer, robust_tag_step, tag_loss, tag_step, train_top  # noqa: E402

WEIGHT = [1.0, 3.0, 3.0]


@pytest.fixture(scope="module")
def top():
    from models.attributes.tagger import load_tower, split_tower
    from models.refs import text_tower_path

    _, bert = load_tower(text_tower_path())
    torch.manual_seed(0)
    return split_tower(bert, 5, 2)[1]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 6, 384, generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[2, 4:] = 0
    y = torch.zeros(3, 6, 2, dtype=torch.long)
    y[0, 1, 0], y[0, 2, 0], y[1, 3, 1] = 1, 2, 1
    y[2, 4:] = -1
    return h, mask, y


def _one_step(top, cfg, train: bool):
    t = copy.deepcopy(top)
    t.train(train)
    opt, sched = make_optimizer(t, cfg, 3)
    h, mask, y = _batch()
    loss = robust_tag_step(t, opt, sched, h, mask, y, torch.tensor(WEIGHT), cfg)
    return t, loss


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_without_regularisers_the_step_is_the_plain_one(top):
    cfg = TrainConfig(epochs=1)
    torch.manual_seed(1)
    a, loss_a = _one_step(top, cfg, train=False)
    b = copy.deepcopy(top).eval()
    opt, sched = make_optimizer(b, cfg, 3)
    h, mask, y = _batch()
    loss_b = tag_step(b, opt, sched, b(h, mask), y, torch.tensor(WEIGHT))
    assert loss_a == pytest.approx(loss_b)
    assert _same_weights(a, b)


def test_fgm_adds_the_loss_of_inputs_moved_uphill(top):
    plain, loss_plain = _one_step(top, TrainConfig(epochs=1), train=False)
    adv, loss_adv = _one_step(top, TrainConfig(epochs=1, fgm=1.0), train=False)
    assert loss_adv == pytest.approx(loss_plain)      # the reported loss is the clean one
    assert not _same_weights(plain, adv)                # the adversarial gradients changed the update
    # The perturbation goes up the loss: moving the inputs along the normalised gradient raises it.
    t = copy.deepcopy(top).eval()
    h, mask, y = _batch()
    h = h.requires_grad_(True)
    loss = tag_loss(t(h, mask), y, torch.tensor(WEIGHT))
    loss.backward()
    with torch.no_grad():
        moved = tag_loss(t(h + 1.0 * h.grad / h.grad.norm(), mask), y, torch.tensor(WEIGHT))
    assert float(moved) > float(loss.detach())


def test_rdrop_without_dropout_is_the_plain_loss_and_with_dropout_adds_a_penalty(top):
    _, plain = _one_step(top, TrainConfig(epochs=1), train=False)
    _, no_dropout = _one_step(top, TrainConfig(epochs=1, rdrop=1.0), train=False)
    assert no_dropout == pytest.approx(plain, rel=1e-5)  # two identical passes: KL 0, mean of equal losses
    torch.manual_seed(3)
    _, with_dropout = _one_step(top, TrainConfig(epochs=1, rdrop=50.0), train=True)
    torch.manual_seed(3)
    _, without_kl = _one_step(top, TrainConfig(epochs=1), train=True)
    assert with_dropout > without_kl


@pytest.mark.parametrize("fgm,rdrop", [(1.0, 0.0), (0.0, 1.0)])
def test_training_with_a_regulariser_still_learns_the_tags(top, fgm, rdrop):
    h, mask, y = _batch()
    hidden = [h[i, :int(mask[i].sum())] for i in range(3)]
    tags = [y[i, :int(mask[i].sum())].numpy().astype("int8") for i in range(3)]
    t = copy.deepcopy(top)
    losses = train_top(t, hidden, tags, TrainConfig(epochs=25, batch_size=3, fgm=fgm, rdrop=rdrop,
                                                    lr_layers=3e-4, threads=0))
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        pred = t(h, mask).argmax(-1)
    assert bool((pred[y >= 0] == y[y >= 0]).all())
