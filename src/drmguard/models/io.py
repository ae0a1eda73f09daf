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

Where each format lives (``models/formats/``): ``native.py`` (the directory format, saving),
``sniff.py`` (recognising a file), ``torchscript.py``, ``onnx_format.py``, ``pickled.py``,
``factory.py`` (your architecture + a weights file), ``export.py`` (TorchScript / ONNX out),
``common.py`` (geometry, normalisation, wrapping any module). This module is the entry point:
:func:`load_model` recognises the format and hands the file to that format's loader
(:data:`LOADERS`); every name the formats define is importable from here as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DrmguardError
from ..tasks import Task, get_task
from .formats.common import (EXPORT_FILE, EXPORT_META, MODEL_JSON, MODEL_WEIGHTS,  # noqa: F401
                             ONNX_OPSET, PROBE_BATCH, _check_explicit_head, _check_outputs,
                             _foreign_meta, _geometry, _json_default, _linear_names,
                             _norm_values, _probe, _wrap_module, parse_input_size,
                             task_from_meta)
from .formats.export import (_CpuEval, _export_record, export_onnx,  # noqa: F401
                             export_torchscript)
from .formats.factory import (_call_factory, _is_factory_spec, _read_safetensors,  # noqa: F401
                              load_arch_weights, read_state_dict)
from .formats.native import (_new_model_dir, load_drmguard_model, model_meta,  # noqa: F401
                             read_meta, save_model, save_model_any)
from .formats.onnx_format import (_import_onnx, _inline_identity_initializers,  # noqa: F401
                                  _onnx_convert, _onnx_input_info, load_onnx)
from .formats.pickled import load_pickle, load_pickled_module  # noqa: F401
from .formats.sniff import detect_format, is_pickle_file  # noqa: F401
from .formats.torchscript import (ScriptedFeatureNet, _identity_head_copy,  # noqa: F401
                                  _jit_load, load_torchscript)
from .registry import ARCHS
from .split import RegressionModel


@dataclass(frozen=True)
class LoadRequest:
    """What the caller of :func:`load_model` asked for, handed to a format's loader."""

    allow_pickle: bool = False
    arch: str | None = None
    weights: str | os.PathLike | None = None
    input_size: object = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    feature_layer: str | None = None
    task: str | Task | None = None
    num_outputs: int | None = None


def _load_factory(p: Path, r: LoadRequest):
    k = r.num_outputs if r.num_outputs is not None else _task_dim(r.task)
    return load_arch_weights(r.arch, r.weights or p, r.input_size, r.mean, r.std,
                             r.feature_layer, k if r.arch in ARCHS else r.num_outputs)


def _load_native(p: Path, r: LoadRequest):
    for name, val in (("`input_size`", r.input_size), ("`mean`", r.mean), ("`std`", r.std),
                      ("`weights`", r.weights)):
        if val is not None:
            raise DrmguardError(f"{p} is a drmguard model, which records its own input "
                                f"size and normalisation; drop {name}")
    return load_drmguard_model(p, arch=r.arch, feature_layer=r.feature_layer)


def _weights_only(p: Path, r: LoadRequest):
    raise DrmguardError(f"{p} holds only weights; pass `arch` module:factory (your model "
                        f"code) or a built-in architecture ({', '.join(ARCHS)})")


# format (as :func:`detect_format` names it; "factory" when an architecture is given for a
# file that is not a drmguard model) -> loader(path, request) -> (RegressionModel, meta)
LOADERS: dict[str, Callable[[Path, LoadRequest], tuple]] = {
    "factory": _load_factory,
    "drmguard": _load_native,
    "torchscript": lambda p, r: load_torchscript(p, r.input_size, r.mean, r.std,
                                                 r.feature_layer),
    "onnx": lambda p, r: load_onnx(p, r.input_size, r.mean, r.std, r.feature_layer),
    "pickle": lambda p, r: load_pickle(p, r.allow_pickle, r.input_size, r.mean, r.std,
                                       r.feature_layer),
    "safetensors": _weights_only,
}


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
        raise DrmguardError("`weights` needs `arch` (the architecture the weights belong to)")
    fmt = detect_format(p)
    if arch is not None and fmt != "drmguard":
        fmt = "factory"
    if fmt not in LOADERS:
        raise DrmguardError(f"cannot recognise {p}: not a drmguard model directory, TorchScript, "
                            "ONNX, safetensors or pickle file (is it truncated?)")
    request = LoadRequest(allow_pickle, arch, weights, input_size, mean, std, feature_layer,
                          task, num_outputs)
    model, meta = LOADERS[fmt](p, request)
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
