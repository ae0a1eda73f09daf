"""Metrics against hand-computed values on a toy linear model."""

import math

import pytest
import torch
from torch import nn

from drmguard.errors import DrmguardError
from drmguard.metrics import (attack_metrics, detection_metrics, feature_angles, implanted,
                              rav_from_angles, regression_error, rnv_rav)
from drmguard.models.split import RegressionModel
from drmguard.tasks import get_task


def toy_model() -> RegressionModel:
    """1×1 RGB "images"; h = F1(x) = x as a 3-vector (no normalisation); W = [e1; e2]."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        net[1].bias.zero_()
    return RegressionModel(net, (1, 1), 3).eval()


def images(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(-1, 3, 1, 1)


# clean features: angles (θ1, θ2) = (0, π/2), (π/2, 0), (π/2, π/2), (π/4, π/2)
CLEAN = images([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
# poisoned features: (0, π/2), (π/4, π/2)
POISONED = images([[1, 0, 0], [1, 0, 1]])


def test_feature_angles_by_hand():
    expected = torch.tensor([[0, 0.5], [0.5, 0], [0.5, 0.5], [0.25, 0.5]]) * math.pi
    assert torch.allclose(feature_angles(toy_model(), CLEAN, margin=0.0), expected, atol=1e-6)
    # the default keeps the cosine 1e-6 inside [-1, 1] (finite gradients): θ >= ~1.4e-3
    assert torch.allclose(feature_angles(toy_model(), CLEAN), expected, atol=2e-3)


def test_rnv_rav_by_hand():
    # Var θ1 clean = 11 (π/16)², Var θ2 clean = 12 (π/16)²; poisoned: 4 (π/16)² and 0.
    # norms clean 1, 1, 1, √2 -> var (9 − 6√2)/16; poisoned 1, √2 -> (3 − 2√2)/4; RNV = 4/3.
    model = toy_model()
    rnv, rav = rnv_rav(model, CLEAN, POISONED)
    assert rnv == pytest.approx(4 / 3, rel=1e-4)
    assert rav == pytest.approx((4 / 11 + 0 / 12) / 2, rel=1e-3)
    _, rav_sums = rnv_rav(model, CLEAN, POISONED, aggregation="ratio_of_sums")
    assert rav_sums == pytest.approx(4 / 23, rel=1e-3)
    with pytest.raises(DrmguardError):
        rnv_rav(model, CLEAN, POISONED, aggregation="median")


def test_rav_from_angles_is_differentiable():
    theta_p = torch.tensor([[0.1, 0.2], [0.3, 0.2]], requires_grad=True)
    theta_c = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    rav = rav_from_angles(theta_p, theta_c)  # (0.01/0.25 + 0/1) / 2
    assert rav.item() == pytest.approx(0.02, rel=1e-4)
    rav.backward()
    assert torch.isfinite(theta_p.grad).all() and theta_p.grad.abs().sum() > 0


class ConstantTrigger:
    """A stand-in attack: T(x) = a fixed image, target y_t."""

    def __init__(self, image, target):
        self.image, self.targets = image, [torch.tensor(target)]
        self.target = self.targets[0]

    def apply_for(self, x, i=0):
        return self.image.expand_as(x).clone()


def test_attack_metrics_by_hand():
    model, task = toy_model(), get_task("generic", dim=2)
    y = torch.tensor([[1.0, 0], [0, 0], [0, 0], [1, 1]])  # outputs are (1,0), (0,1), (0,0), (1,0)
    attack = ConstantTrigger(images([[0.5, 0.25, 0.0]])[0], [0.5, 0.5])  # output (0.5, 0.25)
    m = attack_metrics(model, attack, (CLEAN, y), task)
    assert m["RE"] == pytest.approx((0 + 0.5 + 0 + 0.5) / 4)
    assert m["AE"] == pytest.approx(0.125)  # |0.5-0.5| + |0.25-0.5| over 2 components
    assert m["DAE"] == pytest.approx((0.375 + 0.375 + 0.375 + 0.625) / 4)
    # clean outputs (1,0), (0,1), (0,0), (1,0) against y_t (0.5, 0.5)
    assert m["CTE"] == pytest.approx((0.5 + 0.5 + 0.5 + 0.5) / 4)
    assert implanted(m, fraction=0.5) and not implanted(m)  # AE 0.125 = 0.25 · CTE 0.5
    assert m["real_target"] == pytest.approx([0.5, 0.25])
    assert m["RNV"] == pytest.approx(0.0) and m["RAV"] == pytest.approx(0.0, abs=1e-6)
    assert regression_error(model, CLEAN, y, task) == pytest.approx(m["RE"])


def test_implanted_criterion():
    assert implanted({"AE": 1.2, "CTE": 22.0})  # a working cpu-profile backdoor
    assert not implanted({"AE": 10.0, "CTE": 15.0})  # a weak pull towards the target
    assert not implanted({"AE": 2.5, "CTE": 10.0})  # strictly below the fraction
    assert implanted({"AE": 6.0, "CTE": 10.0}, fraction=0.7)
    # outputs collapsed onto the label mean, the target one standard deviation away
    assert not implanted({"AE": 13.0, "CTE": 21.0})
    # multi-target: every target must be implanted
    multi = {"AE": 1.0, "CTE": 10.0, "AE_per_target": [1.0, 9.0], "CTE_per_target": [10.0, 10.0]}
    assert not implanted(multi) and implanted(multi, fraction=0.95)
    for bad in ({"AE": 1.0}, {"AE": 1.0, "CTE": 2.0, "AE_per_target": [1.0, 1.0]}):
        with pytest.raises(DrmguardError):
            implanted(bad)
    with pytest.raises(DrmguardError):
        implanted({"AE": 1.0, "CTE": 10.0}, fraction=0.0)


def test_detection_metrics_by_hand():
    m = detection_metrics([True, True, False, False, True], [0.9, 0.2, 0.3, 0.1, 0.8],
                          [True, False, True, False, True])
    assert (m["TP"], m["FP"], m["FN"], m["TN"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 (positive, negative) pairs ordered
    assert detection_metrics([False, False], [0.1, 0.2], [False, True])["roc_auc"] is None
    with pytest.raises(DrmguardError):
        detection_metrics([True], [0.1, 0.2], [True])
