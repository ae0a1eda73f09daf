"""A user-supplied trigger: a patch image with its mask, or an image blended into the input.

- patch mode (``patch``, optional ``mask``): x' = (1 − M) ⊙ x + M ⊙ P. Both images are
  resized to the input size (nearest neighbour, so edges stay sharp); the mask is read as
  grey levels in [0, 1] (white = trigger). Without a mask, the trigger covers the patch's
  non-black pixels (BackdoorBench's convention).
- blend mode (``blend``, ``alpha``): x' = (1 − α) x + α K with K the image resized (bilinear).

Images are read with PIL; the trigger tensors are stored with the model, so the image files
are not needed to reload it. Poisoning: dirty label, ``rate`` of the training set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DrmguardError
from .badnets import PatchAttack
from .base import Attack


def read_image(path: str | Path, size: tuple[int, int], channels: int,
               resample=Image.NEAREST) -> torch.Tensor:
    """An image file as a C×H×W float tensor in [0,1], resized to ``size`` = (H, W)."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im.resize((size[1], size[0]), resample), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DrmguardError(f"trigger image {p} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DrmguardError(f"cannot read trigger image {p}: {e}") from None
    t = torch.from_numpy(arr)
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    if t.shape[0] != channels:
        raise DrmguardError(f"trigger image {p} has {t.shape[0]} channels, the model "
                            f"takes {channels}")
    return t.contiguous()


class Custom(PatchAttack, Attack):
    name = "custom"
    defaults = {"rate": 0.1, "patch": None, "mask": None, "blend": None, "alpha": 0.2}
    state_keys = ("mask", "pattern")

    def _validate(self) -> None:
        super()._validate()
        o = self.options
        if (o["patch"] is None) == (o["blend"] is None):
            raise DrmguardError("the custom attack needs either a patch image (`patch`, "
                                "optionally `mask`) or a blend image (`blend`)")
        if o["blend"] is not None and o["mask"] is not None:
            raise DrmguardError("`mask` goes with `patch`, not with `blend`")
        if not 0 < float(o["alpha"]) < 1:
            raise DrmguardError(f"alpha must be in (0, 1), got {o['alpha']}")

    def _build(self) -> None:
        o, size, c = self.options, self.image_size, self.channels
        if o["blend"] is not None:
            # blending is a patch trigger with a uniform mask α and the key image as pattern
            self.pattern = read_image(o["blend"], size, c, Image.BILINEAR)
            self.mask = torch.full((1, *size), float(o["alpha"]))
        else:
            self.pattern = read_image(o["patch"], size, c)
            if o["mask"] is not None:
                self.mask = read_image(o["mask"], size, 1)
            else:
                self.mask = (self.pattern.amax(0, keepdim=True) > 0).float()
            if float(self.mask.sum()) == 0:
                raise DrmguardError("the trigger mask is empty (all black)")
        for k in ("patch", "mask", "blend"):  # record where the images came from
            if o[k] is not None:
                o[k] = str(o[k])
