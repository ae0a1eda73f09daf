"""Model files: any model in, safely; safetensors + JSON, TorchScript or ONNX out.

Formats :func:`load_model` reads (recognised by content, not by file name):

- **drmguard model directory** (or its ``model.json``): ``model.safetensors`` (the state dict of
  a :class:`RegressionModel`, normalisation buffers included) and ``model.json``::

      {"format": "drmguard-model", "format_version": 1, "drmguard_version": "0.1.0",
       "arch": "small_resnet", "arch_kwargs": {}, "num_outputs": 2, "in_channels": 3,
       "input_size": [32, 32], "mean": [...], "std": [...], "head": "fc",
       "task": {"name": "gaze", "dim": 2, "target_names": ["yaw", "pitch"]},
       "training": {...}, "seed": 0, "attack": null}

  ``arch`` is a registry name, ``"torchscript"`` (then ``"file"`` names a TorchScript file in
  the directory) or ``"module:factory"`` for user code, which is imported only when the caller
  passes the same ``arch`` explicitly.
- **TorchScript** (``torch.jit.save``). Forward hooks cannot be registered on a loaded
  ScriptModule, so the final linear layer is found by trial: a copy of the scripted model whose
  candidate layer computes the identity (weight I, bias 0) returns F1(x); the candidate is the
  head when W·F1(x) + b reproduces the model's output on a probe batch. The loaded model is
  ``head(F1(x))`` with the head a regular ``nn.Linear`` (see :class:`ScriptedFeatureNet`).
- **ONNX** through ``onnx2torch`` (optional extra ``drmguard[onnx]``): a ``torch.fx``
  GraphModule whose final ``Gemm`` became an ``nn.Linear``, so the normal split works.
- **Weights + architecture**: ``arch="module:factory"`` (a module importable from the current
  directory or PYTHONPATH; ``factory()`` or ``factory(num_outputs=K)``) or a registry name, and
  a weights file: safetensors, or a plain ``torch.save`` state dict read with
  ``torch.load(weights_only=True)`` (which refuses anything but tensors and containers).
- **Pickled modules** (``torch.save(model)``) only with ``allow_pickle=True``: unpickling can run
  arbitrary code, so by default nothing in such a file is executed.

Input geometry and normalisation come from the file (``model.json``; the ``drmguard.json``
record that :func:`export_torchscript` / :func:`export_onnx` embed; a static ONNX input shape)
or from the caller (``input_size``, ``mean``, ``std``). Files exported by drmguard contain the
normalisation, so they take images in [0, 1] (mean 0, std 1).
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import os
import struct
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..errors import DrmguardError, MissingInputSize, first_line
from ..tasks import Task, get_task
from .registry import ARCHS, build_model
from .split import RegressionModel

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
EXPORT_FILE = "model.pt"  # TorchScript file of a directory whose arch is "torchscript"
EXPORT_META = "drmguard.json"  # extra file in TorchScript exports, metadata key in ONNX ones
ONNX_OPSET = 17  # the newest opset onnx2torch converts completely
PROBE_BATCH = 4
_ONNX_HINT = "install the ONNX extra: pip install 'drmguard[onnx]'"


# ------------------------------------------------------------------------------------------
# The native directory format
# ------------------------------------------------------------------------------------------
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
        raise DrmguardError(f"{out} already holds a model; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
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
        raise DrmguardError(f"{p} holds a '{rec}' model, not '{arch}'; omit --arch")
    weights = p / MODEL_WEIGHTS
    if not weights.exists():
        raise DrmguardError(f"{p} has {MODEL_JSON} but no {MODEL_WEIGHTS}")
    if rec in ARCHS:
        net = build_model(rec, meta["num_outputs"], c, **meta.get("arch_kwargs", {}))
    elif _is_factory_spec(rec):
        if arch is None:
            raise DrmguardError(f"{p} was built by your code '{rec}'; pass --arch {rec} to import "
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


# ------------------------------------------------------------------------------------------
# Recognising a file
# ------------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike) -> str:
    """One of drmguard, torchscript, pickle, onnx, safetensors, or unknown (by content)."""
    p = Path(path)
    if p.is_dir() or p.name == MODEL_JSON or p.suffix == ".json":
        return "drmguard"
    with open(p, "rb") as f:
        head = f.read(16)
    size = p.stat().st_size
    if not head:
        raise DrmguardError(f"model file {p} is empty")
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "pickle" if any(n.endswith("data.pkl") for n in names) else "unknown"
    if head[0] == 0x80:  # pickle protocol marker (legacy torch.save, plain pickle)
        return "pickle"
    if len(head) >= 9:
        n = struct.unpack("<Q", head[:8])[0]
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if p.suffix.lower() == ".onnx" or head[0] == 0x08:  # protobuf field 1 (ir_version)
        return "onnx"
    return "unknown"


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
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # any unpickling failure
        raise DrmguardError(f"cannot unpickle {path}: {first_line(e)}") from None
    if not isinstance(obj, torch.nn.Module):
        raise DrmguardError(f"{path} holds a {type(obj).__name__}, not a model")
    return obj


# ------------------------------------------------------------------------------------------
# Geometry: input size, channels, normalisation
# ------------------------------------------------------------------------------------------
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
        raise DrmguardError(f"--std values must be positive, got {vals}")
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


# ------------------------------------------------------------------------------------------
# Wrapping any nn.Module
# ------------------------------------------------------------------------------------------
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
            if "feature-layer" in str(e):
                linears = _linear_names(net)
                raise DrmguardError(
                    f"the output of {source} does not come from a final linear layer; pass "
                    f"--feature-layer NAME naming the layer whose input is the feature vector "
                    f"(linear layers: {', '.join(linears) or 'none'})") from None
            raise DrmguardError(f"{source}: {e}") from None
        except Exception as e:  # the net failed on the probe input
            last_error = e
            continue
        _check_explicit_head(model, feature_layer, source, notes)
        return model.eval()
    what = f"{c}×{h}×{w}" if c else f"3×{h}×{w} or 1×{h}×{w}"
    raise DrmguardError(f"{source} fails on a {what} input ({first_line(last_error)}); pass "
                        "--input-size C,H,W with the size it expects")


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
                            f"({', '.join(t.target_names)}); pass --task generic or another model")
    return t


# ------------------------------------------------------------------------------------------
# TorchScript
# ------------------------------------------------------------------------------------------
class ScriptedFeatureNet(nn.Module):
    """F = fc ∘ features for a TorchScript model: ``features`` is the scripted model with its
    head layer turned into the (frozen) identity, so it returns F1(x); ``fc`` is a regular
    ``nn.Linear`` holding the head's W and b, on which forward hooks work."""

    def __init__(self, features: torch.jit.ScriptModule, fc: nn.Linear):
        super().__init__()
        self.features = features
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: backward through a loaded TorchScript module corrupts memory on strided
        # (e.g. permuted channels-last) inputs in torch 2.14 — seen with unmodified files too
        return self.fc(self.features(x.contiguous()).flatten(1))

    def __deepcopy__(self, memo):
        """A copy whose parameters are autograd leaves (``copy.deepcopy`` of a ScriptModule
        gives cloned, non-leaf parameters, which an optimiser refuses): the scripted part is
        copied by serialising it."""
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(self.features, buf)
            p = next(self.features.parameters(), None)
            features = torch.jit.load(io.BytesIO(buf.getvalue()),
                                      map_location=p.device if p is not None else "cpu")
        for (_, new), (_, old) in zip(features.named_parameters(),
                                      self.features.named_parameters()):
            new.requires_grad_(old.requires_grad)
        twin = ScriptedFeatureNet(features, copy.deepcopy(self.fc, memo))
        memo[id(self)] = twin
        return twin.train(self.training)


