"""ONNX files through onnx2torch (the optional extra ``drmguard[onnx]``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from ...errors import DrmguardError, first_line
from ..split import RegressionModel
from .common import EXPORT_META, ONNX_OPSET, _ONNX_HINT, _foreign_meta, _geometry, _wrap_module


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
                                 "pass `input_size` H,W (or C,H,W)")
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
