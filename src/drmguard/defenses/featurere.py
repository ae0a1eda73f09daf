"""FeatureRE generalised to regression (FeatureRE-R).

Original (Wang et al., NeurIPS 2022; code RU-System-Software-and-Security/FeatureRE): reverse-
engineer a *feature-space* trigger. An input transformer M (a U-Net) and a mask m on the last
spatial feature map A = F(x) (C×h×w, the input of global pooling) are learnt so that, with the
mixed features m⊙F(M(x)) + (1−m)⊙a (a = the feature map of a random benign image), the rest of
the network H outputs the target. Three constraints, each a penalty that is active only while it
is violated: input distance MSE(M(x), x) ≤ 0.15, hyperplane Σ std_batch(m⊙F(M(x)))/‖m‖₁ ≤ 1,
mask size ‖m‖₁ ≤ 0.03·numel(m); the attack loss itself is active only while the batch success
rate is below 0.9. Per epoch, mixed = dist − ASR + Σ relative constraint violations; a model is
Trojaned when the best mixed value is below −0.75.

Regression version (DRMGuard, Appendix A.4): the target vector y_t is an optimisation variable
(y_t = μ + σ⊙u, Adam on u), the loss is L1 (per component divided by the benign label std, option
``normalise_loss``), and "success" is an output within τ of y_t. There is no class mean feature
for the dist term: by default it is dropped (the original's ``--ignore_dist``); ``dist_term=True``
uses the mean benign feature of samples whose labels lie within τ of the current y_t. Samples are
not filtered by label (the original removes target-class samples; y_t moves here).

Where things live: M maps the **normalised** image (the model's own input normalisation) to a
normalised image with no output activation, as the original; the input distance is the MSE in
that space. The spatial feature map is the input of the last pooling module before the linear
head (``_common.find_spatial_layer``): ``pool`` of the small ResNet and MobileNetV1 (= output of
``layers[-1]`` / ``features``), ``avgpool`` of torchvision ResNets (= output of ``layer4``);
``feature_layer`` names another module whose output is used instead.

Score: −(best mixed value) (higher = more likely backdoored); decision best mixed < −0.75.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import ArrayDataset
from ..models.split import RegressionModel
from ..tasks import Task
from ..training import batches
from ..utils import progress_bar, seed_everything
from . import _common as C
from .base import Defence, Detection

_EPS = 1e-7


@dataclass
class FeatureREConfig:
    warmup_epochs: int = 100  # M only, towards y_t, input distance enforced
    epochs: int = 400  # main stage
    batch_size: int = 256
    max_samples: int | None = 256  # benign samples used (seeded subsample), None = all
    lr: float = 1e-3  # Adam (betas 0.5, 0.9) on M
    mask_lr: float = 0.1  # Adam (betas 0.5, 0.9) on the mask's tanh parameters
    target_lr: float = 0.05  # Adam on y_t, in label-std units
    unet_base: int = 32  # U-Net filters of the first level (doubled per level)
    unet_levels: int = 4  # reduced automatically so the bottleneck keeps >= 2×2 pixels
    residual: bool = True  # M(x) = x + U(x), U's output conv zero-initialised (identity start);
    #                        False = the original plain U-Net from a random start
    mask_size: float = 0.03  # bound on ‖m‖₁ as a fraction of numel(m)
    p_loss_bound: float = 0.15  # bound on MSE(M(x), x) in normalised input space
    std_bound: float = 1.0  # bound on the hyperplane statistic
    success_threshold: float = 0.9  # the attack loss is active below this success rate
    # success tolerance in the task's error units (None: 5° for gaze and head pose, 0.25·label
    # std for generic); spelt ``tau`` before (still accepted; the key it is stored under)
    success_tolerance: float | None = None
    normalise_loss: bool = True
    dist_term: bool = False
    mixed_threshold: float = -0.75
    feature_layer: str | None = None
    device: str = "auto"

    def __post_init__(self):
        C.check(self.warmup_epochs >= 0 and self.epochs >= 1, "FeatureRE epochs must be >= 1")
        C.check(self.batch_size >= 2, "FeatureRE batch_size must be >= 2 (feature std)")
        C.check(self.unet_base >= 1 and self.unet_levels >= 1, "U-Net base/levels must be >= 1")
        C.check(0 < self.mask_size <= 1, "mask_size must be in (0, 1]")
        C.check(self.p_loss_bound > 0 and self.std_bound > 0, "bounds must be positive")


# --- input transformer -----------------------------------------------------------------------
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                         nn.LeakyReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                         nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU())


class UNet(nn.Module):
    """FeatureRE's input transformer: U-Net with max-pool downsampling, transposed-conv
    upsampling and skip concatenation; InstanceNorm + LeakyReLU; 1×1 output conv, no activation.
    Inputs whose sides are not multiples of 2^levels are padded (replicate) and cropped back.
    With ``residual`` the network returns x + U(x) and U's output conv starts at zero, so M is
    the identity map at initialisation."""

    def __init__(self, channels: int, base: int = 32, levels: int = 4, residual: bool = False):
        super().__init__()
        self.levels, self.residual = levels, residual
        widths = [base * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.bottleneck = _block(cin, cin * 2)
        cin *= 2
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths):
            self.up.append(nn.ConvTranspose2d(cin, w, 3, stride=2, padding=1, output_padding=1))
            self.dec.append(_block(2 * w, w))
            cin = w
        self.out = nn.Conv2d(cin, channels, 1)
        if residual:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = 2 ** self.levels
        ph, pw = (-h) % k, (-w) % k
        z = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        skips = []
        for block in self.down:
            z = block(z)
            skips.append(z)
            z = F.max_pool2d(z, 2)
        z = self.bottleneck(z)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            z = dec(torch.cat([up(z), skip], 1))
        out = self.out(z)[..., :h, :w]
        return x + out if self.residual else out


def usable_levels(size: tuple[int, int], levels: int) -> int:
    """Largest level count <= ``levels`` whose bottleneck keeps at least 2×2 pixels."""
    side = min(size)
    while levels > 1 and math.ceil(side / 2 ** levels) < 2:
        levels -= 1
    return levels


# --- reverse engineering ---------------------------------------------------------------------
@dataclass
class FeatureREResult:
    mask: np.ndarray  # C×h×w in [0,1] at the best epoch
    target: list[float]  # y_t at the best epoch
    best_mixed: float
    best_epoch: int  # main-stage epoch (1-based) of the best mixed value, 0 if none
    at_best: dict  # the epoch averages behind the best mixed value
    transformer: nn.Module  # M at the end of the run (eval mode, CPU)
    history: dict = field(default_factory=dict)


def reverse_engineer(model: RegressionModel, benign: ArrayDataset, task: Task,
                     cfg: FeatureREConfig, seed: int = 0, progress: bool = True
                     ) -> tuple[FeatureREResult, dict]:
    """Run FeatureRE-R on ``benign`` with a frozen ``model``; returns (result, run info)."""
    device = next(model.parameters()).device
    g = seed_everything(seed)
    tap = C.SpatialTap(model, cfg.feature_layer)
    feats = tap.features(benign)  # A: N×C×h×w benign feature maps
    C.check(feats.dim() == 4, f"the feature map at {tap.describe()} is not B×C×h×w")
    labels = torch.from_numpy(benign.targets).to(device)
    mu, sd = C.label_stats(benign)
    tau = C.success_tolerance(task, benign, cfg.success_tolerance)
    scale = sd.to(device) if cfg.normalise_loss else None
    levels = usable_levels(model.input_size, cfg.unet_levels)
    M = UNet(model.in_channels, cfg.unet_base, levels, cfg.residual).to(device)
    theta = torch.ones(feats.shape[1:], device=device, requires_grad=True)  # m ≈ 0.88
    yt = C.TargetVector(mu, sd).to(device)
    opt_m = torch.optim.Adam(M.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_mask = torch.optim.Adam([theta], lr=cfg.mask_lr, betas=(0.5, 0.9))
    opt_y = torch.optim.Adam(yt.parameters(), lr=cfg.target_lr, betas=(0.5, 0.9))
    mask_of = lambda: torch.tanh(theta) / (2 + _EPS) + 0.5  # noqa: E731
    norm_bound = cfg.mask_size * theta.numel()
    w_p = w_acc = w_std = 1.0
    best = {"mixed": math.inf, "epoch": 0, "mask": mask_of().detach().clone(),
            "target": yt.value(), "at": {}}
    hist = {k: [] for k in ("asr", "p", "mask_l1", "std", "dist", "mixed", "target")}

    def forward(z_in: torch.Tensor, mix: bool):
        """H(m⊙F(z)+(1−m)⊙a) (or H(F(z)) without mixing); returns (out, F(z))."""
        store = {}

        def fn(a: torch.Tensor) -> torch.Tensor:
            store["f"] = a
            if not mix:
                return a
            ref = feats[torch.randint(0, len(feats), (a.shape[0],), generator=g).to(device)]
            m = mask_of()
            return m * a + (1 - m) * ref

        with tap.capture(fn):
            out = model.net(z_in)
        return out, store["f"]

    def dist_of(f: torch.Tensor) -> torch.Tensor:
        if not cfg.dist_term:
            return torch.zeros((), device=device)
        near = C.hits(task, labels, yt().detach(), tau)
        if not bool(near.any()):
            return torch.zeros((), device=device)
        ref = feats[near].mean(0).flatten()
        return F.cosine_similarity(ref, f.mean(0).flatten(), dim=0)

    total = cfg.warmup_epochs + cfg.epochs
    bar = progress_bar(total=total, desc="FeatureRE-R", enabled=progress)
    for epoch in range(total):
        warm = epoch < cfg.warmup_epochs
        acc_l, p_l, n_l, s_l, d_l = [], [], [], [], []
        for x, _ in batches(benign, cfg.batch_size, g):
            if len(x) < 2:
                continue
            xn = model.normalise(x.to(device))
            # (a) update the transformer M (and y_t while the attack loss is active)
            M.train()
            z = M(xn)
            out, f = forward(z, mix=not warm)
            y = yt()
            loss_t = C.scaled_l1(out, y, scale)
            p_loss = F.mse_loss(z, xn)
            acc = float(C.hits(task, out.detach(), y.detach(), tau).float().mean())
            dist = dist_of(f)
            if warm:
                loss = loss_t + (100 * p_loss if p_loss > cfg.p_loss_bound else 0)
                uses_target = True
            else:
                m = mask_of().detach()
                loss_std = (f * m).std(0).sum() / m.abs().sum()
                loss = 5 * dist.clamp_min(0)
                if loss_std > cfg.std_bound:
                    loss = loss + loss_std * 10 * (1 + w_std)
                if p_loss > cfg.p_loss_bound:
                    loss = loss + p_loss * 10 * (1 + w_p)
                uses_target = acc < cfg.success_threshold
                if uses_target:
                    loss = loss + loss_t * (1 + w_acc)
                s_l.append(float(loss_std.detach()))
            opt_m.zero_grad(set_to_none=True)
            opt_y.zero_grad(set_to_none=True)
            if torch.is_tensor(loss) and loss.requires_grad:
                loss.backward()
                opt_m.step()
                if uses_target:
                    opt_y.step()
            acc_l.append(acc)
            p_l.append(float(p_loss.detach()))
            d_l.append(float(dist.detach()))
            if warm:
                continue
            # (b) one mask step with M fixed: attack loss + ‖m‖₁ while above its bound
            M.eval()
            with torch.no_grad():
                z = M(xn)
            out, _ = forward(z, mix=True)
            m = mask_of()
            norm = m.abs().sum()
            loss_mask = C.scaled_l1(out, yt(), scale)
            if norm > norm_bound:
                loss_mask = loss_mask + norm
            opt_mask.zero_grad(set_to_none=True)
            opt_y.zero_grad(set_to_none=True)
            loss_mask.backward()
            opt_mask.step()
            opt_y.step()
            n_l.append(float(norm.detach()))
        bar.update(1)
        if warm or not n_l:
            continue
        asr, p, n, s, d = (float(np.mean(v)) for v in (acc_l, p_l, n_l, s_l, d_l))
        mixed = (d - asr + max(p - cfg.p_loss_bound, 0) / cfg.p_loss_bound
                 + max(n - norm_bound, 0) / norm_bound + max(s - cfg.std_bound, 0) / cfg.std_bound)
        for k, v in (("asr", asr), ("p", p), ("mask_l1", n), ("std", s), ("dist", d),
                     ("mixed", mixed), ("target", yt.value())):
            hist[k].append(v)
        if mixed < best["mixed"]:
            best = {"mixed": mixed, "epoch": epoch + 1 - cfg.warmup_epochs,
                    "mask": mask_of().detach().clone(), "target": yt.value(),
                    "at": {"asr": asr, "p": p, "mask_l1": n, "mask_fraction": n / theta.numel(),
                           "std": s, "dist": d}}
        w_p = max(p - cfg.p_loss_bound, 0) / cfg.p_loss_bound
        w_acc = max(cfg.success_threshold - asr, 0) / cfg.success_threshold
        w_std = max(s - cfg.std_bound, 0) / cfg.std_bound
        bar.set_postfix(asr=f"{asr:.2f}", mixed=f"{mixed:.2f}", best=f"{best['mixed']:.2f}")
    bar.close()
    result = FeatureREResult(mask=best["mask"].cpu().numpy(), target=best["target"],
                             best_mixed=float(best["mixed"]), best_epoch=int(best["epoch"]),
                             at_best=best["at"], transformer=M.eval().cpu(), history=hist)
    info = {"feature_map": tap.describe(), "feature_shape": list(feats.shape[1:]),
            "unet_levels": levels, "tau": tau, "success_tolerance": tau,
            "mask_norm_bound": norm_bound}
    return result, info


class FeatureRER(Defence):
    """The FeatureRE-R detector. ``Detection.result`` holds the reversed mask and transformer
    (a :class:`FeatureREResult`)."""

    name, title, config_class = "featurere", "FeatureRE", FeatureREConfig
    profile_defaults = {
        "tiny": dict(warmup_epochs=4, epochs=24, batch_size=64, max_samples=64, unet_base=8,
                     unet_levels=2),
        "cpu": dict(warmup_epochs=15, epochs=60, batch_size=128, max_samples=256, unet_base=8,
                    unet_levels=2),
        "paper": dict(warmup_epochs=100, epochs=400, batch_size=256, max_samples=None,
                      unet_base=32, unet_levels=4),
    }
    option_aliases = {"tau": "success_tolerance"}
    stored_names = {"success_tolerance": "tau"}

    def _detect(self, model: RegressionModel, benign: ArrayDataset, task: Task, cfg, seed,
                progress) -> Detection:
        t0 = time.perf_counter()
        frozen = self.working_copy(model, cfg, frozen=True)
        data = C.subsample(benign, cfg.max_samples, seed)
        res, info = reverse_engineer(frozen, data, task, cfg, seed=seed, progress=progress)
        mixed = res.best_mixed
        details = {**info, "best_mixed": mixed, "best_epoch": res.best_epoch,
                   "at_best": res.at_best, "n_samples": len(data),
                   "history": {k: v for k, v in res.history.items() if k != "target"},
                   "target_final": res.history["target"][-1] if res.history["target"] else None,
                   "config": self.config_dict(cfg)}
        finite = math.isfinite(mixed)
        return Detection(defense=self.name, backdoored=bool(finite and mixed < cfg.mixed_threshold),
                         score=-mixed if finite else -1e9, threshold=-cfg.mixed_threshold,
                         target_estimate=res.target, seconds=time.perf_counter() - t0,
                         details=details, result=res)


def make_config(profile: str = "cpu", task: str = "gaze", **overrides) -> FeatureREConfig:
    return FeatureRER.resolve(profile, task, **overrides)


def make_detector(profile: str = "cpu", task: str = "gaze", **overrides) -> FeatureRER:
    return FeatureRER(profile, task, **overrides)