def _jit_load(source, name: str) -> tuple[torch.jit.ScriptModule, dict]:
    """Load TorchScript from a path or bytes; returns (module in eval mode, drmguard record)."""
    extra = {EXPORT_META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
            module = torch.jit.load(f, map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise DrmguardError(f"cannot load TorchScript {name}: {first_line(e)}") from None
    info = {}
    if extra.get(EXPORT_META):
        try:
            info = json.loads(extra[EXPORT_META])
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
    return module.eval(), info if isinstance(info, dict) else {}


def _identity_head_copy(data: bytes, name: str):
    """A fresh copy of the scripted model whose linear layer ``name`` computes the identity.

    (Loaded again from the file's bytes: ``copy.deepcopy`` of a ScriptModule gives parameters
    that are not autograd leaves, which an optimiser refuses.)
    """
    f, _ = _jit_load(data, name)
    layer = dict(f.named_modules())[name]
    m = layer.weight.shape[1]
    layer.weight = nn.Parameter(torch.eye(m), requires_grad=False)
    if getattr(layer, "bias", None) is not None:
        layer.bias = nn.Parameter(torch.zeros(m), requires_grad=False)
    return f.eval()


def load_torchscript(path: str | os.PathLike, input_size=None, mean=None, std=None,
                     feature_layer: str | None = None) -> tuple[RegressionModel, dict]:
    """A TorchScript file as a RegressionModel (head found by the identity trial)."""
    p = Path(path)
    data = p.read_bytes()
    module, info = _jit_load(data, p.name)
    notes: list[str] = []
    c, hw, mean, std = _geometry(input_size, mean, std, info, f"TorchScript model {p.name}",
                                 notes, "pass --input-size H,W (or C,H,W)")
    feature_layer = feature_layer or info.get("head")
    # the output on a probe batch, trying 3 then 1 channels when the channel count is unknown
    y, last_error = None, None
    for ch in ([c] if c else [3, 1]):
        m = torch.tensor(_norm_values(mean, ch, "mean") or [0.0] * ch).view(1, -1, 1, 1)
        s = torch.tensor(_norm_values(std, ch, "std") or [1.0] * ch).view(1, -1, 1, 1)
        x = (_probe(ch, hw) - m) / s
        try:
            with torch.no_grad():
                y = module(x)
            c = ch
            break
        except Exception as e:
            last_error = e
    if y is None:
        what = f"{c}×{hw[0]}×{hw[1]}" if c else f"3×{hw[0]}×{hw[1]} or 1×{hw[0]}×{hw[1]}"
        raise DrmguardError(f"TorchScript model {p.name} fails on a {what} input "
                            f"({first_line(last_error)}); pass --input-size C,H,W")
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != PROBE_BATCH:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise DrmguardError(f"TorchScript model {p.name} must return a B×K tensor, got {got}")
    k = y.shape[1]
    linears = [n for n, mod in module.named_modules()
               if getattr(mod, "original_name", None) == "Linear" and n]
    if feature_layer is not None:
        if feature_layer not in linears:
            raise DrmguardError(f"TorchScript model {p.name} has no linear layer "
                                f"'{feature_layer}'; its linear layers: "
                                f"{', '.join(linears) or 'none'}")
        candidates = [feature_layer]
    else:
        mods = dict(module.named_modules())
        candidates = [n for n in reversed(linears) if mods[n].weight.shape[0] == k]
    for name in candidates:
        head_src = dict(module.named_modules())[name]
        w = head_src.weight.detach().clone()
        b = getattr(head_src, "bias", None)
        feats = _identity_head_copy(data, name)
        try:
            with torch.no_grad():
                h = feats(x).flatten(1)
        except Exception:
            continue
        if h.shape != (PROBE_BATCH, w.shape[1]):
            continue
        with torch.no_grad():
            y2 = h @ w.T + (b.detach() if b is not None else 0)
        if torch.allclose(y2, y, rtol=1e-4, atol=1e-5 * (1 + float(y.abs().max()))):
            fc = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            with torch.no_grad():
                fc.weight.copy_(w)
                if b is not None:
                    fc.bias.copy_(b.detach())
            net = ScriptedFeatureNet(feats, fc)
            model = RegressionModel(net, hw, c, _norm_values(mean, c, "mean"),
                                    _norm_values(std, c, "std"), head="fc").eval()
            meta = _foreign_meta(model, "torchscript", p, info, notes)
            meta["scripted_head"] = name
            return model, meta
    if feature_layer is not None:
        raise DrmguardError(f"the output of TorchScript model {p.name} is not W·h+b of linear "
                            f"layer '{feature_layer}'; name the layer that produces the output")
    raise DrmguardError(
        f"the output of TorchScript model {p.name} is not produced by a final linear layer "
        f"(tried {', '.join(candidates) or 'no layer: none has ' + str(k) + ' outputs'}); pass "
        "--feature-layer NAME, or export the model to ONNX")


# ------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------
def _import_onnx():
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        msg = f"reading ONNX models needs onnx and onnx2torch; {_ONNX_HINT}"
        raise DrmguardError(msg) from None
    return onnx, convert


def _inline_identity_initializers(proto) -> None:
    """Replace ``Identity`` nodes on initializers (PyTorch's shared-weight dedup) by copies."""
    import onnx

    inits = {i.name: i for i in proto.graph.initializer}
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            proto.graph.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def _onnx_input_info(proto) -> dict:
    """Static C, H, W of the (first non-initializer) input, when recorded."""
    init_names = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise DrmguardError(f"the ONNX model must take one image input, it takes {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise DrmguardError(f"the ONNX model's input has {len(dims)} dimensions; "
                            "an image model takes N×C×H×W")
    vals = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    info = {}
    if vals[1]:
        info["in_channels"] = vals[1]
    if vals[2] and vals[3]:
        info["input_size"] = [vals[2], vals[3]]
    return info


def load_onnx(path: str | os.PathLike, input_size=None, mean=None, std=None,
              feature_layer: str | None = None) -> tuple[RegressionModel, dict]:
    """An ONNX file as a RegressionModel via onnx2torch."""
    onnx, convert = _import_onnx()
    p = Path(path)
    try:
        proto = onnx.load(str(p))
        onnx.checker.check_model(proto)
    except Exception as e:
        raise DrmguardError(f"cannot read ONNX model {p}: {first_line(e)}") from None
    info = _onnx_input_info(proto)
    for prop in proto.metadata_props:
        if prop.key == EXPORT_META:
            try:
                info.update(json.loads(prop.value))
            except json.JSONDecodeError:
                pass
    _inline_identity_initializers(proto)
    notes: list[str] = []
    c, hw, mean, std = _geometry(input_size, mean, std, info, f"ONNX model {p.name}", notes,
                                 "pass --input-size H,W (or C,H,W)")
    try:
        net = _onnx_convert(onnx, convert, proto)
    except Exception as e:
        raise DrmguardError(f"onnx2torch cannot convert {p.name}: {first_line(e)}; export it "
                            f"with opset {ONNX_OPSET} (torch.onnx.export(..., dynamo=False, "
                            f"opset_version={ONNX_OPSET})) or as TorchScript") from None
    model = _wrap_module(net, (c, *hw), mean, std, feature_layer or info.get("head"),
                         f"ONNX model {p.name}", notes)
    return model, _foreign_meta(model, "onnx", p, info, notes)


def _onnx_convert(onnx, convert, proto):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return convert(proto)
        except NotImplementedError:
            opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                        default=0)
            if opset <= ONNX_OPSET:
                raise
            from onnx import version_converter

            return convert(version_converter.convert_version(proto, ONNX_OPSET))


# ------------------------------------------------------------------------------------------
# Weights + user architecture
# ------------------------------------------------------------------------------------------
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
        raise DrmguardError(f"cannot import module '{mod_name}' for --arch {spec}: {e} "
                            "(it must be in the current directory or on PYTHONPATH)") from None
    factory = module
    for part in fn_name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise DrmguardError(f"module '{mod_name}' has no '{fn_name}' (from --arch {spec})")
    if not callable(factory):
        raise DrmguardError(f"--arch {spec}: '{fn_name}' is not callable")
    kw = dict(kwargs or {})
    if num_outputs is not None:
        kw["num_outputs"] = int(num_outputs)
    try:
        net = factory(**kw)
    except TypeError as e:
        raise DrmguardError(f"--arch {spec}: calling {fn_name}({', '.join(f'{k}=' for k in kw)})"
                            f" failed: {e}") from None
    if not isinstance(net, nn.Module):
        raise DrmguardError(f"--arch {spec} returned a {type(net).__name__}, not an nn.Module")
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
                            "safetensors, or load a pickled module with --allow-pickle") from None
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
        raise DrmguardError(f"--arch {arch}: pass --input-size H,W (or C,H,W) for the model")
    if arch in ARCHS:
        if num_outputs is None and isinstance(state.get("fc.weight"), torch.Tensor):
            num_outputs = state["fc.weight"].shape[0]
        if num_outputs is None:
            raise DrmguardError(f"--arch {arch} needs the number of outputs: pass --task")
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
        raise DrmguardError(f"{p} does not match --arch {arch}: {first_line(e)}") from None
    if mean is None and std is None:
        notes.append(f"no input normalisation given for {p.name}: assuming the model takes "
                     "images in [0, 1]; pass --mean/--std if it expects normalised input")
    model = _wrap_module(net.eval(), size, mean, std, feature_layer, f"--arch {arch}", notes)
    meta = _foreign_meta(model, "arch", p, {}, notes)
    meta["arch"] = arch
    return model, meta


