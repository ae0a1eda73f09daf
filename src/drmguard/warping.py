"""Smooth image warps on a coarse control field: WaNet's trigger (attacks.wanet) and the warp
branch of DRMGuard's trigger generator (defenses.drmguard.generator) share them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_grid(h: int, w: int) -> torch.Tensor:
    """1×H×W×2 sampling grid of the identity map, (x, y) order, align_corners=True."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack((xs, ys), -1)[None]


def upsampled_field(field: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A control field 1×2×k×k (channel 0 moves x, channel 1 moves y) upsampled bicubically
    to a 1×H×W×2 displacement in grid_sample's (x, y) order."""
    up = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)
    return up.permute(0, 2, 3, 1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """grid_sample(x, grid), bilinear, align_corners=True; a 1×H×W×2 grid is shared by all,
    an n×H×W×2 grid gives each image its own warp."""
    if grid.shape[0] == 1 and x.shape[0] != 1:
        grid = grid.expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid.to(x), mode="bilinear", padding_mode="zeros",
                         align_corners=True)
