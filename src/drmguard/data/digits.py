"""scikit-learn's bundled handwritten digits as a classification data set (no download).

``sklearn.datasets.load_digits``: 1,797 real 8×8 grey images of the digits 0–9 (pixel values
0..16) from the UCI optical-recognition data set, shipped inside scikit-learn. They become
uint8 images (×255/16), are resized (bilinear) to ``size`` × ``size`` and repeated over
``channels`` channels; targets are one-hot rows of the 10 classes (task ``classification``,
:func:`drmguard.tasks.labels_to_onehot`).

Data spec: ``digits`` or ``digits:`` (optionally ``digits:?size=32&channels=3``).
"""

from __future__ import annotations

import numpy as np

from ..errors import DrmguardError
from ..tasks import labels_to_onehot
from .base import ArrayDataset

NUM_CLASSES = 10
NATIVE_SIZE = 8


def load(path: str = "", progress: bool = True, size: int | tuple | None = None,
         channels: int | str = 3, limit: int | str | None = None) -> ArrayDataset:
    """The digits as an :class:`ArrayDataset` (``path`` is ignored: the data ships with
    scikit-learn). ``limit``: the first N images only (tests)."""
    from sklearn.datasets import load_digits

    channels = int(channels)
    if channels not in (1, 3):
        raise DrmguardError(f"digits: `channels` must be 1 or 3, got {channels}")
    d = load_digits()
    images = np.round(np.asarray(d.images, np.float64) * (255.0 / 16.0)).clip(0, 255)
    images = images.astype(np.uint8)[..., None]
    labels = np.asarray(d.target)
    if limit is not None:
        images, labels = images[:int(limit)], labels[:int(limit)]
    ds = ArrayDataset(images, labels_to_onehot(labels, NUM_CLASSES, "digits"), "classification",
                      None, [str(i) for i in range(NUM_CLASSES)],
                      {"source": "sklearn.datasets.load_digits"})
    if size is not None:
        hw = (int(size), int(size)) if not isinstance(size, (tuple, list)) else tuple(size)
        ds = ds.resized(hw)
    if channels == 3:
        ds = ArrayDataset(np.repeat(ds.images, 3, axis=3), ds.targets, ds.task, None,
                          ds.target_names, ds.meta)
    return ds