# ------------------------------------------------------------------------------------------
# Metadata of foreign models
# ------------------------------------------------------------------------------------------
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
                        target_names=t.get("target_names") if t["name"] == "generic" else None)
    except DrmguardError:
        return None


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------
def _export_record(model: RegressionModel, task: Task | None) -> dict:
    c = model.in_channels
    return {"format": "drmguard-export", "drmguard_version": __version__,
            "in_channels": c, "input_size": list(model.input_size),
            "mean": [0.0] * c, "std": [1.0] * c, "normalisation_included": True,
            "original_mean": model.mean.flatten().tolist(),
            "original_std": model.std.flatten().tolist(),
            "num_outputs": model.num_outputs,
            "task": task.to_dict() if task is not None else None}


class _CpuEval:
    """Context: the model on CPU in eval mode, restored afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        p = next(self.model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.training = self.model.training
        self.model.cpu().eval()
        return self.model

    def __exit__(self, *exc):
        self.model.to(self.device).train(self.training)


def export_torchscript(model: RegressionModel, path: str | os.PathLike,
                       task: Task | None = None) -> Path:
    """Trace ``model`` (normalisation included: the file takes images in [0, 1]) to ``path``.

    The file embeds a ``drmguard.json`` record (input size, channels, task) that
    :func:`load_model` reads back, so no options are needed to load it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with _CpuEval(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _probe(model.in_channels, model.input_size),
                                 check_trace=False)
        torch.jit.save(traced, str(p),
                       _extra_files={EXPORT_META: json.dumps(_export_record(model, task))})
    return p


