import os

import numpy as np
import pytest
import torch

os.environ.setdefault("DRMGUARD_QUIET", "1")
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def toy_dataset():
    """A small random dataset with subjects (generic 2-D task)."""
    from drmguard.data.base import ArrayDataset

    g = np.random.default_rng(1)
    images = g.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8)
    targets = g.normal(size=(60, 2)).astype(np.float32)
    subjects = np.repeat(np.arange(6), 10)
    return ArrayDataset(images, targets, "generic", subjects, ["a", "b"])
