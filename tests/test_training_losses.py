"""Our losses against closed forms, torch's through the same interface, optimizers by name."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.errors import SetupError
from training.losses import LOSSES, make_loss
from training.optim import OPTIMIZERS, make_optimizer


def test_focal_with_gamma_zero_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(64, 7, generator=g), torch.randint(7, (64,), generator=g)
    focal = make_loss("focal", gamma=0.0)(logits, target)
    assert torch.allclose(focal, F.cross_entropy(logits, target), rtol=1e-6)


def test_focal_matches_its_closed_form_and_down_weights_easy_samples() -> None:
    logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    p = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    want = -((1 - p) ** 2) * math.log(p)
    assert make_loss("focal", gamma=2.0)(logits, target).item() == pytest.approx(want, rel=1e-6)
    assert make_loss("focal")(logits, target) < make_loss("cross_entropy")(logits, target)


def test_dice_of_a_perfect_prediction_is_zero_and_of_a_wrong_one_is_one() -> None:
    target = torch.tensor([0, 2, 1, 1])
    perfect = 100.0 * F.one_hot(target, 3).float()
    assert make_loss("dice")(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = 100.0 * F.one_hot((target + 1) % 3, 3).float()
    assert make_loss("dice")(wrong, target).item() == pytest.approx(1.0, abs=1e-6)
    # Binary segmentation: one logit channel against a float mask.
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert make_loss("dice")(200 * mask - 100, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_contrastive_at_and_inside_the_margin() -> None:
    loss = make_loss("contrastive", margin=1.0)
    labels = torch.tensor([0, 1])
    at_margin = torch.tensor([[0.0, 0.0], [0.6, 0.8]])  # distance exactly 1
    assert loss(at_margin, labels).item() == pytest.approx(0.0, abs=1e-6)
    inside = torch.tensor([[0.0, 0.0], [0.3, 0.4]])  # distance 0.5: costs (1 - 0.5)^2
    assert loss(inside, labels).item() == pytest.approx(0.25, rel=1e-5)
    same = torch.tensor([0, 0])  # a same-label pair costs d^2
    assert loss(inside, same).item() == pytest.approx(0.25, rel=1e-5)
    assert loss(at_margin, same).item() == pytest.approx(1.0, rel=1e-5)


def test_mse_and_bce_take_class_indices_as_one_hot() -> None:
    out, target = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 3])
    onehot = F.one_hot(target, 4).float()
    assert torch.allclose(make_loss("mse")(out, target), F.mse_loss(out, onehot))
    assert torch.allclose(
        make_loss("bce_with_logits")(out, target), F.binary_cross_entropy_with_logits(out, onehot)
    )


def test_every_loss_trains_a_step() -> None:
    for name in LOSSES:
        model = torch.nn.Linear(6, 3)
        out = model(torch.randn(8, 6))
        make_loss(name)(out, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
        assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all(), name


def test_bad_targets_name_what_does_not_fit() -> None:
    with pytest.raises(SetupError, match=r"target class 12 does not fit the model's 10 outputs"):
        make_loss("cross_entropy")(torch.randn(2, 10), torch.tensor([1, 12]))
    with pytest.raises(SetupError, match=r"output has shape \(4, 3\) but the targets have shape \(4, 2\)"):
        make_loss("mse")(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(SetupError, match="expected one of"):
        make_loss("hinge")


def test_every_optimizer_steps_and_unknown_ones_are_refused() -> None:
    for name in OPTIMIZERS:
        w = torch.nn.Parameter(torch.ones(3))
        opt = make_optimizer(name, [w], 0.1)
        (w**2).sum().backward()
        opt.step()
        assert (w < 1).all(), name
    with pytest.raises(SetupError, match="--optimizer 'lbfgs'"):
        make_optimizer("lbfgs", [torch.nn.Parameter(torch.ones(1))], 0.1)
    with pytest.raises(SetupError, match="positive finite"):
        make_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], -1.0)
