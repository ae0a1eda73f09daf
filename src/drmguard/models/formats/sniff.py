"""Recognising a model file by its content, not its name."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from ...errors import DrmguardError
from .common import MODEL_JSON


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
