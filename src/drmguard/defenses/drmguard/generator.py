"""The trigger generator G_θ: benign image -> candidate poisoned image, both in [0, 1].

Three parametrisations (``DRMGuardConfig.generator``):

- ``ia`` — the input-aware attack's generator, as DRMGuard uses it [source]: encoder
  w,w,pool,2w,2w,pool,4w,4w,pool; decoder 4w,up,4w,2w,up,2w,w,up,w,C; every conv 3×3 + norm
  + ReLU except the last (norm, no ReLU); output tanh(z)/(2+1e-7)+0.5; no skip connections.
  It cannot represent the identity exactly, so it is pre-trained as one (:func:`pretrain_identity`)
  and its reconstruction error stays as a floor under R (pitfall 1 of docs/method.md).
- ``residual`` [ours] — G(x) = clip(x + tanh(δ(x)), 0, 1) with δ the same encoder-decoder whose
  last conv is zero-initialised: an untouched input gives G(x) = x exactly, R = 0.
- ``unet`` [ours] — as ``residual``, with skip connections from each encoder scale to the
  decoder (finer, input-dependent perturbations).

``static_pattern`` adds a learned per-pixel offset P (zero-initialised) to δ, so that an
input-independent trigger (a patch) is one parameter away rather than something the network
has to synthesise from the content.

``warp_grid`` = k > 0 adds a warp branch [ours] (``residual`` and ``unet`` only): a learned,
input-independent k×k control field of displacements in pixels (zero-initialised), upsampled
bicubically as WaNet's is, moves the pixels of x before δ is added:
G(x) = clip(x + (W_φ(x) − W_0(x)) + tanh(δ(x) + P), 0, 1), with W_φ the warp by the field and W_0
the identity warp (so φ = 0 gives G(x) = x exactly). A smooth warp — WaNet's trigger — is then
k·k·2 numbers away, instead of a per-pixel change the encoder-decoder must synthesise.
``warp_only`` keeps the warp branch alone (G(x) = clip(W_φ(x) − W_0(x) + x, 0, 1): no δ, no P);
``warp_init`` > 0 starts the field at random (standard deviation in pixels) instead of zero.

``pattern_only`` [ours] keeps the learned offset P alone: G(x) = clip(x + tanh(P), 0, 1), one
input-independent additive pattern and nothing that reads the image — a universal trigger such
as a patch, with no way to make image-by-image (adversarial) changes.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ...errors import DrmguardError
from ...warping import identity_grid, upsampled_field, warp

_TANH_SCALE = 2 + 1e-7


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    return nn.Identity()


def _block(cin: int, cout: int, norm: str, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1), _norm(norm, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def _up() -> nn.Module:
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)


class EncoderDecoder(nn.Module):
    """The input-aware generator's body (no skips); ``zero_last`` makes the output 0 at init."""

    def __init__(self, channels: int, width: int, norm: str, zero_last: bool):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.encoder = nn.Sequential(
            *_block(channels, w1, norm), *_block(w1, w1, norm), nn.MaxPool2d(2),
            *_block(w1, w2, norm), *_block(w2, w2, norm), nn.MaxPool2d(2),
            *_block(w2, w3, norm), *_block(w3, w3, norm), nn.MaxPool2d(2))
        body = [*_block(w3, w3, norm), _up(), *_block(w3, w3, norm), *_block(w3, w2, norm),
                _up(), *_block(w2, w2, norm), *_block(w2, w1, norm), _up(),
                *_block(w1, w1, norm)]
        if zero_last:  # plain conv, zero weight and bias: δ(x) = 0 for every x at init
            last = nn.Conv2d(w1, channels, 3, 1, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            body.append(last)
        else:  # the paper's last layer: conv + norm, no ReLU
            body.extend(_block(w1, channels, norm, relu=False))
        self.decoder = nn.Sequential(*body)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(z))


