"""DRMGuard: objective terms, MTR weights, identification, generator, scan and mitigation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from drmguard.data.base import ArrayDataset
from drmguard.defenses.base import Detection
from drmguard.defenses.drmguard import (DRMGuardConfig, ScanResult, default_config,
                                        make_detector, make_mitigator, mitigate, scan)
from drmguard.defenses.drmguard import identify, mtr, reverse
from drmguard.defenses.drmguard.generator import TriggerGenerator
from drmguard.errors import DrmguardError
from drmguard.models.split import RegressionModel
from drmguard.tasks import get_task

torch.set_num_threads(1)


# --- fixtures ---------------------------------------------------------------------------------
class TinyConv(nn.Module):
    def __init__(self, k: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(16, k)

    def forward(self, x):
        return self.fc(self.body(x))


def tiny_model(seed: int = 0) -> RegressionModel:
    torch.manual_seed(seed)
    return RegressionModel(TinyConv(), (16, 16), 3, mean=[0.5] * 3, std=[0.25] * 3).eval()


def tiny_data(n: int = 24, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return ArrayDataset(imgs, rng.normal(0, 0.2, (n, 2)).astype(np.float32), "gaze")


def tiny_cfg(**kw) -> DRMGuardConfig:
    base = dict(steps=4, batch_size=8, gen_width=4, track_every=2, ft_epochs=1,
                ft_batch_size=8, n_sample_images=3, device="cpu")
    base.update(kw)
    return default_config("tiny", "gaze", **base)


# --- objective terms against hand-computed values ---------------------------------------------
def test_output_term_is_mean_population_variance():
    y = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # variances 1 and 4
    assert reverse.output_term(y).item() == pytest.approx(2.5)
    # scale-free: (1/1 + 4/2) / 2
    assert reverse.output_term(y, torch.tensor([1.0, 2.0])).item() == pytest.approx(1.5)


def test_input_l1_mean_and_sum_conventions():
    diff = torch.zeros(2, 3, 2, 2)
    diff[0, 0, 0, 0] = 0.6  # image 0: sum 0.6
    diff[1] = -0.1  # image 1: sum 1.2
    assert reverse.input_l1(diff, "sum").item() == pytest.approx((0.6 + 1.2) / 2)
    assert reverse.input_l1(diff, "mean").item() == pytest.approx((0.6 + 1.2) / 2 / 12)


def test_feature_angles_and_rav_by_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    h = torch.tensor([[1.0, 1.0], [0.0, 3.0], [2.0, 0.0]])
    theta = reverse.feature_angles(h, w)
    expected = torch.tensor([[math.pi / 4, math.pi / 4], [math.pi / 2, 0.0], [0.0, math.pi / 2]])
    assert torch.allclose(theta, expected, atol=2e-3)  # acos is clamped 1e-6 inside [-1, 1]
    ref = torch.tensor([[0.0, 0.0], [2.0, 1.0]])  # variances 1 and 0.25
    cur = torch.tensor([[0.0, 0.0], [1.0, 0.5]])  # variances 0.25 and 0.0625
    assert reverse.angle_variance_ratio(cur, ref).item() == pytest.approx(0.25)
    assert reverse.angle_variance_ratio(cur, ref, "ratio_of_sums").item() == pytest.approx(
        (0.25 + 0.0625) / 1.25)


def test_l1_weight_ramps_geometrically_to_its_full_value():
    cfg = default_config("tiny", "gaze", steps=100, l1_weight=1000.0, l1_warmup=0.5,
                         l1_warmup_start=0.001)
    assert reverse.l1_weight_at(0, cfg) == pytest.approx(1.0)
    assert reverse.l1_weight_at(25, cfg) == pytest.approx(1000.0 * 0.001 ** 0.5)
    assert reverse.l1_weight_at(50, cfg) == pytest.approx(1000.0)
    assert reverse.l1_weight_at(99, cfg) == pytest.approx(1000.0)
    assert reverse.l1_weight_at(0, cfg.with_overrides(l1_warmup=0.0)) == 1000.0


def test_objective_on_toy_linear_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))  # h = normalised x flattened
    model = RegressionModel(net, (2, 2), 3).eval()
    x = torch.rand(5, 3, 2, 2)
    gx = (x + 0.1).clamp(0, 1)
    xt = 0.5 * x + 0.5 * gx
    h, y = model.forward_with_features(xt)
    theta_ref = reverse.feature_angles(x.flatten(1), net[1].weight)
    cfg = default_config("tiny", "gaze", lambda1=3.0, lambda3=7.0, l1_on="generator")
    loss, terms = reverse.objective(y, h, theta_ref, x, gx, xt, net[1].weight.detach(), cfg)
    var = y.var(0, unbiased=False).mean()
    l1 = (gx - x).abs().flatten(1).mean(1).mean()
    th = reverse.feature_angles(xt.flatten(1), net[1].weight)
    rf = (th.var(0, unbiased=False) / theta_ref.var(0, unbiased=False)).mean()
    assert terms["output"] == pytest.approx(var.item(), rel=1e-5)
    assert terms["l1"] == pytest.approx(l1.item(), rel=1e-5)
    assert terms["rf"] == pytest.approx(rf.item(), rel=1e-4)
    w = cfg.l1_weight
    assert loss.item() == pytest.approx(3.0 * var.item() + w * l1.item() + 7.0 * rf.item(),
                                        rel=1e-5)
    loss2, _ = reverse.objective(y, h, theta_ref, x, gx, xt, net[1].weight.detach(), cfg, None,
                                 l1_weight=2.0)
    assert loss2.item() == pytest.approx(3.0 * var.item() + 2 * l1.item() + 7.0 * rf.item(),
                                         rel=1e-5)
    cfg_b = cfg.with_overrides(l1_on="blend")
    _, terms_b = reverse.objective(y, h, theta_ref, x, gx, xt, net[1].weight.detach(), cfg_b)
    assert terms_b["l1"] == pytest.approx(l1.item() / 2, rel=1e-5)


# --- MTR ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["max", "percentile"])
def test_mtr_weights_in_unit_interval(norm):
    a = torch.rand(4, 8, 8) ** 3 * 10
    a[0] = 0.0  # a flat map must not divide by zero
    w = mtr.normalise_attention(a, norm, delta=1e-3, percentile=80, clip=0.99)
    assert w.shape == a.shape
    assert (w >= 0).all() and (w < 1).all()
    if norm == "percentile":
        assert (w[1:] == 0.99).float().mean() > 0.15  # the top ~20 % are clipped


def test_mtr_momentum_and_blend():
    m = mtr.MomentumMap(beta=0.9)
    a1, a2 = torch.full((2, 4, 4), 0.5), torch.full((3, 4, 4), 0.1)
    assert torch.allclose(m.update(a1), torch.full((1, 1, 4, 4), 0.5))
    assert torch.allclose(m.update(a2), torch.full((1, 1, 4, 4), 0.9 * 0.5 + 0.1 * 0.1))
    per = mtr.MomentumMap(per_image=True)
    assert per.update(a2).shape == (3, 1, 4, 4)
    x, g = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert torch.allclose(mtr.blend(torch.full((1, 1, 4, 4), 0.25), x, g), torch.full_like(x, 0.75))


def test_attention_leaves_model_gradients_alone():
    model = tiny_model()
    a = mtr.input_attention(model, torch.rand(3, 3, 16, 16))
    assert a.shape == (3, 16, 16) and (a >= 0).all()
    assert all(p.grad is None for p in model.parameters())


# --- identification ---------------------------------------------------------------------------
def test_identification_monotone_in_r_and_needs_collapse():
    rs = [0.0, 0.001, 0.01, 0.029, 0.031, 0.2, 5.0]
    scores = [identify.detection_score(r, 0.05, 0.25) for r in rs]
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    for r, s in zip(rs, scores):
        back, status = identify.verdict(r, 0.05, 0.03, 0.25)
        assert back == (r < 0.03) == (s > -0.03)
        assert status == ("backdoored" if back else "benign")
    # pitfall 6: a tiny perturbation that never collapsed the outputs is not a detection
    back, status = identify.verdict(1e-4, 0.9, 0.03, 0.25)
    assert not back and status == "no cheap trigger found"
    assert identify.detection_score(1e-4, 0.9, 0.25) < identify.detection_score(5.0, 0.2, 0.25)
    assert identify.detection_score(1e-4, 0.9, 0.25) > identify.detection_score(1e-4, 1.5, 0.25)


def test_r_score_definition():
    l1 = torch.tensor([1.0, 3.0])
    norms = torch.tensor([10.0, 40.0])
    assert identify.r_score(l1, norms) == pytest.approx(2.0 / 40.0)
    y_ben = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    y_rev = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert identify.collapse_ratio(y_rev, y_ben) == pytest.approx((0.25 / 1.0 + 0.0) / 2)


# --- generator ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["residual", "unet"])
def test_residual_generators_are_exact_identity_at_init(kind):
    gen = TriggerGenerator(kind, 3, (16, 16), width=4, static_pattern=True).train()
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(gen(x), x)
    images = reverse.BenignImages((x.permute(0, 2, 3, 1) * 255).round().byte().numpy(),
                                  torch.device("cpu"))
    assert reverse.untouched_r(gen, images, 2) == 0.0


@pytest.mark.parametrize("kind", ["residual", "unet"])
def test_warp_branch_starts_at_the_identity_and_expresses_a_wanet_warp(kind):
    from drmguard.attacks.wanet import random_field, warp_grid
    from drmguard.warping import warp

    gen = TriggerGenerator(kind, 3, (16, 16), width=4, static_pattern=True, warp_grid=4).train()
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(gen(x), x)  # zero field: exactly the identity
    # WaNet's displacement s·P_up/W (normalised) is s·P_up·(W − 1)/(2W) pixels
    field, s = random_field(4, torch.Generator().manual_seed(0)), 1.5
    with torch.no_grad():
        gen.flow.copy_(field * s * 15 / 32)
    wanet = warp(x, warp_grid(field, 16, 16, s))
    assert (gen(x) - wanet).abs().max() < 1e-5
    assert (gen(x) - x).abs().mean() > 0.01  # it moved something
    loss = gen(x).sum()
    loss.backward()
    assert gen.flow.grad is not None and gen.flow.grad.abs().sum() > 0


def test_mtr_keeps_the_warped_image_only_when_asked():
    gen = TriggerGenerator("residual", 3, (16, 16), width=4, warp_grid=4).train()
    with torch.no_grad():
        gen.flow.fill_(0.8)
    x = torch.rand(2, 3, 16, 16)
    base, _ = gen.with_warped(x)
    assert torch.equal(reverse.kept(x, base, DRMGuardConfig(warp_grid=4)), x)
    through = reverse.kept(x, base, DRMGuardConfig(warp_grid=4, warp_through_mtr=True))
    assert torch.equal(through, gen.warped(x)) and not torch.equal(through, x)
    # a mask that keeps everything leaves the warp alone when it passes through the MTR
    assert torch.equal(mtr.blend(torch.ones(1, 1, 16, 16), through, gen(x)), through)
    res = scan(tiny_model(), tiny_data(), get_task("gaze"),
               tiny_cfg(warp_search=0, pattern_search=False, warp_grid=4, warp_through_mtr=True),
               seed=0, progress=False)
    assert res.status in ("backdoored", "benign", "no cheap trigger found")


def test_warp_branch_options_are_checked():
    with pytest.raises(DrmguardError, match="warp_grid"):
        TriggerGenerator("ia", 3, (16, 16), width=4, warp_grid=4)
    with pytest.raises(DrmguardError, match="warp_grid"):
        TriggerGenerator("residual", 3, (16, 16), width=4, warp_grid=32)
    with pytest.raises(DrmguardError, match="warp_grid"):
        DRMGuardConfig(generator="ia", warp_grid=4)
    with pytest.raises(DrmguardError, match="warp_grid"):
        DRMGuardConfig(warp_grid=1)
    for bad in (dict(warp_search=1), dict(warp_search=4, warp_grid=4),
                dict(warp_search=4, generator="ia")):
        with pytest.raises(DrmguardError, match="warp_search"):
            DRMGuardConfig(**bad)
    with pytest.raises(DrmguardError, match="warp_only"):
        DRMGuardConfig(warp_only=True)
    with pytest.raises(DrmguardError, match="warp_init"):
        DRMGuardConfig(warp_grid=4, warp_init=-0.1)
    with pytest.raises(DrmguardError, match="warp branch"):
        TriggerGenerator("residual", 3, (16, 16), width=4, warp_only=True)


def test_warp_only_generator_is_a_pure_warp_from_a_seeded_random_start():
    from drmguard.utils import seed_everything

    seed_everything(5)
    gen = TriggerGenerator("residual", 3, (16, 16), width=4, static_pattern=True, warp_grid=4,
                           warp_only=True, warp_init=0.5).train()
    seed_everything(5)
    same = TriggerGenerator("residual", 3, (16, 16), width=4, warp_grid=4, warp_only=True,
                            warp_init=0.5)
    assert [k for k, _ in gen.named_parameters()] == ["flow"]  # no δ, no P
    assert torch.equal(gen.flow, same.flow) and 0.3 < float(gen.flow.detach().std()) < 0.7
    assert not gen.exact_identity_at_init
    x = torch.rand(2, 3, 16, 16)
    base, out = gen.with_warped(x)
    assert torch.equal(out, base.clamp(0, 1)) and torch.equal(base, gen.warped(x))
    assert (out - x).abs().mean() > 0.01  # the random start moves pixels
    with torch.no_grad():
        gen.flow.zero_()
    assert torch.allclose(gen(x), x, atol=1e-6)  # a zero field: the identity


def test_warp_search_runs_beside_the_plain_one_and_the_scan_reports_either(tmp_path,
                                                                           monkeypatch):
    """The default scan runs the plain search and the warp search (a warp field alone, from a
    random start) with the same seed, each exactly as it runs alone; the scan reports one of
    them by ``select``, and a trigger file from the warp search reloads with its warp field."""
    import importlib

    scan_mod = importlib.import_module("drmguard.defenses.drmguard.scan")

    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    cfg = tiny_cfg()
    assert cfg.warp_search == 4 and not cfg.pattern_search  # every regression profile's
    res = scan(model, data, task, cfg, seed=0, progress=False)
    assert [(r["seed"], r["warp_grid"], r["pattern_only"]) for r in res.restarts] == [
        (0, 0, False), (0, 4, False)]
    plain = scan(model, data, task, tiny_cfg(warp_search=0, pattern_search=False), seed=0,
                 progress=False)
    warped = scan(model, data, task, tiny_cfg(warp_search=0, warp_grid=4, warp_only=True,
                                              warp_through_mtr=True, static_pattern=False,
                                              pattern_search=False),
                  seed=0, progress=False)
    assert res.restarts[0]["R"] == plain.r_score and res.restarts[1]["R"] == warped.r_score
    assert res.restarts[0]["collapse_ratio"] == plain.collapse_ratio
    assert res.chosen_restart == scan_mod.chosen_restart(
        [{"R": r["R"], "collapse_ratio": r["collapse_ratio"], "objective": {"loss": r["objective"]}}
         for r in res.restarts], cfg)
    assert res.r_score == res.restarts[res.chosen_restart]["R"]
    # a scan that reports the warp search: its trigger file holds the field and reloads
    monkeypatch.setattr(scan_mod, "chosen_restart", lambda evs, c: len(evs) - 1)
    res = scan(model, data, task, cfg, seed=0, progress=False)
    assert res.chosen_restart == 1 and res.r_score == warped.r_score
    back = ScanResult.load(res.save(tmp_path / "w.safetensors"))
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(back.reverse(x), res.reverse(x))
    assert back.trigger.cfg.warp_only and back.trigger.cfg.warp_through_mtr
    assert [k for k, _ in back.trigger.generator.named_parameters()] == ["flow"]
    assert default_config("cpu", "classification").warp_search == 0  # calibrated without it


def test_searches_in_processes_give_what_they_give_in_process_on_one_thread(monkeypatch):
    """A scan's searches run in forked processes (one thread each) report exactly what the same
    scan reports run one after another on one thread; the automatic choice uses processes only
    on a CPU with 2 <= threads <= searches."""
    import multiprocessing

    from drmguard.defenses.drmguard.scan import search_workers

    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    cfg = tiny_cfg(restarts=2, pattern_search=True)  # two plain, the warp and the pattern one
    contexts, get_context = [], multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context",
                        lambda method=None: contexts.append(method) or get_context(method))
    one = scan(model, data, task, cfg, seed=0, progress=False, workers=1)
    assert contexts == []
    par = scan(model, data, task, cfg, seed=0, progress=False, workers=2)
    assert contexts == ["fork"]  # the searches did run in processes
    assert par.restarts == one.restarts and len(par.restarts) == 4
    assert (par.r_score, par.collapse_ratio, par.target_estimate, par.chosen_restart) == (
        one.r_score, one.collapse_ratio, one.target_estimate, one.chosen_restart)
    assert torch.equal(par.reverse(data.tensors()[0][:4]), one.reverse(data.tensors()[0][:4]))
    before = torch.get_num_threads()
    try:
        cpu = torch.device("cpu")
        torch.set_num_threads(2)
        assert (search_workers(2, cpu), search_workers(4, cpu), search_workers(1, cpu)) == (2, 2, 1)
        assert search_workers(4, torch.device("cuda")) == 1
        torch.set_num_threads(1)
        assert search_workers(4, cpu) == 1
        torch.set_num_threads(3)
        assert search_workers(2, cpu) == 1  # more threads than searches: in-process
    finally:
        torch.set_num_threads(before)


def test_scan_with_a_warp_branch_saves_and_reloads_its_field(tmp_path):
    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    res = scan(model, data, task, tiny_cfg(warp_search=0, pattern_search=False, warp_grid=4,
                                           select="final"), seed=0, progress=False)
    back = ScanResult.load(res.save(tmp_path / "w.safetensors"))
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(back.reverse(x), res.reverse(x))
    assert back.trigger.generator.flow.abs().sum() > 0  # the search moved the field


def test_pattern_only_generator_is_one_universal_additive_pattern():
    gen = TriggerGenerator("residual", 3, (16, 16), width=4, pattern_only=True)
    assert [k for k, _ in gen.named_parameters()] == ["pattern"]  # no δ: nothing reads x
    assert gen.exact_identity_at_init
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(gen(x), x)  # P = 0: the identity
    with torch.no_grad():
        gen.pattern[:, 0, -3:, -3:] = 3.0  # a red corner
    out = gen(x)
    assert torch.equal(out, (x + torch.tanh(gen.pattern)).clamp(0, 1))
    assert torch.equal(out[:, :, :13], x[:, :, :13]) and (out[:, 0, -3:, -3:] > x[:, 0, -3:, -3:]).all()
    for bad in (dict(warp_grid=4), dict(warp_grid=4, warp_only=True)):
        with pytest.raises(DrmguardError, match="pattern-only|warp-only"):
            TriggerGenerator("residual", 3, (16, 16), width=4, pattern_only=True, **bad)
    with pytest.raises(DrmguardError, match="pattern-only"):
        TriggerGenerator("ia", 3, (16, 16), width=4, pattern_only=True)
    for bad in (dict(pattern_only=True, generator="ia"), dict(pattern_only=True, warp_grid=4)):
        with pytest.raises(DrmguardError, match="pattern_only"):
            DRMGuardConfig(**bad)
    for bad in (dict(generator="ia"), dict(pattern_only=True)):
        with pytest.raises(DrmguardError, match="pattern_search"):
            DRMGuardConfig(pattern_search=True, warp_search=0, **bad)


def test_pattern_search_runs_after_the_others_and_late_options_keep_old_keys(tmp_path):
    """``pattern_search`` adds one search over P alone (after the plain and warp searches), run
    exactly as it runs alone; a config that leaves the late options at their defaults has the
    dict (and digest) it had before they existed."""
    from drmguard.experiments.identification import reported_search

    off = tiny_cfg()  # the default: no pattern search
    assert "pattern_search" not in off.to_dict() and "pattern_only" not in off.to_dict()
    assert DRMGuardConfig(**off.to_dict()) == off
    on = tiny_cfg(pattern_search=True)
    assert on.to_dict()["pattern_search"] is True and on.digest() != off.digest()
    assert DRMGuardConfig(**on.to_dict()) == on
    plan = on.searches()
    assert [(o, c.warp_grid, c.pattern_only) for o, c in plan] == [(0, 0, False), (0, 4, False),
                                                                   (0, 0, True)]
    assert not any(c.pattern_search for _, c in plan)
    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    res = scan(model, data, task, on, seed=0, progress=False)
    alone = scan(model, data, task, tiny_cfg(warp_search=0, pattern_search=False,
                                             pattern_only=True, static_pattern=False),
                 seed=0, progress=False)
    assert [r["pattern_only"] for r in res.restarts] == [False, False, True]
    assert res.restarts[2]["R"] == alone.r_score
    assert res.restarts[2]["collapse_ratio"] == alone.collapse_ratio
    back = ScanResult.load(alone.save(tmp_path / "p.safetensors"))
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(back.reverse(x), alone.reverse(x))
    assert [k for k, _ in back.trigger.generator.named_parameters()] == ["pattern"]
    details = {"restarts": res.restarts, "chosen_restart": 2}
    assert reported_search(details) == "pattern"
    assert reported_search({**details, "chosen_restart": 1}) == "warp"
    assert reported_search({**details, "chosen_restart": 0}) == "plain"


def test_ia_generator_output_range_and_size_check():
    gen = TriggerGenerator("ia", 3, (16, 24), width=4)
    out = gen(torch.rand(2, 3, 16, 24))
    assert out.shape == (2, 3, 16, 24) and (out > 0).all() and (out < 1).all()
    with pytest.raises(DrmguardError, match="divisible by 8"):
        TriggerGenerator("residual", 3, (20, 16))


def test_config_rejects_bad_options():
    with pytest.raises(DrmguardError):
        default_config("cpu", "gaze", generator="vae")
    with pytest.raises(DrmguardError):
        default_config("cpu", "gaze", no_such_option=1)
    with pytest.raises(DrmguardError):
        DRMGuardConfig(mtr_clip=1.0)


# --- scan and mitigation ------------------------------------------------------------------------
def test_scan_is_well_formed_and_leaves_model_untouched(tmp_path):
    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = scan(model, data, task, tiny_cfg(), seed=3, progress=False)
    assert isinstance(res, ScanResult)
    assert res.status in ("backdoored", "benign", "no cheap trigger found")
    assert res.backdoored == (res.status == "backdoored")
    d = res.to_dict()
    json.dumps(d)  # JSON-safe
    assert d["schema"] == "drmguard.scan/1" and len(d["target_estimate"]) == 2
    assert d["trajectory"][0]["step"] == 0 and d["trajectory"][-1]["step"] == 3
    assert res.benign_images.shape == (3, 16, 16, 3) and res.reversed_images.dtype == np.uint8
    assert res.attention.shape == (16, 16)
    assert (res.attention >= 0).all() and (res.attention < 1).all()
    paths = res.save_images(tmp_path)
    assert set(paths) == {"benign", "reversed", "residual", "attention"}
    x = torch.rand(2, 3, 16, 16)
    assert res.reverse(x).shape == x.shape
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


def test_same_seed_same_score():
    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    a = scan(model, data, task, tiny_cfg(), seed=1, progress=False)
    b = scan(model, data, task, tiny_cfg(), seed=1, progress=False)
    assert a.score == b.score and a.r_score == b.r_score
    assert a.target_estimate == b.target_estimate


def test_detector_interface():
    det = make_detector("tiny", "gaze", steps=3, batch_size=8, gen_width=4, device="cpu")
    out = det.detect(tiny_model(), tiny_data(), get_task("gaze"), seed=0, progress=False)
    assert isinstance(out, Detection) and out.defense == "drmguard"
    assert out.threshold == pytest.approx(-det.config.tau)
    assert out.backdoored == (out.score > out.threshold)


def test_mitigate_returns_new_model_and_keeps_input():
    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, info = mitigate(model, data, task, config=tiny_cfg(), seed=0, progress=False)
    assert new is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, new.state_dict()[k]) for k, v in before.items()
               if v.is_floating_point())
    assert info["scan"]["schema"] == "drmguard.scan/1" and info["finetune"]["steps"] > 0
    mit = make_mitigator("tiny", "gaze", steps=3, batch_size=8, gen_width=4, ft_epochs=1,
                         device="cpu")
    new2, _ = mit.mitigate(model, data, task, seed=0, progress=False)
    assert new2 is not model


def test_saved_scan_round_trips_and_mitigates_like_a_fresh_scan(tmp_path):
    """``ScanResult.save`` / ``load``: the same record, the same trigger function bit for bit,
    and a mitigation from the loaded scan equal to one that scans again."""
    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    res = scan(model, data, task, tiny_cfg(), seed=2, progress=False)
    path = res.save(tmp_path / "t.safetensors")
    back = ScanResult.load(path)
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    x = torch.rand(5, 3, 16, 16)
    assert torch.equal(back.reverse(x), res.reverse(x))
    assert np.array_equal(back.attention, res.attention)
    fresh, _ = mitigate(model, data, task, config=tiny_cfg(), seed=2, progress=False)
    reused, info = mitigate(model, data, task, scan_result=back, config=tiny_cfg(), seed=2,
                            progress=False)
    assert info["scan_reused"] and info["scan"]["R"] == res.r_score
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, reused.state_dict()[k]), k


def test_saved_scan_bad_files_and_mismatches(tmp_path):
    model, data, task = tiny_model(), tiny_data(), get_task("gaze")
    not_st = tmp_path / "x.safetensors"
    not_st.write_bytes(b"garbage")
    with pytest.raises(DrmguardError, match="cannot read the trigger file"):
        ScanResult.load(not_st)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(DrmguardError, match="not a DRMGuard trigger file"):
        ScanResult.load(other)
    res = scan(model, data, task, tiny_cfg(), seed=0, progress=False)
    saved = ScanResult.load(res.save(tmp_path / "ok.safetensors"))
    small = RegressionModel(TinyConv(), (8, 8), 3, mean=[0.5] * 3, std=[0.25] * 3).eval()
    small_data = ArrayDataset(np.zeros((8, 8, 8, 3), np.uint8), np.zeros((8, 2), np.float32),
                              "gaze")
    with pytest.raises(DrmguardError, match="reversed trigger is for 3×16×16"):
        mitigate(small, small_data, task, scan_result=saved, config=tiny_cfg(), progress=False)
    with pytest.raises(DrmguardError, match="2-output model, task headpose"):
        mitigate(model, data, get_task("headpose"), scan_result=saved, config=tiny_cfg(),
                 progress=False)


def test_scan_rejects_mismatched_data():
    model, task = tiny_model(), get_task("gaze")
    bad = ArrayDataset(np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 2), np.float32), "gaze")
    with pytest.raises(DrmguardError, match="model takes"):
        scan(model, bad, task, tiny_cfg(), progress=False)


def test_trigger_statistics_of_a_given_trigger():
    """R and collapse of a hand-made trigger: the identity costs nothing and collapses nothing;
    a constant image collapses every output at R = mean |c − x| / max ‖x‖_1."""
    model = tiny_model()
    x = tiny_data().tensors()[0]
    same = identify.trigger_statistics(model, x, lambda t: t)
    assert same["R"] == 0 and same["mean_abs_change_per_pixel"] == 0
    assert same["collapse_ratio"] == pytest.approx(1.0)
    grey = identify.trigger_statistics(model, x, lambda t: torch.full_like(t, 0.5), batch_size=7)
    d = (x - 0.5).abs().flatten(1)
    assert grey["R"] == pytest.approx(float(d.sum(1).mean() / x.flatten(1).sum(1).max()))
    assert grey["mean_abs_change_per_pixel"] == pytest.approx(float(d.mean()))
    assert grey["collapse_ratio"] < 1e-6


# --- units: the verdict does not depend on the units of the outputs ---------------------------
def _rescaled(model: RegressionModel, scale) -> RegressionModel:
    """The same model with its outputs in other units: head weight and bias times ``scale``
    (a number, or one factor per output)."""
    import copy

    out = copy.deepcopy(model)
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    s = s.expand(out.head.weight.shape[0]) if s.numel() == 1 else s
    with torch.no_grad():
        out.head.weight.mul_(s[:, None])
        out.head.bias.mul_(s)
    return out


def _units_scan(model, data, **kw):
    cfg = default_config("tiny", "generic", device="cpu", steps=20, batch_size=12, gen_width=4,
                         n_sample_images=2, **kw)
    return scan(model, data, get_task("generic", dim=2), cfg, seed=3, progress=False)


# Powers of two rescale floats exactly, so there the scan must be bit-identical; other factors
# round the outputs (relative 1e-7), which the search — Adam on a non-smooth L1 term starting at
# the identity — amplifies to a few per cent of R: same verdict, R close.
@pytest.mark.parametrize("scale", [2.0 ** -7, 2.0 ** 7, [2.0 ** -7, 2.0 ** 7]])
def test_scan_is_exactly_unit_invariant_under_exact_rescaling(scale):
    model, data = tiny_model(1), tiny_data(24, seed=1)
    ref = _units_scan(model, data)
    res = _units_scan(_rescaled(model, scale), data)
    assert (res.backdoored, res.status) == (ref.backdoored, ref.status)
    assert (res.r_score, res.collapse_ratio, res.score) == (ref.r_score, ref.collapse_ratio,
                                                            ref.score)
    s = np.broadcast_to(np.asarray(scale, dtype=float), (2,))
    assert np.allclose(res.target_estimate, s * np.asarray(ref.target_estimate), rtol=1e-6,
                       atol=0)


@pytest.mark.parametrize("scale", [0.01, 100.0, [0.01, 100.0]])
def test_scan_verdict_and_r_do_not_depend_on_output_units(scale):
    model, data = tiny_model(1), tiny_data(24, seed=1)
    ref = _units_scan(model, data)
    res = _units_scan(_rescaled(model, scale), data)
    assert (res.backdoored, res.status) == (ref.backdoored, ref.status)
    assert res.r_score == pytest.approx(ref.r_score, rel=0.1)
    assert res.collapse_ratio == pytest.approx(ref.collapse_ratio, rel=0.1, abs=1e-3)


def test_raw_output_term_depends_on_units():
    """The paper's raw form (``scale_free=False``) is what the default removes: even under an
    exact rescaling the same model gets another search."""
    model, data = tiny_model(1), tiny_data(24, seed=1)
    raw = dict(scale_free=False, lambda1=20.0, select="final")  # the search itself, not a choice
    ref = _units_scan(model, data, **raw)
    res = _units_scan(_rescaled(model, 2.0 ** 7), data, **raw)
    assert res.r_score != pytest.approx(ref.r_score, rel=1e-2)


def test_attention_map_weighs_outputs_by_their_benign_scale():
    """With one output in units 1000× larger, the raw MTR attention is that output's alone; the
    scale-free map is the same as before the change of units."""
    model, x = tiny_model(2), torch.rand(6, 3, 16, 16)
    big = _rescaled(model, [1.0, 1000.0])
    with torch.no_grad():
        scale = model(x).std(0)
    a_ref = mtr.input_attention(model, x, scale)
    a_big = mtr.input_attention(big, x, scale * torch.tensor([1.0, 1000.0]))
    assert torch.allclose(a_big, a_ref, rtol=1e-4, atol=1e-9)
    norm = mtr.normalise_attention
    assert not torch.allclose(norm(mtr.input_attention(big, x)), norm(mtr.input_attention(model, x)),
                              atol=0.05)


def test_every_task_default_is_scale_free():
    for task in ("gaze", "headpose", "generic"):
        for profile in ("tiny", "cpu", "paper"):
            assert default_config(profile, task).scale_free


# --- checkpoints: the scan reports a state its search reached ---------------------------------
def test_checkpoint_choice_rules():
    from drmguard.defenses.drmguard.reverse import Checkpoints

    rows = [{"R": 0.0, "collapse_ratio": 1.0, "objective": 800.0},
            {"R": 0.05, "collapse_ratio": 0.1, "objective": 900.0},
            {"R": 0.02, "collapse_ratio": 0.2, "objective": 850.0},
            {"R": 0.01, "collapse_ratio": 0.6, "objective": 700.0}]
    checks = Checkpoints.__new__(Checkpoints)
    checks.rows = rows
    checks.cfg = tiny_cfg(select="lowest_objective")
    assert checks.chosen() == 3
    checks.cfg = tiny_cfg(select="cheapest_collapse")
    assert checks.chosen() == 2  # the cheapest of the collapsed states, not the lowest objective
    checks.rows = [rows[0], rows[3]]
    assert checks.chosen() == 1  # nothing collapsed: the lowest objective


@pytest.mark.parametrize("select", ["lowest_objective", "cheapest_collapse"])
def test_scan_reports_a_checkpoint_it_reached(select):
    model, data = tiny_model(0), tiny_data(30)
    cfg = tiny_cfg(steps=12, checkpoint_every=4, select=select)
    res = scan(model, data, get_task("gaze"), cfg, seed=0, progress=False)
    steps = [c["step"] for c in res.checkpoints]
    assert steps == [0, 4, 8, 12] and res.chosen_step in steps
    assert res.restarts[0]["chosen_step"] == res.chosen_step
    # the saved trigger is the chosen state's: applied again it gives the reported R
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    r = identify.r_score((res.reverse(x) - x).abs().flatten(1).sum(1), x.flatten(1).sum(1))
    assert r == pytest.approx(res.r_score, rel=1e-5, abs=1e-9)
    if res.chosen_step == 0:  # the identity: nothing changed (up to float rounding)
        assert res.r_score < 1e-6 and res.collapse_ratio == pytest.approx(1.0, abs=1e-4)
    rec = ScanResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert rec.chosen_step == res.chosen_step and rec.checkpoints == res.checkpoints


def test_final_selection_keeps_no_checkpoints_and_bad_selection_options():
    res = scan(tiny_model(0), tiny_data(12), get_task("gaze"), tiny_cfg(select="final"), seed=0,
               progress=False)
    assert res.checkpoints == [] and res.chosen_step is None
    with pytest.raises(DrmguardError, match="select"):
        tiny_cfg(select="best")
    with pytest.raises(DrmguardError, match="holdout"):
        tiny_cfg(holdout=1.0)
    with pytest.raises(DrmguardError, match="at least 4"):
        scan(tiny_model(0), tiny_data(3), get_task("gaze"), tiny_cfg(select="lowest_objective"),
             progress=False)


def test_search_confirms_its_cheapest_collapse_on_all_of_the_benign_set():
    """With cheapest_collapse the collapsed checkpoints (held-out) are tried cheapest first
    until the evaluation on all of D_b confirms one (at most CONFIRM_TRIES); none confirmed:
    the cheapest is reported."""
    model, data = tiny_model(), tiny_data()
    # a threshold above 1: every checkpoint counts as collapsed, so there are several to try
    cfg = tiny_cfg(warp_search=0, pattern_search=False, collapse_threshold=1.5,
                   checkpoint_every=1, steps=8)
    images = reverse.BenignImages(data.images, torch.device("cpu"))

    def run(accept_at):
        calls = []

        def confirm(trigger):  # an evaluation that collapses only on the accept_at-th call
            calls.append(trigger)
            return {"collapse_ratio": 0.0 if len(calls) == accept_at else 2.0}

        with reverse.frozen(model):
            bench = reverse.precompute_benign(model, images, cfg)
            s = reverse.run_search(model, images, bench, cfg, 0, False, confirm=confirm)
        return s, len(calls)

    s, n = run(accept_at=3)
    order = sorted(s.checkpoints, key=lambda r: r["R"])[:reverse.CONFIRM_TRIES]
    assert n == 3 and s.chosen_step == order[2]["step"]
    s, n = run(accept_at=0)  # nothing confirmed
    assert n == reverse.CONFIRM_TRIES and s.chosen_step == order[0]["step"]
