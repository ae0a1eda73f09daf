"""The regression-generalised baselines (NC-R, FeatureRE-R, ANP, Fine-pruning, Fine-tuning) on a
tiny planted backdoor.

Fixture: 16×16 images of a bright blob on a noisy background; the label is the blob position
(x, y) ∈ [−0.4, 0.4]². A tiny small_resnet is trained on data where 10% of the images carry a red
3×3 patch in the bottom-right corner and the label (−0.35, −0.35). The trained model follows the
patch (error to the target ≈ 0.05 on patched test images, 98% within 0.15) and keeps a clean
error ≈ 0.01. Trained once per module (a few seconds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drmguard.data.base import ArrayDataset
from drmguard.defenses import get_detector, get_mitigator
from drmguard.defenses import _common as C
from drmguard.errors import DrmguardError
from drmguard.tasks import get_task
from drmguard.training import TrainConfig, predict, train_regressor

S = 16
TARGET = np.array([-0.35, -0.35], np.float32)
TAU = 0.15  # the fixture's trigger puts ~98% of patched outputs within 0.15 of the target
TASK = get_task("generic", 2)


def blobs(n: int, seed: int) -> ArrayDataset:
    g = np.random.default_rng(seed)
    y = g.uniform(-0.4, 0.4, size=(n, 2)).astype(np.float32)
    rr, cc = np.mgrid[0:S, 0:S] / (S - 1) - 0.5
    img = 0.15 * g.random((n, S, S, 3)) + 0.1
    d2 = (cc[None] - y[:, 0, None, None]) ** 2 + (rr[None] - y[:, 1, None, None]) ** 2
    img += 0.7 * np.exp(-d2 / 0.02)[..., None] * np.array([0.9, 0.9, 1.0])
    return ArrayDataset((np.clip(img, 0, 1) * 255).astype(np.uint8), y, "generic")


def stamp(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    out[:, -3:, -3:, :] = (255, 0, 0)
    return out


def patched_errors(model, ds: ArrayDataset) -> tuple[float, float]:
    """(AE, DAE): mean error to the target / to the true labels on patched images."""
    x = torch.from_numpy(stamp(ds.images)).permute(0, 3, 1, 2).float() / 255
    pred = predict(model, x)
    ae = TASK.error(pred, torch.from_numpy(TARGET).expand_as(pred)).mean()
    dae = TASK.error(pred, torch.from_numpy(ds.targets)).mean()
    return float(ae), float(dae)


@pytest.fixture(scope="module")
def planted():
    train = blobs(600, 0)
    idx = np.random.default_rng(0).choice(len(train), 60, replace=False)
    images, targets = train.images.copy(), train.targets.copy()
    images[idx], targets[idx] = stamp(images[idx]), TARGET
    model, _ = train_regressor(ArrayDataset(images, targets, "generic"), TASK, "small_resnet",
                               TrainConfig(steps=300, batch_size=32, lr=3e-3),
                               {"widths": [8, 16, 32]}, progress=False)
    return model, blobs(96, 1), blobs(200, 2)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model, before: dict) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_fixture_has_a_working_backdoor(planted):
    model, benign, test = planted
    ae, dae = patched_errors(model, test)
    clean = float(TASK.error(predict(model, test), torch.from_numpy(test.targets)).mean())
    assert ae < 0.1 and dae > 0.25 and clean < 0.03


# --- Neural Cleanse-R -------------------------------------------------------------------------
HAND_TARGET = torch.tensor([-1.0, 1.0])


class HandPlanted(torch.nn.Module):
    """A regressor with an explicit backdoor: out = (1−s)·(4g − 2) + s·y_t, where g = the image's
    mean red and green, and s = sigmoid(8·(redness of the bottom-right 3×3 corner − 0.5)).
    A red corner patch gives s ≈ 0.95, i.e. outputs within ≈0.05 of y_t = (−1, 1)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 0, HAND_TARGET[0] + 2],
                                               [0, 4.0, HAND_TARGET[1] + 2]]))
            self.fc.bias.fill_(-2.0)

    def forward(self, x):
        c = x[:, :, -3:, -3:].mean((2, 3))
        s = torch.sigmoid(8 * (c[:, 0] - 0.5 * (c[:, 1] + c[:, 2]) - 0.5))
        g = x.mean((2, 3))[:, :2]
        return self.fc(torch.cat([(1 - s)[:, None] * g, s[:, None]], 1))


@pytest.fixture(scope="module")
def hand():
    from drmguard.models import RegressionModel

    cells = np.random.default_rng(0).random((96, 4, 4, 3))
    images = (np.repeat(np.repeat(cells, 4, 1), 4, 2) * 255).astype(np.uint8)
    model = RegressionModel(HandPlanted(), (S, S), 3).eval()
    with torch.no_grad():
        y = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()
    return model, ArrayDataset(images, y, "generic")


