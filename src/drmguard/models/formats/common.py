"""What every format shares: file names, input geometry and normalisation, wrapping any
``nn.Module`` as a :class:`RegressionModel`, the record of a foreign model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ... import __version__
from ...errors import DrmguardError, MissingInputSize, first_line
from ...tasks import Task, get_task
from ..split import RegressionModel


MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
EXPORT_FILE = "model.pt"  # TorchScript file of a directory whose arch is "torchscript"
EXPORT_META = "drmguard.json"  # extra file in TorchScript exports, metadata key in ONNX ones
ONNX_OPSET = 17  # the newest opset onnx2torch converts completely
PROBE_BATCH = 4
_ONNX_HINT = "install the ONNX extra: pip install 'drmguard[onnx]'"


def parse_input_size(value) -> tuple[int | None, int, int] | None:
    """``224``, ``(H, W)``, ``(C, H, W)``, ``"H,W"``, ``"C,H,W"`` or ``"HxW"`` -> (C|None, H, W)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [v for v in value.replace("x", ",").replace("×", ",").replace(" ", "").split(",")
                 if v]
        try:
            vals = [int(v) for v in parts]
        except ValueError:
            msg = f"input size must be H,W or C,H,W integers, got '{value}'"
            raise DrmguardError(msg) from None
    elif isinstance(value, int):
        vals = [value]
    else:
        vals = [int(v) for v in value]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) not in (2, 3) or min(vals) < 1:
        raise DrmguardError(f"input size must be H,W or C,H,W positive integers, got {value}")
    return (None, vals[0], vals[1]) if len(vals) == 2 else (vals[0], vals[1], vals[2])


def _norm_values(vals, channels: int, what: str) -> list[float] | None:
    if vals is None:
        return None
    vals = [float(v) for v in vals]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise DrmguardError(f"--{what} needs {channels} values (one per input channel), got "
                            f"{len(vals)}")
    if what == "std" and min(vals) <= 0:
        raise DrmguardError(f"`std` values must be positive, got {vals}")
    return vals


def _geometry(size, mean, std, file_info: dict, source: str, notes: list[str],
              need_size: str) -> tuple[int | None, tuple[int, int], list | None, list | None]:
    """(channels or None, (H, W), mean, std) from options, else the file's record."""
    parsed = parse_input_size(size)
    if parsed is None and file_info.get("input_size"):
        parsed = (file_info.get("in_channels"), *[int(v) for v in file_info["input_size"]])
    if parsed is None:
        raise MissingInputSize(f"{source} does not record its input size; {need_size}")
    c, h, w = parsed
    c = c or file_info.get("in_channels")
    if mean is None and std is None and file_info.get("mean") is not None:
        mean, std = file_info.get("mean"), file_info.get("std")
    elif mean is None and std is None:
        notes.append(f"{source} records no input normalisation: assuming it takes images in "
                     "[0, 1]; pass --mean/--std if it expects normalised input")
    return c, (h, w), mean, std


def _linear_names(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, nn.Linear) or
            getattr(m, "original_name", None) == "Linear"]


def _wrap_module(net: nn.Module, size: tuple, mean, std, feature_layer: str | None,
                 source: str, notes: list[str]) -> RegressionModel:
    """RegressionModel around ``net`` with clear errors for unusable models."""
    c, h, w = size
    channels = [c] if c else [3, 1]
    last_error = None
    for ch in channels:
        try:
            m = _norm_values(mean, ch, "mean")
            s = _norm_values(std, ch, "std")
        except DrmguardError as e:
            last_error = e
            continue
        if feature_layer is not None and feature_layer not in dict(net.named_modules()):
            raise DrmguardError(f"{source} has no layer '{feature_layer}'; its linear layers: "
                                f"{', '.join(_linear_names(net)) or 'none'}")
        try:
            model = RegressionModel(net, (h, w), ch, m, s, head=feature_layer)
        except DrmguardError as e:
            if "`feature_layer`" in str(e):  # split.py: no final linear layer
                linears = _linear_names(net)
                raise DrmguardError(
                    f"the output of {source} does not come from a final linear layer; pass "
                    f"`feature_layer` NAME naming the layer whose input is the feature vector "
                    f"(linear layers: {', '.join(linears) or 'none'})") from None
            raise DrmguardError(f"{source}: {e}") from None
        except Exception as e:  # the net failed on the probe input
            last_error = e
            continue
        _check_explicit_head(model, feature_layer, source, notes)
        return model.eval()
    what = f"{c}×{h}×{w}" if c else f"3×{h}×{w} or 1×{h}×{w}"
    raise DrmguardError(f"{source} fails on a {what} input ({first_line(last_error)}); pass "
                        "`input_size` C,H,W with the size it expects")


def _check_explicit_head(model: RegressionModel, feature_layer, source, notes) -> None:
    if feature_layer is None:
        return
    x = _probe(model.in_channels, model.input_size)
    with torch.no_grad():
        h, y = model.forward_with_features(x)
        if h.shape[1] != model.head.in_features or not torch.allclose(
                model.head(h), y, rtol=1e-4, atol=1e-5 * (1 + float(y.abs().max()))):
            notes.append(f"the output of {source} is not the output of '{feature_layer}': F2 "
                         "includes more than that linear layer")


def _probe(channels: int, size: tuple[int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(PROBE_BATCH, channels, *size, generator=g)


def _check_outputs(model: RegressionModel, task, num_outputs, source) -> Task | None:
    k = model.num_outputs
    if num_outputs is not None and int(num_outputs) != k:
        raise DrmguardError(f"{source} outputs {k} values, not {num_outputs}")
    if task is None:
        return None
    t = task if isinstance(task, Task) else None
    if t is None:
        name = str(task)
        if name == "generic":
            return get_task("generic", dim=k)
        t = get_task(name)
    if t.dim != k:
        raise DrmguardError(f"{source} outputs {k} values but task {t.name} has {t.dim} "
                            f"({', '.join(t.target_names)}); pass `task`=generic or another model")
    return t


def _foreign_meta(model: RegressionModel, fmt: str, path: Path, info: dict,
                  notes: list[str]) -> dict:
    task = info.get("task") if isinstance(info.get("task"), dict) else None
    return {
        "format": "drmguard-model", "format_version": 1, "drmguard_version": __version__,
        "arch": fmt, "arch_kwargs": {}, "source": str(path), "source_format": fmt,
        "num_outputs": model.num_outputs, "in_channels": model.in_channels,
        "input_size": list(model.input_size), "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(), "head": model.head_name, "task": task,
        "attack": None, "notes": list(notes),
    }


def task_from_meta(meta: dict) -> Task | None:
    t = meta.get("task")
    if not isinstance(t, dict) or "name" not in t:
        return None
    try:
        return get_task(t["name"], dim=t.get("dim"),
                        target_names=t.get("target_names")
                        if t["name"] in ("generic", "classification") else None)
    except DrmguardError:
        return None


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
