"""Stacked fits (models.stacked, DDPM.fit_stacked): K fits in lock-step give what K separate fits give."""

from __future__ import annotations

import pytest
import torch
from conftest import digits, make_model

from imgcollapse.data import ImageSet
from imgcollapse.errors import TrainingDiverged
from imgcollapse.models.ddpm import DDPM
from imgcollapse.models.stacked import Fit, _clip_each, check_stackable, train_stacked

# float rounding only: vmap sums the grouped convolutions in another order (measured: <= 1.1e-6 after 12 steps,
# against steps of ~0.016 and 0.6 between two seeds' fits)
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
# parameters whose true gradient is 0: attention is invariant to a key bias (softmax ignores a shift), so theirs is
# rounding noise, which Adam scales up to a full step: they match no better than noise does
ZERO_GRADIENT = ("attentions.0.to_k.bias",)


def tiny(**kw) -> DDPM:
    kw = {"train_steps": 12, "batch_size": 8, "warmup_steps": 2, "block_out_channels": [32, 48],
          "finetune_steps": 6} | kw
    return make_model("ddpm", sampling={"steps": 3, "batch_size": 4}, **kw)


def subsets() -> list[ImageSet]:
    """Three training sets of different sizes and content, as three chains' generations would have."""
    train = digits().train
    return [ImageSet(train.images[a:b], train.labels[a:b]) for a, b in ((0, 300), (300, 500), (500, 1100))]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if name.endswith(ZERO_GRADIENT):
            continue
        torch.testing.assert_close(p, q, **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kw", [{}, {"num_classes": 10, "snr_gamma": None, "prediction_type": "epsilon"}],
                         ids=["default", "conditional-epsilon"])
def test_stacked_fits_are_separate_fits(kw):
    data, seeds = subsets(), [0, 7, 7]  # two fits with one seed on different data: their draws must not mix
    alone = [tiny(**kw) for _ in data]
    expected = [m.fit(d, seed=s) for m, d, s in zip(alone, data, seeds, strict=True)]
    stacked = [tiny(**kw) for _ in data]
    got = DDPM.fit_stacked(stacked, data, seeds)
    for a, b, e, g in zip(alone, stacked, expected, got, strict=True):
        assert_same_weights(a.unet, b.unet)
        assert g["train_steps"] == e["train_steps"] == 12
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
    # the fits differ from each other (a stacked fit that trained one network K times would pass the above
    # only if the separate fits were equal too)
    assert not torch.allclose(next(stacked[1].unet.parameters()), next(stacked[2].unet.parameters()))


def test_stacked_fine_tunes_are_separate_fine_tunes(tmp_path):
    data = subsets()
    parents = []
    for k, d in enumerate(data):
        parent = tiny()
        parent.fit(d, seed=k)
        parent.save(tmp_path / f"m{k}")
        parents.append(tmp_path / f"m{k}")
    alone = [tiny() for _ in data]
    fits = enumerate(zip(alone, data, parents, strict=True))
    expected = [m.fit(d, seed=10 + k, init_from=p) for k, (m, d, p) in fits]
    stacked = [tiny() for _ in data]
    got = DDPM.fit_stacked(stacked, data, [10, 11, 12], init_from=parents)
    for a, b, e, g in zip(alone, stacked, expected, got, strict=True):
        assert g["train_steps"] == e["train_steps"] == 6  # the fine-tune's budget, not generation 0's
        assert_same_weights(a.unet, b.unet)


def test_stacked_fits_refuse_what_cannot_step_together():
    data = subsets()
    with pytest.raises(ValueError, match="one of each per fit"):
        DDPM.fit_stacked([tiny(), tiny()], data, [0, 1, 2])
    with pytest.raises(ValueError, match="differ in config"):
        DDPM.fit_stacked([tiny(), tiny(lr=1e-3)], data[:2], [0, 1])
    epochs = {"budget": "epochs", "epochs": 0.5}
    with pytest.raises(ValueError, match=r"budgets differ \(\[19, 38\] steps\)"):  # ceil(0.5 x 300 / 8), ... 600
        DDPM.fit_stacked([tiny(**epochs), tiny(**epochs)], [data[0], data[2]], [0, 1])
    norm = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="BatchNorm1d '1'"):
        check_stackable([norm, norm])
    with pytest.raises(ValueError, match="one architecture"):
        check_stackable([torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)])


def test_a_nan_in_one_fit_stops_the_stack(caplog):
    nets = [torch.nn.Linear(2, 1) for _ in range(2)]
    fits = [Fit(net, torch.full((16, 2), float(k)), None, seed=k) for k, net in enumerate(nets)]

    def draw(x, y, g):
        return (x,)

    def loss(call, batch):  # the second fit's images are 1s: its loss alone is NaN
        return call(batch[0]).mean() * torch.where(batch[0][0, 0] > 0.5, float("nan"), 1.0)

    with pytest.raises(TrainingDiverged):
        train_stacked(fits, draw, loss, steps=5, batch_size=4, lr=1e-2, warmup_steps=0, ema_decay=None,
                      grad_clip=None, check_every=2)
    assert "stacked fit 2 of 2 (seed 1) diverged" in caplog.text


def test_each_fit_is_clipped_by_its_own_norm():
    torch.manual_seed(0)
    stacked = [torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 7, requires_grad=True)]
    for p in stacked:
        p.grad = torch.randn_like(p) * torch.tensor([0.05, 5.0, 50.0]).view(-1, *[1] * (p.dim() - 1))
    alone = [[p.grad[k].clone().requires_grad_(False) for p in stacked] for k in range(3)]
    _clip_each(stacked, max_norm=1.0)
    for k, grads in enumerate(alone):
        params = [torch.zeros_like(g, requires_grad=True) for g in grads]
        for param, g in zip(params, grads, strict=True):
            param.grad = g
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for param, p in zip(params, stacked, strict=True):
            torch.testing.assert_close(p.grad[k], param.grad)
    norms = [float(torch.stack([p.grad[k].norm() for p in stacked]).norm()) for k in range(3)]
    assert norms[0] < 1 and torch.equal(stacked[0].grad[0], alone[0][0])  # under the bound: untouched
    assert norms[1] == pytest.approx(1.0, rel=1e-5) and norms[2] == pytest.approx(1.0, rel=1e-5)
