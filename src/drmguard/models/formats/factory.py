"""Your own architecture (``module:factory`` or a registry name) plus a weights file (safetensors
or a ``torch.save`` state dict read with weights_only)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ...errors import DrmguardError, first_line
from ..registry import ARCHS, build_model
from ..split import RegressionModel
from .common import _foreign_meta, _wrap_module, parse_input_size
from .sniff import detect_format


def _is_factory_spec(arch: str) -> bool:
    mod, sep, fn = arch.partition(":")
    return bool(sep and mod and fn)


def _call_factory(spec: str, num_outputs: int | None, kwargs: dict | None = None) -> nn.Module:
    """Import ``module:factory`` (current directory first) and build the network."""
    mod_name, _, fn_name = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise DrmguardError(f"cannot import module '{mod_name}' for `arch` {spec}: {e} "
                            "(it must be in the current directory or on PYTHONPATH)") from None
    factory = module
    for part in fn_name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise DrmguardError(f"module '{mod_name}' has no '{fn_name}' (from `arch` {spec})")
    if not callable(factory):
        raise DrmguardError(f"`arch` {spec}: '{fn_name}' is not callable")
    kw = dict(kwargs or {})
    if num_outputs is not None:
        kw["num_outputs"] = int(num_outputs)
    try:
        net = factory(**kw)
    except TypeError as e:
        raise DrmguardError(f"`arch` {spec}: calling {fn_name}({', '.join(f'{k}=' for k in kw)})"
                            f" failed: {e}") from None
    if not isinstance(net, nn.Module):
        raise DrmguardError(f"`arch` {spec} returned a {type(net).__name__}, not an nn.Module")
    return net


def _read_safetensors(path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise DrmguardError(f"cannot read {path}: {first_line(e)}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain ``torch.save`` state dict (weights only)."""
    p = Path(path)
    if not p.is_file():
        raise DrmguardError(f"weights file {p} does not exist")
    fmt = detect_format(p)
    if fmt == "safetensors":
        return _read_safetensors(p)
    if fmt != "pickle":
        raise DrmguardError(f"{p} is not a weights file (safetensors or a torch.save state dict)")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # includes pickles that reference code: refused, never executed
        raise DrmguardError(f"{p} is not a plain state dict ({first_line(e)}); convert it to "
                            "safetensors, or load a pickled module with `allow_pickle`") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DrmguardError(f"{p} does not hold a state dict of tensors")
    return obj


def load_arch_weights(arch: str, weights: str | os.PathLike, input_size=None, mean=None,
                      std=None, feature_layer: str | None = None,
                      num_outputs: int | None = None) -> tuple[RegressionModel, dict]:
    """User code ``module:factory`` (or a registry name) + a weights file."""
    p = Path(weights)
    state = read_state_dict(p)
    if set(state) >= {"mean", "std"} and all(k.startswith("net.") or k in ("mean", "std")
                                            for k in state):
        # a RegressionModel state dict (drmguard's own safetensors): use its normalisation
        if mean is None and std is None:
            mean, std = state["mean"].flatten().tolist(), state["std"].flatten().tolist()
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    notes: list[str] = []
    size = parse_input_size(input_size)
    if size is None:
        raise DrmguardError(f"`arch` {arch}: pass `input_size` H,W (or C,H,W) for the model")
    if arch in ARCHS:
        if num_outputs is None and isinstance(state.get("fc.weight"), torch.Tensor):
            num_outputs = state["fc.weight"].shape[0]
        if num_outputs is None:
            raise DrmguardError(f"`arch` {arch} needs the number of outputs: pass `task`")
        net = build_model(arch, int(num_outputs), size[0] or 3)
        size = (size[0] or 3, size[1], size[2])
    elif _is_factory_spec(arch):
        net = _call_factory(arch, num_outputs)
    else:
        raise DrmguardError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHS)}, or "
                            "give your own as module:factory)")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise DrmguardError(f"{p} does not match `arch` {arch}: {first_line(e)}") from None
    if mean is None and std is None:
        notes.append(f"no input normalisation given for {p.name}: assuming the model takes "
                     "images in [0, 1]; pass --mean/--std if it expects normalised input")
    model = _wrap_module(net.eval(), size, mean, std, feature_layer, f"`arch` {arch}", notes)
    meta = _foreign_meta(model, "arch", p, {}, notes)
    meta["arch"] = arch
    return model, meta
