"""TorchScript files: the head found by the identity trial (see :class:`ScriptedFeatureNet`)."""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ...errors import DrmguardError, first_line
from ..split import RegressionModel
from .common import EXPORT_META, PROBE_BATCH, _foreign_meta, _geometry, _norm_values, _probe


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
                                 notes, "pass `input_size` H,W (or C,H,W)")
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
                            f"({first_line(last_error)}); pass `input_size` C,H,W")
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
        "`feature_layer` NAME, or export the model to ONNX")
