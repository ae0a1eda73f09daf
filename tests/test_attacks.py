"""Backdoor attacks: triggers, poisoning, WaNet's field, the adaptive loss, saving, the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from drmguard.attacks import ATTACKS, attack_train_config, load_attack, make_attack
from drmguard.attacks.adaptive import adaptive_term
from drmguard.attacks.base import TRIGGER_FILE, scaled
from drmguard.attacks.wanet import identity_grid, warp, warp_grid
from drmguard.data.base import ArrayDataset
from drmguard.errors import DrmguardError
from drmguard.metrics import angles_from_features, rav_from_angles
from drmguard.models.io import model_meta, read_meta, save_model
from drmguard.models.registry import build_model
from drmguard.models.split import RegressionModel
from drmguard.profiles import get_profile
from drmguard.tasks import get_task

SIZE = 16
TARGET = [0.3, -0.2]
GAZE = get_task("gaze")


@pytest.fixture
def trigger_images(tmp_path):
    """A 4×4 red square patch image (black elsewhere) and a blend key image, as PNG files."""
    patch = np.zeros((SIZE, SIZE, 3), np.uint8)
    patch[2:6, 2:6] = (255, 0, 0)
    Image.fromarray(patch).save(tmp_path / "patch.png")
    key = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(key).save(tmp_path / "key.png")
    return tmp_path


def options_for(name, trigger_dir):
    if name == "custom":
        return {"patch": str(trigger_dir / "patch.png")}
    return {}


def build(name, trigger_dir=None, seed=0, **opts):
    target = [TARGET, [-0.1, 0.1]] if name == "multi_wanet" else TARGET
    return make_attack(name, target, task="gaze", image_size=SIZE, seed=seed, profile="tiny",
                       **{**options_for(name, trigger_dir), **opts})


def images(n=6, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def gaze_dataset(n=40, seed=1):
    g = np.random.default_rng(seed)
    return ArrayDataset(g.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                        g.uniform(-0.4, 0.4, (n, 2)).astype(np.float32), "gaze",
                        np.repeat(np.arange(n // 4), 4))


# --- triggers --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_trigger_is_deterministic_and_changes_the_image(name, trigger_images):
    x = images()
    a, b = build(name, trigger_images), build(name, trigger_images)
    ya = a.apply(x)
    assert ya.shape == x.shape
    assert torch.equal(ya, a.apply(x)) and torch.equal(ya, b.apply(x))
    assert torch.allclose(a.apply(x[:1]), ya[:1], atol=1e-5)  # any batch size, per-image
    assert (ya - x).abs().amax() > 0.05
    assert ya.min() >= 0 and ya.max() <= 1
    assert a.target.tolist() == pytest.approx(TARGET)
    json.dumps(a.config())


@pytest.mark.parametrize("name", ["blend", "wanet", "ia"])
def test_seeded_triggers_depend_on_the_seed(name):
    x = images()
    assert not torch.equal(build(name, seed=0).apply(x), build(name, seed=1).apply(x))


def test_badnets_patch_is_red_bottom_right_and_only_there():
    assert scaled(20, 224, 3) == 20 and scaled(20, 32, 3) == 3 and scaled(20, 112, 3) == 10
    a = build("badnets")
    x = images()
    y = a.apply(x)
    p = a.options["patch_size"]
    assert p == 3
    changed = (y != x).any(1).any(0)  # H×W
    expected = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    expected[-p:, -p:] = True
    assert torch.equal(changed, expected)
    assert torch.equal(y[:, :, -p:, -p:], torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1).expand(
        6, 3, p, p))


def test_custom_patch_mask_and_blend(trigger_images):
    x = images()
    a = build("custom", trigger_images)  # mask = the patch's non-black pixels
    changed = (a.apply(x) != x).any(1).any(0)
    assert changed[2:6, 2:6].all() and changed.sum() == 16
    Image.fromarray(np.pad(np.full((2, 2), 255, np.uint8), ((0, 14), (0, 14)))).save(
        trigger_images / "mask.png")
    b = build("custom", trigger_images, mask=str(trigger_images / "mask.png"))
    assert (b.apply(x) != x).any(1).any(0).sum() == 4
    key = torch.from_numpy(np.array(Image.open(trigger_images / "key.png"))).permute(2, 0, 1)
    c = make_attack("custom", TARGET, task="gaze", image_size=SIZE,
                    blend=str(trigger_images / "key.png"), alpha=0.3)
    assert torch.allclose(c.apply(x), 0.7 * x + 0.3 * key.float() / 255, atol=1e-6)
    with pytest.raises(DrmguardError):
        make_attack("custom", TARGET, task="gaze", image_size=SIZE)
    with pytest.raises(DrmguardError):
        make_attack("custom", TARGET, task="gaze", image_size=SIZE, patch="/no/such.png")


def test_sig_signal_and_blend_formula():
    x = images() * 0.5 + 0.25
    s = build("sig", delta=0.1)
    j = torch.arange(SIZE, dtype=torch.float32)
    v = 0.1 * torch.sin(2 * math.pi * j * 6 / SIZE)
    assert torch.allclose(s.apply(x), (x + v.view(1, 1, 1, -1)).clamp(0, 1), atol=1e-6)
    b = build("blend", alpha=0.2)
    assert torch.allclose(b.apply(x), 0.8 * x + 0.2 * b.key, atol=1e-6)


def test_bad_options_and_sizes_are_one_line_errors():
    with pytest.raises(DrmguardError, match="no option"):
        build("badnets", colour=[1, 0, 0])
    with pytest.raises(DrmguardError, match="divisible by 8"):
        make_attack("ia", TARGET, task="gaze", image_size=20)
    with pytest.raises(DrmguardError, match="2 outputs"):
        make_attack("badnets", [1.0, 2.0, 3.0], task="gaze", image_size=SIZE)
    with pytest.raises(DrmguardError, match="2 target"):
        make_attack("multi_wanet", TARGET, task="gaze", image_size=SIZE)
    with pytest.raises(DrmguardError, match="unknown attack"):
        make_attack("trojan", TARGET, task="gaze", image_size=SIZE)
    with pytest.raises(DrmguardError):
        build("badnets").apply(torch.rand(2, 3, 8, 8))


# --- poisoning -------------------------------------------------------------------------------

def test_dirty_label_poisoning_sets_target_labels():
    ds = gaze_dataset()
    a = build("badnets")
    poisoned, info = a.poison_dataset(ds)
    changed = np.flatnonzero((poisoned.images != ds.images).any(axis=(1, 2, 3)))
    assert info["poisoned"] == len(changed) == 4  # 10% of 40
    assert np.allclose(poisoned.targets[changed], TARGET)
    keep = np.setdiff1d(np.arange(len(ds)), changed)
    assert np.array_equal(poisoned.targets[keep], ds.targets[keep])
    assert (poisoned.images[changed][:, -3:, -3:] == (255, 0, 0)).all()
    again, _ = build("badnets").poison_dataset(ds)
    assert np.array_equal(again.images, poisoned.images)  # seeded


@pytest.mark.parametrize("mode", ["clean", "nearly_clean", "dirty"])
def test_sig_poisoning_modes(mode):
    ds = gaze_dataset()
    poisoned, info = build("sig", mode=mode).poison_dataset(ds)
    changed = np.flatnonzero((poisoned.images != ds.images).any(axis=(1, 2, 3)))
    assert info["poisoned"] == len(changed) == 4
    if mode == "clean":
        assert np.array_equal(poisoned.targets, ds.targets)
    else:
        assert np.allclose(poisoned.targets[changed], TARGET)
    if mode != "dirty":  # the samples nearest to y_t
        dist = GAZE.error(torch.from_numpy(ds.targets),
                          torch.tensor([TARGET]).expand(len(ds), 2)).numpy()
        assert set(changed) == set(np.argsort(dist)[:4])


def test_wanet_batch_poisoning_labels_and_cross_samples():
    a = build("wanet", rate=0.25, cross_ratio=1.0)
    x, y = images(8), torch.rand(8, 2)
    g = torch.Generator().manual_seed(0)
    xp, yp, n_bd, n_alt = a.batch_poison(x, y, g)
    assert n_bd == 2 and n_alt == 4
    assert torch.allclose(yp[:n_bd], torch.tensor(TARGET).expand(2, 2))
    assert torch.equal(yp[n_bd:], y[n_bd:])
    assert torch.allclose(xp[:n_bd], a.apply(x[:n_bd]))
    assert not torch.allclose(xp[n_bd:n_alt], a.apply(x[n_bd:n_alt]), atol=1e-3)  # noise warp
    assert torch.equal(xp[n_alt:], x[n_alt:])


def test_multi_target_wanet_uses_two_warps_and_targets():
    a = build("multi_wanet", rate=0.25, cross_ratio=0.0)
    x, y = images(8), torch.rand(8, 2)
    xp, yp, n_bd, _ = a.batch_poison(x, y, torch.Generator().manual_seed(0))
    assert n_bd == 4
    assert torch.allclose(yp[:2], torch.tensor(TARGET).expand(2, 2))
    assert torch.allclose(yp[2:4], torch.tensor([-0.1, 0.1]).expand(2, 2))
    assert torch.allclose(xp[2:4], a.apply_for(x[2:4], 1))
    assert not torch.allclose(a.apply_for(x, 0), a.apply_for(x, 1), atol=1e-3)


def test_clean_label_group_is_relabelled_and_pgd_runs():
    ds = gaze_dataset()
    a = build("clean_label", pgd_steps=2, surrogate_epochs=1)
    cfg = attack_train_config("clean_label", "tiny", "gaze", 0)
    model, meta = a.train_backdoored(ds, GAZE, "small_resnet", cfg, {"widths": [8, 16]},
                                     progress=False)
    info = meta["attack_training"]
    assert info["group"] == 4 and info["pgd"] == 2
    assert info["surrogate_error_pgd"] > info["surrogate_error_clean"]  # PGD hurt the surrogate
    assert meta["attack"]["config"]["epsilon"] == pytest.approx(info["epsilon"])


@pytest.mark.parametrize("name", ["wanet", "ia", "adaptive"])
def test_custom_training_schemes_run_and_record_themselves(name):
    a = build(name)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    cfg = attack_train_config(name, "tiny", "gaze", 0)
    model, meta = a.train_backdoored(gaze_dataset(), GAZE, "small_resnet", cfg,
                                     {"widths": [8, 16]}, progress=False)
    assert meta["attack"]["name"] == name and meta["history"]["steps"] > 0
    assert torch.isfinite(model(images(2))).all()
    after = a.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if name == "ia":  # both generators were trained; the trigger stays deterministic
        assert any(k.startswith("pattern.") for k in changed)
        assert any(k.startswith("mask.") for k in changed)
        assert meta["attack_training"]["mask_steps"] > 0
        assert torch.equal(a.apply(images()), a.apply(images()))
    else:  # a fixed warp
        assert not changed
    if name == "adaptive":
        assert meta["attack_training"]["final_abs_rav_minus_1"] is not None


# --- WaNet's warp field ----------------------------------------------------------------------

def test_wanet_grid_matches_its_definition_by_hand():
    # k = H = W: bicubic upsampling with align_corners=True is the identity, so
    # G[i, j] = clamp(((−1 + 2j/(W−1)) + s·P_x[i, j]/W, (−1 + 2i/(H−1)) + s·P_y[i, j]/H)).
    a = make_attack("wanet", TARGET, task="gaze", image_size=4, k=4, s=2.0, profile="paper")
    p = a.field[0]
    assert float(p.abs().mean()) == pytest.approx(1.0, rel=1e-5)  # P / mean|P|
    for i in range(4):
        for j in range(4):
            gx = min(1.0, max(-1.0, -1 + 2 * j / 3 + 2.0 * float(p[0, i, j]) / 4))
            gy = min(1.0, max(-1.0, -1 + 2 * i / 3 + 2.0 * float(p[1, i, j]) / 4))
            assert a.grid[0, i, j].tolist() == pytest.approx([gx, gy], abs=1e-6)
    assert a.options["k"] == 4
    assert make_attack("wanet", TARGET, task="gaze", image_size=224, profile="paper"
                       ).options["k"] == 28
    assert make_attack("wanet", TARGET, task="gaze", image_size=112, profile="paper"
                       ).options["k"] == 14


def test_wanet_constant_field_shifts_a_ramp_exactly():
    # A constant field c moves every sample by s·c/W in grid units = s·c(W−1)/(2W) pixels;
    # bilinear sampling of a linear ramp is exact, so interior pixels gain exactly that.
    h, w, s, c = 5, 8, 1.5, 0.8
    field = torch.zeros(1, 2, 3, 3)
    field[:, 0] = c
    grid = warp_grid(field, h, w, s)
    ramp = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 1, h, w)
    out = warp(ramp, grid)
    shift = s * c * (w - 1) / (2 * w)
    assert torch.allclose(out[..., :-1], ramp[..., :-1] + shift, atol=1e-5)
    assert torch.allclose(warp(ramp, identity_grid(h, w)), ramp, atol=1e-6)


# --- the adaptive attack ---------------------------------------------------------------------

def test_adaptive_term_is_differentiable_and_moves_rav_towards_one():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Linear(8, 2))  # F1 linear, F2 fixed
    net[2].requires_grad_(False)
    model = RegressionModel(net, (2, 2), 3)
    clean = torch.rand(24, 3, 2, 2)
    poisoned = 0.5 + 0.1 * torch.rand(8, 3, 2, 2)  # similar images: concentrated angles
    x = torch.cat([poisoned, clean])

    def term():
        h, _ = model.forward_with_features(x)
        return adaptive_term(model, h, n_poisoned=8, clean_from=8)

    start = term()
    assert start.item() > 0.9  # RAV ≪ 1 before training
    start.backward()
    grads = [net[1].weight.grad, net[1].bias.grad]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    opt = torch.optim.Adam(net[1].parameters(), lr=0.002)
    for _ in range(100):
        opt.zero_grad()
        term().backward()
        opt.step()
    with torch.no_grad():
        h, _ = model.forward_with_features(x)
        rav = rav_from_angles(angles_from_features(h[:8], net[2].weight),
                              angles_from_features(h[8:], net[2].weight))
    assert abs(rav.item() - 1) < 0.3


def test_adaptive_attack_wraps_its_base():
    a = build("adaptive")
    w = build("wanet")
    x = images()
    assert torch.equal(a.apply(x), w.apply(x))
    assert build("adaptive", base="badnets").apply(x)[:, 0, -1, -1].eq(1).all()
    with pytest.raises(DrmguardError):
        build("adaptive", base="ia")


# --- saving and loading ----------------------------------------------------------------------

def saved_model_dir(tmp_path, name="m"):
    net = build_model("small_resnet", 2, 3, widths=[8, 16])
    model = RegressionModel(net, (SIZE, SIZE), 3)
    return save_model(model, tmp_path / name, model_meta(model, "small_resnet", GAZE,
                                                         {"widths": [8, 16]}))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_save_load_round_trip_reproduces_the_trigger(name, trigger_images, tmp_path):
    out = saved_model_dir(tmp_path)
    assert load_attack(out) is None  # a benign model records no attack
    a = build(name, trigger_images, seed=3)
    a.save(out)
    assert (out / TRIGGER_FILE).exists()
    rec = read_meta(out)["attack"]
    assert rec["name"] == name and rec["target"] == pytest.approx(TARGET)
    b = load_attack(out)
    x = images(5, seed=9)
    assert type(b) is type(a) and len(b.targets) == len(a.targets)
    for i in range(len(a.targets)):
        assert torch.equal(a.apply_for(x, i), b.apply_for(x, i))
    assert b.config() == a.config()


def test_load_attack_rejects_a_missing_trigger_file(tmp_path):
    out = saved_model_dir(tmp_path)
    build("badnets").save(out)
    (out / TRIGGER_FILE).unlink()
    with pytest.raises(DrmguardError, match=TRIGGER_FILE):
        load_attack(out)


# --- training schedules and the CLI ----------------------------------------------------------

def test_attack_train_config_lengthens_wanet_in_the_cpu_profile():
    base = attack_train_config("badnets", "cpu", "gaze", 0)
    assert attack_train_config("wanet", "cpu", "gaze", 0).epochs > base.epochs
    assert attack_train_config("wanet", "cpu", "gaze", 5).seed == 5


def test_profile_and_task_entries_win_over_the_profile_entries(monkeypatch):
    cls = ATTACKS.get("badnets")
    monkeypatch.setattr(cls, "epoch_factor", {"cpu": 3.0, ("cpu", "headpose"): 2.0})
    monkeypatch.setattr(cls, "profile_defaults", {"cpu": {"rate": 0.3}})
    monkeypatch.setattr(cls, "profile_task_defaults", {("cpu", "headpose"): {"rate": 0.2}})
    benign = get_profile("cpu").train_config("gaze", 0).epochs
    assert attack_train_config("badnets", "cpu", "gaze", 0).epochs == 3 * benign
    assert attack_train_config("badnets", "cpu", "headpose", 0).epochs == 2 * benign
    assert attack_train_config("badnets", "tiny", "headpose", 0).epochs == \
        get_profile("tiny").train_config("headpose", 0).epochs
    kw = dict(image_size=32, profile="cpu")
    assert make_attack("badnets", [0.1, 0.2], task="gaze", **kw).options["rate"] == 0.3
    assert make_attack("badnets", [0.1, 0.2, 0.3], task="headpose", **kw).options["rate"] == 0.2
    assert make_attack("badnets", [0.1, 0.2, 0.3], task="headpose", rate=0.05,
                       **kw).options["rate"] == 0.05  # the user's option wins over both
    assert cls.resolved_defaults("cpu", "headpose")["rate"] == 0.2


def test_attack_cli_on_tiny_data(tmp_path, capsys):
    from drmguard.cli import main
    from drmguard.data import save_folder

    data = tmp_path / "data"
    ds = gaze_dataset(48)
    save_folder(ds, data, progress=False)
    out = tmp_path / "model"
    rc = main(["attack", "--attack", "badnets", "--data", str(data), "--target", "0.1,-0.1",
               "--profile", "tiny", "--out", str(out), "--option", "rate=0.2", "--epochs", "1",
               "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "AE" in text and "RE" in text
    a = load_attack(out)
    assert a.name == "badnets" and a.options["rate"] == 0.2
    assert a.target.tolist() == pytest.approx([0.1, -0.1])
    assert read_meta(out)["profile"] == "tiny"

    rc = main(["attack", "--attack", "wanet", "--data", str(data), "--profile", "tiny",
               "--out", str(tmp_path / "m2"), "--option", "warp=3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no option(s) warp" in err and len(err.strip().splitlines()) == 1
