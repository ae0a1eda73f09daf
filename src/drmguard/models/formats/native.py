"""The native format: a drmguard model directory (``model.safetensors`` + ``model.json``, or a
TorchScript file + ``model.json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save_file

from ... import __version__
from ...errors import DrmguardError, first_line
from ..registry import ARCHS, build_model
from ..split import RegressionModel
from .common import (EXPORT_FILE, MODEL_JSON, MODEL_WEIGHTS, _json_default, _wrap_module,
                     task_from_meta)
from .export import export_torchscript
from .factory import _call_factory, _is_factory_spec, _read_safetensors
from .torchscript import load_torchscript


def model_meta(model: RegressionModel, arch: str, task, arch_kwargs: dict | None = None,
               **extra) -> dict:
    """The metadata dict describing ``model`` (extend with training config, seed, attack...)."""
    meta = {
        "format": "drmguard-model", "format_version": 1, "drmguard_version": __version__,
        "arch": arch, "arch_kwargs": dict(arch_kwargs or {}),
        "num_outputs": model.num_outputs, "in_channels": model.in_channels,
        "input_size": list(model.input_size),
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "head": model.head_name, "task": task.to_dict() if task is not None else None,
        "attack": None,
    }
    meta.update(extra)
    return meta


def save_model(model: RegressionModel, out_dir: str | os.PathLike, meta: dict,
               overwrite: bool = False) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``out_dir``.

    Refuses to replace an existing model there unless ``overwrite``.
    """
    out = _new_model_dir(out_dir, overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / MODEL_WEIGHTS))
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=_json_default))
    return out


def save_model_any(model: RegressionModel, out_dir: str | os.PathLike, meta: dict,
                   overwrite: bool = False) -> Path:
    """Save a model of any origin as a drmguard model directory (e.g. after mitigation).

    Registry and ``module:factory`` architectures are saved as safetensors + JSON
    (:func:`save_model`); models that came from TorchScript, ONNX or a pickle are saved as a
    TorchScript file (normalisation included) + ``model.json`` with ``"arch": "torchscript"``.
    """
    arch = str(meta.get("arch") or "")
    if arch in ARCHS or _is_factory_spec(arch):
        return save_model(model, out_dir, meta, overwrite)
    out = _new_model_dir(out_dir, overwrite)
    export_torchscript(model, out / EXPORT_FILE, task=task_from_meta(meta))
    c = model.in_channels
    meta = {**meta, "format": "drmguard-model", "format_version": 1,
            "drmguard_version": __version__, "arch": "torchscript", "file": EXPORT_FILE,
            "arch_kwargs": {}, "num_outputs": model.num_outputs, "in_channels": c,
            "input_size": list(model.input_size), "mean": [0.0] * c, "std": [1.0] * c,
            "head": None}
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=_json_default))
    return out


def _new_model_dir(out_dir, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DrmguardError(f"{out} exists and is not a directory")
    if ((out / MODEL_WEIGHTS).exists() or (out / MODEL_JSON).exists()) and not overwrite:
        raise DrmguardError(f"{out} already holds a model; choose another `out`")
    out.mkdir(parents=True, exist_ok=True)
    return out


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
    for key in ("arch", "num_outputs", "input_size"):
        if key not in meta:
            raise DrmguardError(f"{f} lacks the '{key}' entry")
    return meta


def load_drmguard_model(path: str | os.PathLike, arch: str | None = None,
                        feature_layer: str | None = None) -> tuple[RegressionModel, dict]:
    """Load a drmguard model directory (safetensors + json, or TorchScript + json).

    ``arch`` must repeat a ``module:factory`` architecture recorded in the file: such code is
    imported only when the caller asks for it. ``feature_layer`` overrides the recorded head.
    """
    p = Path(path)
    if p.is_file() and p.name == MODEL_JSON:
        p = p.parent
    meta = read_meta(p)
    rec = str(meta["arch"])
    c = int(meta.get("in_channels", 3))
    if rec == "torchscript":
        f = p / str(meta.get("file", EXPORT_FILE))
        if not f.is_file():
            raise DrmguardError(f"{p}/{MODEL_JSON} names TorchScript file {f.name}, which is "
                                "missing")
        model, _ = load_torchscript(f, input_size=(c, *meta["input_size"]),
                                    mean=meta.get("mean"), std=meta.get("std"),
                                    feature_layer=feature_layer)
        return model, {**meta, "source": str(p), "source_format": "drmguard"}
    if arch is not None and arch != rec:
        raise DrmguardError(f"{p} holds a '{rec}' model, not '{arch}'; omit `arch`")
    weights = p / MODEL_WEIGHTS
    if not weights.exists():
        raise DrmguardError(f"{p} has {MODEL_JSON} but no {MODEL_WEIGHTS}")
    if rec in ARCHS:
        net = build_model(rec, meta["num_outputs"], c, **meta.get("arch_kwargs", {}))
    elif _is_factory_spec(rec):
        if arch is None:
            raise DrmguardError(f"{p} was built by your code '{rec}'; pass `arch` {rec} to import "
                                "and run it (only if you trust it)")
        net = _call_factory(rec, meta["num_outputs"], meta.get("arch_kwargs", {}))
    else:
        raise DrmguardError(f"{p}/{MODEL_JSON}: unknown architecture '{rec}'")
    state = _read_safetensors(weights)
    if feature_layer:
        model = _wrap_module(net, (c, *meta["input_size"]), meta.get("mean"), meta.get("std"),
                             feature_layer, str(p), notes=[])
    else:
        model = RegressionModel(net, meta["input_size"], c, meta.get("mean"), meta.get("std"),
                                head=meta.get("head"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DrmguardError(f"{weights} does not match architecture {rec}: "
                            f"{first_line(e)}") from None
    model.eval()
    if feature_layer:
        meta = {**meta, "head": model.head_name}
    return model, {**meta, "source": str(p), "source_format": "drmguard"}
