"""One registry class for architectures, attacks, defences, tasks, datasets and profiles, and
contract tests over every registered entry (issue 19)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drmguard.attacks import ATTACKS, attack_class, make_attack
from drmguard.data import DATASETS
from drmguard.data.base import ArrayDataset
from drmguard.defenses import DETECTORS, MITIGATORS, Detection, get_detector, get_mitigator
from drmguard.defenses.base import Defence, resolved_config
from drmguard.errors import DrmguardError
from drmguard.models import ARCHS, RegressionModel, build_model, list_models
from drmguard.profiles import PROFILES, get_profile, list_profiles
from drmguard.registry import Lazy, Registry
from drmguard.tasks import TASKS, get_task

REGISTRIES = {"architecture": ARCHS, "attack": ATTACKS, "detector": DETECTORS,
              "mitigator": MITIGATORS, "task": TASKS, "dataset": DATASETS, "profile": PROFILES}
PROFILE_NAMES = PROFILES.list()
FIXED_TASKS = ["gaze", "headpose", "generic"]


def test_registry_basics():
    r = Registry("widget", normalise=str.lower)

    @r.register("alpha", aliases=("a",))
    class Alpha:
        pass

    r.register("beta", Lazy("json:dumps"))
    assert r.get("A") is Alpha and r.get("ALPHA") is Alpha and r.list() == ["alpha", "beta"]
    assert r.get("beta") is json.dumps  # imported on first use
    assert "alpha" in r and r.get("gamma", None) is None
    with pytest.raises(DrmguardError, match=r"unknown widget 'gamma' \(choose alpha, beta\)"):
        r.get("gamma")
    with pytest.raises(ValueError, match="twice"):
        r.register("alpha", object())


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_names_its_kind_and_choices(kind):
    reg = REGISTRIES[kind]
    assert isinstance(reg, Registry) and reg.list()
    with pytest.raises(DrmguardError, match=f"unknown {kind} 'no-such-thing'"):
        reg.get("no-such-thing")
    for name in reg.list():
        assert reg.get(name) is not None
        for alias, target in reg.aliases.items():
            assert reg.get(alias) is reg.get(target)


def test_the_old_helpers_are_thin_wrappers():
    assert list_models() == ARCHS.list() and list_profiles() == PROFILE_NAMES
    assert attack_class("input-aware") is ATTACKS.get("ia")
    assert get_profile("tiny") is PROFILES.get("tiny")
    assert get_task("gaze") is TASKS.get("gaze") and get_task("generic", 4).dim == 4


@pytest.mark.parametrize("name", ARCHS.list())
def test_every_architecture_builds_a_k_output_model(name):
    kw = {"widths": [4, 8]} if name == "small_resnet" else {}
    net = build_model(name, 3, **kw).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", ATTACKS.list())
def test_every_attack_builds_from_the_registry(name, tmp_path):
    from PIL import Image

    cls = ATTACKS.get(name)
    assert cls.name == name and cls.num_targets >= 1
    target = [[0.1, -0.1]] * cls.num_targets if cls.num_targets > 1 else [0.1, -0.1]
    options = {}
    if name == "custom":  # the user's trigger image
        Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "patch.png")
        options = {"patch": str(tmp_path / "patch.png")}
    attack = make_attack(name, target, task="gaze", image_size=16, profile="tiny", **options)
    x = torch.rand(3, 3, 16, 16)
    y = attack.apply(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("task", FIXED_TASKS)
@pytest.mark.parametrize("kind,name", [("detector", n) for n in DETECTORS.list()]
                         + [("mitigator", n) for n in MITIGATORS.list()])
def test_every_defence_builds_for_every_profile_and_task(kind, name, profile, task):
    make = get_detector if kind == "detector" else get_mitigator
    d = make(name, profile, task)
    assert d.name == name
    t = get_task(task, 2) if task == "generic" else get_task(task)
    cfg = d.config_for(t)
    assert isinstance(d, Defence) and isinstance(cfg, d.config_class)
    # the resolved settings are JSON and build the same config back
    text = json.dumps(resolved_config(d, t), sort_keys=True)
    back = d.config_from_dict(json.loads(text))
    assert back == cfg and json.dumps(d.config_dict(back), sort_keys=True) == text
    assert (kind == "detector") == d.can_detect() or d.can_detect()
    with pytest.raises(DrmguardError, match="unknown"):
        make(name, profile, task, no_such_option=1)


def _tiny():
    torch.manual_seed(0)
    model = RegressionModel(build_model("small_resnet", 2, widths=[4, 8]), (16, 16)).eval()
    g = np.random.default_rng(0)
    ds = ArrayDataset(g.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8),
                      g.uniform(-0.3, 0.3, (24, 2)).astype(np.float32), "generic")
    return model, ds


def _small(name):
    """Overrides that keep each defence to a second or two on the tiny model."""
    return {"nc": {"epochs": 2}, "featurere": {"warmup_epochs": 1, "epochs": 2},
            "drmguard": {"steps": 4, "ft_epochs": 1}, "ft": {"epochs": 1}}.get(name, {})


@pytest.mark.parametrize("name", DETECTORS.list())
def test_every_detector_detects_on_a_tiny_model(name):
    model, ds = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = get_detector(name, "tiny", "generic", **_small(name))
    det = d.detect(model, ds, get_task("generic", 2), seed=0, progress=False)
    assert isinstance(det, Detection) and det.defense == name
    assert isinstance(det.backdoored, bool) and np.isfinite(det.score)
    json.dumps(det.to_dict())  # JSON-safe record
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize("name", MITIGATORS.list())
def test_every_mitigator_returns_a_repaired_copy(name):
    model, ds = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = get_mitigator(name, "tiny", "generic", **_small(name))
    fixed, info = m.mitigate(model, ds, get_task("generic", 2), seed=0, progress=False)
    assert isinstance(fixed, RegressionModel) and fixed is not model
    assert isinstance(info, dict)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    with torch.no_grad():
        assert fixed(torch.rand(2, 3, 16, 16)).shape == (2, 2)


# --- the Defence base class ------------------------------------------------------------------
def test_defaults_resolved_in_one_place_and_options_checked(monkeypatch):
    from dataclasses import replace

    from drmguard.defenses.neural_cleanse import NeuralCleanseR

    d = get_detector("nc", "tiny", "headpose", epochs=3)
    assert d.config.grid_size == 3 and d.config.epochs == 3  # task default, then overrides
    assert d.config_for("gaze").grid_size == 3  # tiny's own grid (3), epochs still overridden
    assert get_detector("nc", "cpu", "gaze").config.grid_size == 5
    assert d.set_params(patience=4) is d and d.config.patience == 4 and d.config.epochs == 3
    with pytest.raises(DrmguardError, match=r"unknown option\(s\) bogus for Neural Cleanse"):
        d.set_params(bogus=1)
    assert d.config.patience == 4  # a refused change leaves the defence as it was
    # a profile registered later: every defence runs it with its dataclass defaults
    monkeypatch.setitem(PROFILES, "laptop", replace(get_profile("cpu"), name="laptop"))
    assert get_detector("nc", "laptop", "gaze").config.epochs == NeuralCleanseR.config_class().epochs
    with pytest.raises(DrmguardError, match="unknown profile"):
        get_mitigator("ft", "huge", "gaze")


@pytest.mark.parametrize("name", ["nc", "featurere"])
def test_the_baselines_success_tolerance_is_not_drmguards_tau(name):
    d = get_detector(name, "tiny", "gaze", success_tolerance=3.0)
    assert d.config.success_tolerance == 3.0 and not hasattr(d.config, "tau")
    old = get_detector(name, "tiny", "gaze", tau=3.0)  # the earlier spelling still works
    assert old.config == d.config
    # ... and is still the key the value is stored under (cache keys, result records)
    stored = resolved_config(d, "gaze")
    assert stored["tau"] == 3.0 and "success_tolerance" not in stored
    assert get_detector("drmguard", "tiny", "gaze").config.tau == pytest.approx(0.03)


def test_results_are_returned_not_kept():
    model, ds = _tiny()
    d = get_detector("nc", "tiny", "generic", epochs=2)
    det = d.detect(model, ds, get_task("generic", 2), progress=False)
    assert det.result is not None and det.result.mask.shape == (16, 16)
    assert not hasattr(d, "last_result")


def test_capabilities():
    model, ds = _tiny()
    with pytest.raises(DrmguardError, match="not a detector"):
        get_mitigator("ft", "tiny", "generic").detect(model, ds, get_task("generic", 2))
    with pytest.raises(DrmguardError, match="not a mitigation"):
        get_detector("nc", "tiny", "generic").mitigate(model, ds, get_task("generic", 2))


def test_drmguard_mitigation_reuses_a_prior_detection():
    model, ds = _tiny()
    task = get_task("generic", 2)
    d = get_detector("drmguard", "tiny", "generic", steps=4, ft_epochs=1, device="cpu")
    det = d.detect(model, ds, task, seed=0, progress=False)
    a, info_a = d.mitigate(model, ds, task, seed=0, progress=False, prior=det)
    b, info_b = d.mitigate(model, ds, task, seed=0, progress=False)
    assert info_a["scan_reused"] and not info_b["scan_reused"]
    assert info_a["scan"]["R"] == info_b["scan"]["R"]  # the same scan, run once less
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_detection_saves_its_artifacts(tmp_path):
    model, ds = _tiny()
    d = get_detector("drmguard", "tiny", "generic", steps=4, device="cpu")
    det = d.detect(model, ds, get_task("generic", 2), progress=False)
    written = det.save_artifacts(lambda suffix: tmp_path / f"run{suffix}")
    assert written == [tmp_path / "run.trigger.safetensors"] and written[0].exists()
    back = d.load_prior(lambda suffix: tmp_path / f"run{suffix}", model, d.config)
    assert back.result.r_score == det.result.r_score and back.score == det.score
    nc = get_detector("nc", "tiny", "generic", epochs=2).detect(
        model, ds, get_task("generic", 2), progress=False)
    assert nc.save_artifacts(lambda suffix: tmp_path / f"nc{suffix}") == []


def test_the_zoo_takes_the_number_of_targets_from_the_attack():
    assert ATTACKS.get("multi_wanet").num_targets == 2
    assert all(ATTACKS.get(n).num_targets == 1 for n in ATTACKS.list() if n != "multi_wanet")


def test_one_fine_tuning_loop():
    """The fine-tuning baselines and DRMGuard's mitigation share training.fit; a last batch of
    one image is a step without an update there (BatchNorm), as before."""
    from unittest import mock

    from drmguard import training
    from drmguard.defenses import _common as C

    model, ds = _tiny()
    ds = ds.subset(range(17))  # batches of 8: 8, 8, 1
    assert C.fit is training.fit
    with mock.patch.object(C, "fit", wraps=training.fit) as fit:
        h = C.finetune(model, ds, get_task("generic", 2), optimizer="sgd", lr=0.01, epochs=2,
                       batch_size=8, progress=False)
    assert fit.call_count == 1 and fit.call_args.kwargs["min_batch"] == 2
    assert h["steps"] == 4 and np.isfinite(h["final_loss"])


def test_the_real_trigger_is_measured_by_a_defence_that_can():
    """identification's "real R" comes from a requested defence's trigger_cost hook (DRMGuard),
    under the cache name it always had; no defence that measures triggers, no measurement."""
    from types import SimpleNamespace

    from drmguard.experiments.identification import trigger_record
    from drmguard.experiments.zoo import ModelSpec

    model, ds = _tiny()
    names = []

    def cached_run(spec, kind, name, config, compute):
        names.append((kind, name, config))
        return compute()

    zoo = SimpleNamespace(splits=lambda spec: SimpleNamespace(benign=ds), cached_run=cached_run)
    attack = SimpleNamespace(apply=lambda x: x.clamp(0.2, 0.8))
    spec = ModelSpec("gaze", "tiny", "badnets", 0)
    assert trigger_record(zoo, spec, model, attack, ["nc", "featurere"]) == {}
    rec = trigger_record(zoo, spec, model, attack, ["nc", "drmguard"])
    assert names == [("attack", "trigger-cost", {})] and rec["R"] > 0
    assert trigger_record(zoo, spec, model, None, ["drmguard"]) == {}
