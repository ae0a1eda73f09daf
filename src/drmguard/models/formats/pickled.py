"""Pickled modules (``torch.save(model)``): refused unless the caller allows them."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import DrmguardError, first_line
from ..split import RegressionModel
from .common import _foreign_meta, _geometry, _wrap_module


def load_pickled_module(path: Path, allow_pickle: bool) -> torch.nn.Module:
    """A pickled ``nn.Module``; refused (nothing executed) unless ``allow_pickle``."""
    if not allow_pickle:
        raise DrmguardError(
            f"{path} is a pickled model, which can run arbitrary code when loaded; "
            "re-run with --allow-pickle only if you trust its source")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # any unpickling failure
        raise DrmguardError(f"cannot unpickle {path}: {first_line(e)}") from None
    if not isinstance(obj, torch.nn.Module):
        raise DrmguardError(f"{path} holds a {type(obj).__name__}, not a model")
    return obj


def load_pickle(path: Path, allow_pickle: bool, input_size=None, mean=None, std=None,
                feature_layer: str | None = None) -> tuple[RegressionModel, dict]:
    """A pickled module as a RegressionModel (only with ``allow_pickle``); the file records no
    geometry, so ``input_size`` is needed."""
    net = load_pickled_module(path, allow_pickle)
    notes: list[str] = []
    c, hw, mean, std = _geometry(input_size, mean, std, {}, f"pickled model {path.name}",
                                 notes, "pass `input_size` H,W (or C,H,W)")
    model = _wrap_module(net.eval(), (c, *hw), mean, std, feature_layer,
                         f"pickled model {path.name}", notes)
    return model, _foreign_meta(model, "pickle", path, {}, notes)