class UNet(nn.Module):
    """Encoder-decoder with skip connections at each scale; last conv zero-initialised."""

    def __init__(self, channels: int, width: int, norm: str):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(*_block(channels, w1, norm), *_block(w1, w1, norm))
        self.enc2 = nn.Sequential(*_block(w1, w2, norm), *_block(w2, w2, norm))
        self.enc3 = nn.Sequential(*_block(w2, w3, norm), *_block(w3, w3, norm))
        self.mid = nn.Sequential(*_block(w3, w3, norm))
        self.pool, self.up = nn.MaxPool2d(2), _up()
        self.dec3 = nn.Sequential(*_block(2 * w3, w3, norm), *_block(w3, w2, norm))
        self.dec2 = nn.Sequential(*_block(2 * w2, w2, norm), *_block(w2, w1, norm))
        self.dec1 = nn.Sequential(*_block(2 * w1, w1, norm))
        self.last = nn.Conv2d(w1, channels, 3, 1, 1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(z)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        m = self.up(self.mid(self.pool(e3)))
        d3 = self.up(self.dec3(torch.cat([m, e3], 1)))
        d2 = self.up(self.dec2(torch.cat([d3, e2], 1)))
        d1 = self.dec1(torch.cat([d2, e1], 1))
        return self.last(d1)


class TriggerGenerator(nn.Module):
    """G_θ(x) for images B×C×H×W in [0, 1]; see the module docstring for the variants."""

    def __init__(self, kind: str, channels: int, size: tuple[int, int], width: int = 32,
                 norm: str = "batch", static_pattern: bool = False, warp_grid: int = 0,
                 warp_only: bool = False, warp_init: float = 0.0, pattern_only: bool = False):
        super().__init__()
        h, w = int(size[0]), int(size[1])
        if h % 8 or w % 8:
            raise DrmguardError(f"the DRMGuard generator needs image sides divisible by 8, got "
                                f"{h}×{w}; resize the data (e.g. to {max(8, h // 8 * 8)}×"
                                f"{max(8, w // 8 * 8)})")
        if kind not in ("ia", "residual", "unet"):
            raise DrmguardError(f"unknown generator '{kind}' (choose residual, unet or ia)")
        self.kind, self.channels, self.size = kind, int(channels), (h, w)
        self.warp_init = float(warp_init)
        if warp_only and not warp_grid:
            raise DrmguardError("a warp-only generator needs a warp branch (warp_grid >= 2)")
        if warp_only and pattern_only:
            raise DrmguardError("a generator is warp-only or pattern-only, not both")
        if pattern_only and (kind == "ia" or warp_grid):
            raise DrmguardError("a pattern-only generator needs the residual or unet generator "
                                "and no warp branch")
        if warp_only or pattern_only:  # the warp branch alone (no δ, no P), or P alone
            self.body = None
        elif kind == "ia":
            self.body = EncoderDecoder(channels, width, norm, zero_last=False)
        elif kind == "residual":
            self.body = EncoderDecoder(channels, width, norm, zero_last=True)
        else:
            self.body = UNet(channels, width, norm)
        self.pattern = (nn.Parameter(torch.zeros(1, channels, h, w))
                        if (static_pattern or pattern_only) and not warp_only else None)
        self.flow = None
        if warp_grid:
            if kind == "ia" or not 2 <= int(warp_grid) <= min(h, w):
                raise DrmguardError(f"`warp_grid` needs the residual or unet generator and a size "
                                    f"in [2, {min(h, w)}], got {warp_grid} with '{kind}'")
            # zero: the exact identity; warp_init > 0: a random start (torch's global RNG,
            # seeded by the search) — from zero the gradient of a WaNet-style backdoor's
            # response to the field is uninformative (docs/method.md)
            self.flow = nn.Parameter(torch.randn(1, 2, int(warp_grid), int(warp_grid))
                                     * self.warp_init)
            self.register_buffer("_identity", identity_grid(h, w), persistent=False)
            self.register_buffer("_pixel", torch.tensor([2.0 / max(w - 1, 1),
                                                         2.0 / max(h - 1, 1)]), persistent=False)

    @property
    def exact_identity_at_init(self) -> bool:
        return self.kind != "ia" and not (self.flow is not None and self.warp_init > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_warped(x)[1]

    def with_warped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W(x), G(x)): the warp branch's image (x without one) and the generator's output,
        the warp computed once."""
        if x.shape[1:] != (self.channels, *self.size):
            raise DrmguardError(f"generator built for {self.channels}×{self.size[0]}×"
                                f"{self.size[1]} images, got {tuple(x.shape[1:])}")
        if self.body is None:  # warp only, or pattern only (no warp: base is x)
            base = self.warped(x)
            out = base if self.pattern is None else base + torch.tanh(self.pattern)
            return base, out.clamp(0.0, 1.0)
        z = self.body(x * 2.0 - 1.0)
        if self.pattern is not None:
            z = z + self.pattern
        if self.kind == "ia":
            return x, torch.tanh(z) / _TANH_SCALE + 0.5
        base = self.warped(x)
        return base, (base + torch.tanh(z)).clamp(0.0, 1.0)

    def warped(self, x: torch.Tensor) -> torch.Tensor:
        """x moved by the warp branch (x itself without one): x + W_φ(x) − W_0(x)."""
        if self.flow is None:
            return x
        h, w = self.size
        grid = self._identity.expand(len(x), -1, -1, -1)
        moved = (grid + upsampled_field(self.flow, h, w) * self._pixel).clamp(-1, 1)  # as WaNet
        return x + (warp(x, moved) - warp(x, grid))


def build_generator(cfg, channels: int, size: tuple[int, int]) -> TriggerGenerator:
    return TriggerGenerator(cfg.generator, channels, size, width=cfg.gen_width,
                            norm=cfg.gen_norm, static_pattern=cfg.static_pattern,
                            warp_grid=cfg.warp_grid, warp_only=cfg.warp_only,
                            warp_init=cfg.warp_init, pattern_only=cfg.pattern_only)


def pretrain_identity(gen: TriggerGenerator, sample: Callable[[], torch.Tensor], steps: int,
                      lr: float, progress: bool = False) -> float:
    """Fit G to the identity (L1 reconstruction on batches from ``sample()``); returns the final
    mean |G(x) − x| per pixel.

    Used for the ``ia`` generator, so reverse engineering starts from "no trigger" [ours].
    """
    from ...utils import progress_bar

    if steps <= 0:
        return float("nan")
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    gen.train()
    losses = []
    for _ in progress_bar(range(steps), desc="G identity pre-training", enabled=progress):
        x = sample()
        loss = (gen(x) - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(sum(losses[-20:]) / len(losses[-20:]))


@torch.no_grad()
def recalibrate_batchnorm(gen: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Recompute BatchNorm running statistics of ``gen`` over ``batches`` (cumulative average).

    Reverse engineering runs G in training mode (batch statistics); evaluating the final trigger
    image by image needs running statistics that describe the same function.
    """
    bns = [m for m in gen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        gen.eval()
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    gen.train()
    for x in batches:
        if len(x) > 1:
            gen(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    gen.eval()
