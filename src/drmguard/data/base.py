"""In-memory regression datasets and their seeded splits.

Every source (synthetic generator, folder+CSV, npz, real-dataset loaders) produces an
:class:`ArrayDataset`: uint8 images N×H×W×C (RGB), float32 targets N×K, optional int subject
ids N, and the task name. Indexing yields ``(image, target)`` with the image a float tensor
C×H×W in [0, 1] and the target a float tensor of K values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DrmguardError


def float_images(u8: torch.Tensor) -> torch.Tensor:
    """uint8 images B×H×W×C -> float B×C×H×W in [0, 1], in contiguous (NCHW) memory.

    A bare ``permute`` would keep channels-last strides; with one CPU thread, torch 2.14.1's
    backward pass through a small ResNet on such input corrupted the heap (a ``double free``
    abort of ``drmguard mitigate`` with OMP_NUM_THREADS=1), so the layout is made plain here.
    """
    return u8.permute(0, 3, 1, 2).contiguous().float().div_(255.0)


@dataclass
class ArrayDataset(Dataset):
    images: np.ndarray  # N×H×W×C uint8
    targets: np.ndarray  # N×K float32
    task: str = "generic"
    subjects: np.ndarray | None = None  # N int64
    target_names: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4:
            raise DrmguardError(f"images must be N×H×W×C, got shape {self.images.shape}")
        if self.images.dtype != np.uint8:
            raise DrmguardError(f"images must be uint8, got {self.images.dtype}")
        self.targets = np.asarray(self.targets, dtype=np.float32)
        if self.targets.ndim == 1:
            self.targets = self.targets[:, None]
        if len(self.targets) != len(self.images):
            raise DrmguardError(
                f"{len(self.images)} images but {len(self.targets)} target rows")
        if not np.isfinite(self.targets).all():
            bad = int((~np.isfinite(self.targets)).any(axis=1).sum())
            raise DrmguardError(f"{bad} target rows contain NaN or inf")
        if self.subjects is not None:
            self.subjects = np.asarray(self.subjects, dtype=np.int64)
            if len(self.subjects) != len(self.images):
                raise DrmguardError("subjects must have one entry per image")

    # --- torch Dataset protocol -------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255.0)
        return img, torch.from_numpy(self.targets[i])

    # --- helpers -----------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def target_dim(self) -> int:
        return int(self.targets.shape[1])

    def subset(self, idx) -> "ArrayDataset":
        idx = np.asarray(idx, dtype=np.int64)
        return ArrayDataset(self.images[idx], self.targets[idx], self.task,
                            None if self.subjects is None else self.subjects[idx],
                            self.target_names, dict(self.meta))

    def tensors(self, idx=None) -> tuple[torch.Tensor, torch.Tensor]:
        """All (or the indexed) images as one float tensor B×C×H×W in [0,1], and targets."""
        imgs = self.images if idx is None else self.images[np.asarray(idx)]
        tg = self.targets if idx is None else self.targets[np.asarray(idx)]
        x = float_images(torch.from_numpy(np.ascontiguousarray(imgs)))
        return x, torch.from_numpy(np.ascontiguousarray(tg))

    def resized(self, size: tuple[int, int]) -> "ArrayDataset":
        """A copy with every image resized (bilinear, antialiased) to ``size`` = (H, W)."""
        if tuple(size) == self.image_size:
            return self
        from PIL import Image

        h, w = size
        out = np.empty((len(self), h, w, self.channels), dtype=np.uint8)
        for i, im in enumerate(self.images):
            pil = Image.fromarray(im[..., 0] if self.channels == 1 else im)
            arr = np.asarray(pil.resize((w, h), Image.BILINEAR))
            out[i] = arr.reshape(h, w, self.channels)
        return ArrayDataset(out, self.targets, self.task, self.subjects, self.target_names,
                            dict(self.meta))


@dataclass
class Splits:
    """Training set D_t, defender's benign set D_b, and test set."""

    train: ArrayDataset
    benign: ArrayDataset
    test: ArrayDataset


def split_dataset(ds: ArrayDataset, ratios=(0.8, 0.1, 0.1), by_subject: bool = False,
                  seed: int = 0) -> Splits:
    """Seeded split into (train, benign, test) by sample ratio or by subject.

    With ``by_subject`` the subjects (not the samples) are divided by the ratios, so no subject
    appears in two parts.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or r.sum() <= 0:
        raise DrmguardError(f"split ratios must be three non-negative numbers, got {ratios}")
    r = r / r.sum()
    rng = np.random.default_rng(seed)
    if by_subject:
        if ds.subjects is None:
            raise DrmguardError("split by subject needs subject ids in the dataset")
        subj = np.unique(ds.subjects)
        if len(subj) < 3:
            raise DrmguardError(f"split by subject needs at least 3 subjects, got {len(subj)}")
        subj = rng.permutation(subj)
        cuts = _cuts(len(subj), r)
        parts = [np.flatnonzero(np.isin(ds.subjects, subj[a:b])) for a, b in cuts]
    else:
        perm = rng.permutation(len(ds))
        parts = [np.sort(perm[a:b]) for a, b in _cuts(len(ds), r)]
    return Splits(*(ds.subset(p) for p in parts))


def _cuts(n: int, r: np.ndarray) -> list[tuple[int, int]]:
    """Boundaries of three consecutive blocks of n items with ratios r (each non-empty if r>0)."""
    c1 = int(round(n * r[0]))
    c2 = int(round(n * (r[0] + r[1])))
    if r[1] > 0 and c2 == c1 and c2 < n:
        c2 += 1
    if r[2] > 0 and c2 >= n and n >= 3:
        c2 = n - 1
        c1 = min(c1, c2 - 1) if r[1] > 0 else c1
    return [(0, c1), (c1, c2), (c2, n)]
