"""Model files: safetensors weights + JSON metadata; TorchScript and ONNX in; pickle refused.

A drmguard model directory holds ``model.safetensors`` (the state dict of a
:class:`RegressionModel`, normalisation buffers included) and ``model.json``::

    {"format": "drmguard-model", "format_version": 1, "drmguard_version": "0.1.0",
     "arch": "small_resnet", "arch_kwargs": {}, "num_outputs": 2, "in_channels": 3,
     "input_size": [32, 32], "mean": [...], "std": [...], "head": "fc",
     "task": {"name": "gaze", "dim": 2, "target_names": ["yaw", "pitch"]},
     "training": {...}, "seed": 0, "attack": null}

Loading never runs code from the file by default: safetensors holds only tensors, JSON only
data. Pickled modules (``torch.save(model)``) are refused unless ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import DrmguardError
from .registry import build_model
from .split import RegressionModel

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"


def model_meta(model: RegressionModel, arch: str, task, arch_kwargs: dict | None = None,
               **extra) -> dict:
    """The metadata dict describing ``model`` (extend with training config, seed, attack...)."""
    meta = {
        "format": "drmguard-model", "format_version": 1, "drmguard_version": __version__,
        "arch": arch, "arch_kwargs": dict(arch_kwargs or {}),
        "num_outputs": model.num_outputs, "in_channels": model.in_channels,
        "input_size": list(model.input_size),
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "head": model.head_name, "task": task.to_dict(), "attack": None,
    }
    meta.update(extra)
    return meta


def save_model(model: RegressionModel, out_dir: str | os.PathLike, meta: dict,
               overwrite: bool = False) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``out_dir``.

    Refuses to replace an existing model there unless ``overwrite``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DrmguardError(f"{out} exists and is not a directory")
    if (out / MODEL_WEIGHTS).exists() and not overwrite:
        raise DrmguardError(f"{out} already holds a model; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / MODEL_WEIGHTS))
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=_json_default))
    return out


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_meta(path: str | os.PathLike) -> dict:
    p = Path(path)
    f = p / MODEL_JSON if p.is_dir() else p
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise DrmguardError(f"no {MODEL_JSON} in {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DrmguardError(f"{f} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != "drmguard-model":
        raise DrmguardError(f"{f} is not a drmguard model description")
    return meta


def load_drmguard_model(path: str | os.PathLike) -> tuple[RegressionModel, dict]:
    """Load a drmguard model directory (safetensors + json)."""
    p = Path(path)
    if p.is_file() and p.name == MODEL_JSON:
        p = p.parent
    meta = read_meta(p)
    weights = p / MODEL_WEIGHTS
    if not weights.exists():
        raise DrmguardError(f"{p} has {MODEL_JSON} but no {MODEL_WEIGHTS}")
    net = build_model(meta["arch"], meta["num_outputs"], meta.get("in_channels", 3),
                      **meta.get("arch_kwargs", {}))
    model = RegressionModel(net, meta["input_size"], meta.get("in_channels", 3),
                            meta.get("mean"), meta.get("std"), head=meta.get("head"))
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise DrmguardError(f"cannot read {weights}: {str(e).splitlines()[0]}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DrmguardError(f"{weights} does not match architecture {meta['arch']}: "
                            f"{str(e).splitlines()[0]}") from None
    model.eval()
    return model, meta


def is_pickle_file(path: Path) -> bool:
    """True for a torch.save pickle (zip with data.pkl, or legacy pickle) — not TorchScript."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return not any(n.endswith("constants.pkl") or "/code/" in n for n in names)
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80  # pickle protocol marker


def load_pickled_module(path: Path, allow_pickle: bool) -> torch.nn.Module:
    """A pickled ``nn.Module``; refused (nothing executed) unless ``allow_pickle``."""
    if not allow_pickle:
        raise DrmguardError(
            f"{path} is a pickled model, which can run arbitrary code when loaded; "
            "re-run with --allow-pickle only if you trust its source")
    obj = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(obj, torch.nn.Module):
        raise DrmguardError(f"{path} holds a {type(obj).__name__}, not a model")
    return obj


def load_model(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[RegressionModel, dict]:
    """Load any supported model file; see :func:`load_drmguard_model` for the native format."""
    p = Path(path)
    if not p.exists():
        raise DrmguardError(f"model path {p} does not exist")
    if p.is_dir() or p.name == MODEL_JSON:
        return load_drmguard_model(p)
    if is_pickle_file(p):
        load_pickled_module(p, allow_pickle)
    raise DrmguardError(f"unsupported model file {p}")
