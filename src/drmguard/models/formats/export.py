"""Export to TorchScript and ONNX (the file records input size, channels, task)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ... import __version__
from ...tasks import Task
from ..split import RegressionModel
from .common import EXPORT_META, ONNX_OPSET, _probe
from .onnx_format import _import_onnx, _inline_identity_initializers


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