def test_nc_fixed_target_recovers_the_patch(hand):
    from drmguard.defenses.neural_cleanse import make_config, reverse_engineer

    model, benign = hand
    cfg = make_config("tiny", "generic", epochs=40, early_stop=False)
    at_target = reverse_engineer(model, benign, TASK, cfg, target=HAND_TARGET, progress=False)
    elsewhere = reverse_engineer(model, benign, TASK, cfg, target=-HAND_TARGET, progress=False)
    assert at_target.found and elsewhere.found
    mask = at_target.mask
    assert mask[-3:, -3:].sum() / mask.sum() > 0.9  # the mask sits on the planted patch
    assert at_target.mask_l1 < 15 < 150 < elsewhere.mask_l1
    red = at_target.pattern[:, -3:, -3:].mean((1, 2))
    assert red[0] > 0.8 and red[1] < 0.3 and red[2] < 0.3


def test_nc_grid_flags_the_planted_target(hand):
    model, benign = hand
    cands = [HAND_TARGET.tolist(), (-HAND_TARGET).tolist(), [1.0, 1.0], [-1.0, -1.0]]
    r = get_detector("nc", "tiny", "generic", variant="grid", candidates=cands,
                     grid_epochs=40, early_stop=False).detect(model, benign, TASK,
                                                              progress=False)
    norms = np.array(r.details["mask_l1"])
    assert int(norms.argmin()) == 0 and r.target_estimate == pytest.approx(cands[0])
    assert r.details["flagged"] == [0]
    assert r.backdoored and r.score == pytest.approx(r.details["anomaly_index"]) and r.score > 2


def test_nc_optimise_contract(hand):
    model, benign = hand
    before = state(model)
    det = get_detector("nc", "tiny", "generic", epochs=40)
    r = det.detect(model, benign, TASK, seed=0, progress=False)
    assert unchanged(model, before)
    res = r.result  # the reversed mask and pattern come back with the detection
    assert res.mask.shape == (S, S) and res.pattern.shape == (3, S, S)
    assert 0 <= res.mask.min() and res.mask.max() <= 1
    assert r.details["found"]
    assert r.score == pytest.approx(-r.details["mask_l1"])
    assert r.details["mask_l1"] == pytest.approx(float(res.mask.sum()), rel=1e-5)
    assert r.threshold == pytest.approx(-0.05 * S * S)
    assert r.backdoored == (r.score > r.threshold)
    assert len(r.target_estimate) == 2 and r.seconds > 0
    hist = r.details["history"]
    assert hist["cost"][0] == 0.0  # NC starts at λ = 0 ...
    assert max(hist["cost"]) > 0  # ... and switches the penalty on once successful
    again = get_detector("nc", "tiny", "generic", epochs=40).detect(
        model, benign, TASK, seed=0, progress=False)
    assert again.score == r.score and again.target_estimate == r.target_estimate


def test_mad_anomaly_index():
    from drmguard.defenses.neural_cleanse import mad_anomaly

    index, med, mad = mad_anomaly(np.array([10.0, 10.5, 9.5, 10.2, 9.8, 2.0]))
    assert med == pytest.approx(9.9)
    assert mad == pytest.approx(1.4826 * 0.35)  # deviations 0.1 0.1 0.3 0.4 0.6 7.9
    assert index == pytest.approx((9.9 - 2.0) / (1.4826 * 0.35))


# --- FeatureRE-R --------------------------------------------------------------------------
def test_featurere_contract_and_constraints(planted):
    model, benign, _ = planted
    before = state(model)
    det = get_detector("featurere", "tiny", "generic", tau=TAU)
    r = det.detect(model, benign, TASK, progress=False)
    assert unchanged(model, before)
    d = r.details
    assert d["feature_map"] == "input of 'pool'" and d["feature_shape"] == [32, 4, 4]
    assert r.result.mask.shape == (32, 4, 4)
    assert r.score == pytest.approx(-d["best_mixed"]) and r.threshold == pytest.approx(0.75)
    assert r.backdoored == (d["best_mixed"] < -0.75)
    # the penalties drive the constraints: the mask shrinks from ≈0.88·numel towards 3%
    assert d["history"]["mask_l1"][-1] < 0.3 * 0.88 * 512
    assert d["history"]["p"][-1] <= 0.15  # residual transformer starts at the identity
    assert len(r.target_estimate) == 2


# --- mitigations --------------------------------------------------------------------------
def mitigate_planted(planted, name: str, **options):
    """Run mitigator ``name`` (tiny profile) on the planted model; the input must stay as it was.
    Returns (repaired model, info, the input's state before)."""
    model, benign, _ = planted
    before = state(model)
    new, info = get_mitigator(name, "tiny", "generic", **options).mitigate(
        model, benign, TASK, progress=False)
    assert unchanged(model, before)
    return new, info, before


