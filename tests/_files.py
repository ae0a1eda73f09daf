"""Small model and data files for the tests of the user-facing paths (scan, API)."""

import numpy as np
import torch

from drmguard.data import save_folder
from drmguard.data.base import ArrayDataset
from drmguard.models import RegressionModel, build_model
from drmguard.models.io import model_meta, save_model
from drmguard.tasks import GAZE


def tiny_model(seed: int) -> RegressionModel:
    torch.manual_seed(seed)
    return RegressionModel(build_model("small_resnet", 2, widths=[4, 8]), (16, 16)).eval()


def write_model_dir(path, seed: int = 0):
    """A drmguard model directory (a tiny gaze model)."""
    m = tiny_model(seed)
    return save_model(m, path, model_meta(m, "small_resnet", GAZE, {"widths": [4, 8]}))


def write_plain_torchscript(path, seed: int = 1):
    """A TorchScript file of your own: no recorded input size, no normalisation."""
    torch.manual_seed(seed)
    torch.jit.script(build_model("small_resnet", 2, widths=[4, 8]).eval()).save(str(path))
    return path


def write_gaze_folder(path, n: int = 20):
    """``n`` labelled 16×16 gaze images as a drmguard folder."""
    g = np.random.default_rng(0)
    ds = ArrayDataset(g.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
                      g.uniform(-0.3, 0.3, (n, 2)).astype(np.float32), "gaze",
                      target_names=["yaw", "pitch"])
    return save_folder(ds, path, progress=False)
