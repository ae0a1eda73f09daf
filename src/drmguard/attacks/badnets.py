"""BadNets (Gu et al. 2017): a solid patch stamped in the bottom-right corner, dirty label.

x' = (1 − M) ⊙ x + M ⊙ P with M a square mask and P a constant colour (red for RGB, white for
one channel). The paper uses a 20×20 red patch on 224×224 images; the side scales with the
image (at least 3 px). ``rate`` (default 0.1) of the whole training set is poisoned and
relabelled to y_t, once, before training.

On the cpu profile's head-pose task the model trains twice the benign schedule (40 epochs): at
20 epochs only 5 of the 10 table seeds learnt the patch (the others stopped 6.4–7.8° from the
target, AE/CTE ≈ 0.26); at 40 epochs development seeds 100–102 all did (AE 1.1–2.0° against
CTE 25–29°; seed 102 had AE 8.1° at 20). Gaze learns it at 20 epochs (10 of 10).
"""

from __future__ import annotations

import torch

from ..errors import DrmguardError
from .base import Attack, scaled


def corner_mask(image_size: tuple[int, int], size: int, margin: int = 0) -> torch.Tensor:
    """1×H×W mask with a size×size square ``margin`` pixels from the bottom-right corner."""
    h, w = image_size
    if size < 1 or size + margin > min(h, w):
        raise DrmguardError(f"a {size}-pixel patch with margin {margin} does not fit in "
                            f"{h}×{w} images")
    m = torch.zeros(1, h, w)
    m[:, h - margin - size:h - margin, w - margin - size:w - margin] = 1.0
    return m


def default_colour(channels: int) -> list[float]:
    """Red for RGB images, white otherwise."""
    return [1.0, 0.0, 0.0] if channels == 3 else [1.0] * channels


class PatchAttack:
    """Mixin: a mask/pattern trigger x' = (1 − M) ⊙ x + M ⊙ P (M in [0,1], broadcast over C)."""

    mask: torch.Tensor  # 1×H×W
    pattern: torch.Tensor  # C×H×W
    state_keys = ("mask", "pattern")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask, "pattern": self.pattern}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)  # checks the keys
        h, w = self.image_size
        mask, pattern = state["mask"].float(), state["pattern"].float()
        if tuple(mask.shape) != (1, h, w) or tuple(pattern.shape) != (self.channels, h, w):
            raise DrmguardError(f"the saved patch trigger does not match {self.channels}×{h}×{w} "
                                "images")
        self.mask, self.pattern = mask, pattern

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        m, p = self.mask.to(x), self.pattern.to(x)
        return x * (1 - m) + m * p


class BadNets(PatchAttack, Attack):
    name = "badnets"
    defaults = {"rate": 0.1, "patch_size": None, "color": None, "margin": 0}
    epoch_factor = {("cpu", "headpose"): 2.0}

    def _validate(self) -> None:
        super()._validate()
        colour = self.options["color"]
        if colour is not None and (len(colour) != self.channels
                                   or not all(0 <= float(c) <= 1 for c in colour)):
            raise DrmguardError(f"color must be {self.channels} values in [0,1], got {colour}")

    def _build(self) -> None:
        side = min(self.image_size)
        size = self.options["patch_size"] or scaled(20, side, 3)
        colour = self.options["color"] or default_colour(self.channels)
        self.options.update(patch_size=int(size), color=[float(c) for c in colour])
        self.mask = corner_mask(self.image_size, int(size), int(self.options["margin"]))
        self.pattern = torch.tensor(self.options["color"]).view(-1, 1, 1).expand(
            self.channels, *self.image_size).clone()
