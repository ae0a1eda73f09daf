"""Small shared helpers: seeding, devices, progress bars, provenance."""

from __future__ import annotations

import os
import random
import subprocess
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
