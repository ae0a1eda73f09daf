"""Small shared helpers: seeding, devices, progress bars, provenance."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def memory_format_for(device: torch.device) -> torch.memory_format:
    """Channels-last on CUDA, plain NCHW elsewhere.

    On an H100, channels-last (cuDNN's NHWC kernels, no layout conversions around each
    convolution) makes a DRMGuard search step at the paper profile 1.6× (gaze, 224 px) to 1.8×
    (head pose, 112 px) faster (``results/scan_step_paper_*.json``; 1.5× measured through
    ``scan`` itself). Used by the DRMGuard scan only: training at the paper profile is bound by
    its CPU-side batches, and an end-to-end check did not show a gain there. On CPU it stays
    off: torch 2.14.1's CPU backward through channels-last input corrupted the heap at one
    thread (see ``float_images``).
    """
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@contextlib.contextmanager
def device_layout(model: torch.nn.Module, device: torch.device):
    """The model's 4-D weights in :func:`memory_format_for` ``(device)`` for the duration
    (yields that format, for the input batches); plain NCHW again afterwards, so the model
    saves (safetensors needs contiguous tensors) and runs on CPU as before."""
    fmt = memory_format_for(device)
    if fmt == torch.contiguous_format:
        yield fmt
        return
    try:
        model.to(memory_format=fmt)
    except (RuntimeError, TypeError):  # e.g. a scripted model that cannot change layout
        yield torch.contiguous_format
        return
    try:
        yield fmt
    finally:
        model.to(memory_format=torch.contiguous_format)


def default_cache_dir() -> str:
    """The cache of model zoos and defence runs: ``$DRMGUARD_CACHE`` when set, else
    ``.drmguard-cache`` in the current directory (read at call time; every command uses it)."""
    return os.environ.get("DRMGUARD_CACHE") or ".drmguard-cache"


def progress_bar(iterable=None, total=None, desc: str = "", enabled: bool = True, **kw):
    """A tqdm bar that can be silenced (``enabled=False``) or by DRMGUARD_QUIET=1."""
    disable = (not enabled) or os.environ.get("DRMGUARD_QUIET") == "1"
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False,
                dynamic_ncols=True, **kw)


def git_commit(default: str = "unknown") -> str:
    """Commit hash of the source tree drmguard runs from (``-dirty`` if the package's own
    files differ from it; results, docs and other files written beside it do not count)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return default
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return default


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Short hash of the drmguard package's Python sources as they run now (12 hex digits).

    Stamped on every cached experiment run: unlike the commit it ignores docs, results and
    tests, so it changes exactly when the code that computes a run might."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]
