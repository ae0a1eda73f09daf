"""One registry class for architectures, attacks, defences, tasks, datasets and profiles, and
contract tests over every registered entry (issue 19)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from drmguard.attacks import ATTACKS, attack_class, make_attack
from drmguard.data import DATASETS
from drmguard.data.base import ArrayDataset
from drmguard.defenses import DETECTORS, MITIGATORS, Detection, get_detector, get_mitigator
from drmguard.defenses.base import resolved_config
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
def test_every_attack_builds_from_the_registry(name):
    if name == "custom":  # needs the user's trigger image
        pytest.skip("custom needs a trigger image (tested in test_attacks)")
    cls = ATTACKS.get(name)
    assert cls.name == name and cls.num_targets >= 1
    target = [[0.1, -0.1]] * cls.num_targets if cls.num_targets > 1 else [0.1, -0.1]
    attack = make_attack(name, target, task="gaze", image_size=16, profile="tiny")
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
    # the resolved settings are JSON and build the same config back
    text = json.dumps(resolved_config(d, t), sort_keys=True)
    back = type(cfg)(**json.loads(text))
    d1 = back.to_dict() if hasattr(back, "to_dict") else asdict(back)
    assert json.dumps(d1, sort_keys=True) == text
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