def export_onnx(model: RegressionModel, path: str | os.PathLike, task: Task | None = None,
                opset: int = ONNX_OPSET) -> Path:
    """Export ``model`` to ONNX (normalisation included, dynamic batch, ``drmguard.json``
    metadata), in a form onnx2torch reads back (legacy exporter, opset 17)."""
    onnx, _ = _import_onnx()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with _CpuEval(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (_probe(model.in_channels, model.input_size),), str(p),
                          dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["output"],
                          dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}})
    proto = onnx.load(str(p))
    _inline_identity_initializers(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = EXPORT_META, json.dumps(_export_record(model, task))
    onnx.save(proto, str(p))
    return p


# ------------------------------------------------------------------------------------------
# One entry point
# ------------------------------------------------------------------------------------------
def load_model(path: str | os.PathLike | None, allow_pickle: bool = False,
               arch: str | None = None, weights: str | os.PathLike | None = None,
               input_size=None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, feature_layer: str | None = None,
               task: str | Task | None = None,
               num_outputs: int | None = None) -> tuple[RegressionModel, dict]:
    """Load any supported model (see the module docstring) as a :class:`RegressionModel`.

    Returns ``(model, meta)``; ``meta`` follows ``model.json`` (``source_format`` says where the
    model came from; ``notes`` lists assumptions worth showing the user). ``task`` (a name or a
    Task) checks the output width and is recorded in ``meta["task"]``; ``num_outputs`` is passed
    to a ``module:factory`` and checked against the model.
    """
    if path is None and weights is None:
        raise DrmguardError("no model given")
    p = Path(path) if path is not None else Path(weights)
    if not p.exists():
        raise DrmguardError(f"model path {p} does not exist")
    if weights is not None and not Path(weights).exists():
        raise DrmguardError(f"weights file {weights} does not exist")
    if weights is not None and arch is None:
        raise DrmguardError("--weights needs --arch (the architecture the weights belong to)")
    fmt = detect_format(p)
    if arch is not None and fmt != "drmguard":
        k = num_outputs if num_outputs is not None else _task_dim(task)
        model, meta = load_arch_weights(arch, weights or p, input_size, mean, std, feature_layer,
                                        k if arch in ARCHS else num_outputs)
    elif fmt == "drmguard":
        for name, val in (("--input-size", input_size), ("--mean", mean), ("--std", std),
                          ("--weights", weights)):
            if val is not None:
                raise DrmguardError(f"{p} is a drmguard model, which records its own input "
                                    f"size and normalisation; drop {name}")
        model, meta = load_drmguard_model(p, arch=arch, feature_layer=feature_layer)
    elif fmt == "torchscript":
        model, meta = load_torchscript(p, input_size, mean, std, feature_layer)
    elif fmt == "onnx":
        model, meta = load_onnx(p, input_size, mean, std, feature_layer)
    elif fmt == "pickle":
        net = load_pickled_module(p, allow_pickle)
        notes: list[str] = []
        c, hw, mean, std = _geometry(input_size, mean, std, {}, f"pickled model {p.name}",
                                     notes, "pass --input-size H,W (or C,H,W)")
        model = _wrap_module(net.eval(), (c, *hw), mean, std, feature_layer,
                             f"pickled model {p.name}", notes)
        meta = _foreign_meta(model, "pickle", p, {}, notes)
    elif fmt == "safetensors":
        raise DrmguardError(f"{p} holds only weights; pass --arch module:factory (your model "
                            f"code) or a built-in architecture ({', '.join(ARCHS)})")
    else:
        raise DrmguardError(f"cannot recognise {p}: not a drmguard model directory, TorchScript, "
                            "ONNX, safetensors or pickle file (is it truncated?)")
    t = _check_outputs(model, task, num_outputs, f"model {p.name}")
    if t is not None:
        meta["task"] = t.to_dict()
    return model, meta


def _task_dim(task) -> int | None:
    if isinstance(task, Task):
        return task.dim
    if task in ("gaze", "headpose"):
        return get_task(task).dim
    return None