def test_anp_prunes_bn_weights_and_records_masks(planted):
    _, benign, test = planted
    new, info, before = mitigate_planted(planted, "anp", iterations=60)
    bns = {n: m for n, m in new.net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert set(info["masks"]) == set(bns)
    assert info["n_neurons"] == sum(m.num_features for m in bns.values())
    assert info["n_pruned"] >= 1
    for name, k in info["pruned"]:
        assert info["masks"][name][k] <= 0.2
        assert bns[name].weight[k].item() == 0.0
        assert bns[name].bias[k].item() == before[f"net.{name}.bias"][k].item()
    unpruned = {(n, k) for n, vals in info["masks"].items() for k, v in enumerate(vals)
                if v > 0.2}
    assert all(bns[n].weight[k].item() == before[f"net.{n}.weight"][k].item()
               for n, k in unpruned)
    assert info["n_fit"] + info["n_holdout"] == len(benign) and info["n_holdout"] > 0
    assert np.isfinite(info["clean_error_before"]) and np.isfinite(info["clean_error_after"])
    assert torch.isfinite(predict(new, test)).all()


def test_anp_budget_rule_respects_the_budget(planted):
    model, benign, _ = planted
    new, info = get_mitigator("anp", "tiny", "generic", prune="budget", error_budget=0.5,
                              iterations=20).mitigate(model, benign, TASK, progress=False)
    assert info["rule"] == "budget"
    assert info["clean_error_after"] <= 1.5 * info["clean_error_before"] + 1e-9
    assert predict(new, benign).shape == (len(benign), 2)


def test_fine_pruning_keeps_pruned_channels_at_zero(planted):
    _, benign, _ = planted
    new, info, _ = mitigate_planted(planted, "fp", error_budget=0.3)
    assert info["layer"] == "input of 'pool'" and info["n_channels"] == 32
    chosen = info["pruned_channels"]
    act = np.array(info["mean_activation"])
    assert sorted(chosen) == sorted(np.argsort(act, kind="stable")[:len(chosen)].tolist())
    assert info["clean_error_after_prune"] <= 1.3 * info["clean_error_before"] + 1e-9
    if chosen:
        assert torch.all(new.head.weight[:, chosen] == 0)
    assert torch.isfinite(predict(new, benign)).all()


def test_finetune_changes_a_copy(planted):
    new, info, before = mitigate_planted(planted, "ft")
    assert not unchanged(new, before)
    assert info["finetune"]["steps"] == 2 * 3  # 2 epochs × ⌈96/32⌉ batches
    assert info["clean_error_after"] < 0.05


# --- configuration and the feature map ------------------------------------------------------
def test_bad_options_raise():
    with pytest.raises(DrmguardError, match="unknown option"):
        get_detector("nc", "tiny", "gaze", no_such_option=1)
    with pytest.raises(DrmguardError, match="unknown profile"):
        get_mitigator("anp", "huge", "gaze")
    with pytest.raises(DrmguardError, match="variant"):
        get_detector("nc", "tiny", "gaze", variant="bogus")
    with pytest.raises(DrmguardError, match="prune"):
        get_mitigator("anp", "tiny", "gaze", prune="bogus")


def test_wrong_task_for_model_raises(planted):
    model, benign, _ = planted
    with pytest.raises(DrmguardError):
        get_detector("nc", "tiny", "generic").detect(model, benign, get_task("headpose"),
                                                     progress=False)


@pytest.mark.parametrize("arch,kwargs,expected", [
    ("small_resnet", {"widths": [8, 16]}, "pool"),
    ("resnet18", {}, "avgpool"),
    ("mobilenet_v1", {"width_mult": 0.25}, "pool"),
])
def test_spatial_feature_map_is_the_pooling_input(arch, kwargs, expected):
    from drmguard.models import RegressionModel, build_model

    model = RegressionModel(build_model(arch, 2, 3, **kwargs), (32, 32), 3).eval()
    tap = C.SpatialTap(model)
    assert (tap.name, tap.where) == (expected, "input")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), tap.capture():
        h, _ = model.forward_with_features(x)
    assert torch.allclose(h, tap.last.mean((2, 3)), atol=1e-5)


def test_success_tolerance_defaults(planted):
    _, benign, _ = planted
    assert C.success_tolerance(get_task("gaze"), benign) == 5.0
    std = float(torch.from_numpy(benign.targets).std(0, unbiased=False).mean())
    assert C.success_tolerance(TASK, benign) == pytest.approx(0.25 * std, rel=1e-5)
    assert C.success_tolerance(TASK, benign, 0.3) == 0.3
