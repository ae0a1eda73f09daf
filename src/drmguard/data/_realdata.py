"""Shared plumbing of the real-dataset loaders (MPIIFaceGaze, ColumbiaGaze, Biwi, Pandora).

Each loader module owns its format; this module only holds what all four need: option parsing
for ``name:PATH?key=value`` specs (values arrive as strings), tolerant directory walking (skips
``.DS_Store``, ``__MACOSX``, AppleDouble ``._*`` files), image decoding to RGB with clear
errors, square crops that may leave the frame (padded with black), and the final assembly of an
:class:`~drmguard.data.base.ArrayDataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DrmguardError
from ..utils import progress_bar
from .base import ArrayDataset

_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"}


# --- options -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Opt:
    """One loader option: default value, value type and (optionally) the allowed choices."""

    default: Any
    kind: type = str
    choices: tuple | None = None
    help: str = ""


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def parse_options(dataset: str, options: dict, spec: dict[str, Opt]) -> dict:
    """Check and convert loader options (strings from a query string, or Python values)."""
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise DrmguardError(f"{dataset}: unknown option(s) {', '.join(unknown)}; "
                            f"accepted: {', '.join(sorted(spec))}")
    out = {}
    for key, opt in spec.items():
        value = options.get(key, opt.default)
        if value is not None and not isinstance(value, opt.kind):
            value = _convert(dataset, key, value, opt.kind)
        if opt.choices is not None and value not in opt.choices:
            raise DrmguardError(f"{dataset}: option {key}={value!r} is not one of "
                                f"{', '.join(map(str, opt.choices))}")
        out[key] = value
    return out


def _convert(dataset: str, key: str, value, kind: type):
    try:
        if kind is bool:
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if kind is int and isinstance(value, str):
            return int(value.strip())
        return kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DrmguardError(f"{dataset}: option {key}={value!r} is not a valid "
                            f"{kind.__name__}") from None


def parse_size(size) -> tuple[int, int] | None:
    """``None`` | int | (H, W) | "64" | "64x48" -> (H, W) or None."""
    if size is None or size == "" or size == 0:
        return None
    if isinstance(size, str):
        parts = size.lower().replace("×", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise DrmguardError(f"image size {size!r} is not N or HxW") from None
        size = nums[0] if len(nums) == 1 else tuple(nums)
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise DrmguardError(f"image size must be a positive int or (H, W), got {size}")
    return size


def parse_id_list(text: str | None) -> set[int] | None:
    """"p00,p03" or "0,3" or "1-5,9" -> {ids}; empty -> None (all)."""
    if text is None or str(text).strip() == "":
        return None
    ids: set[int] = set()
    for part in str(text).split(","):
        part = part.strip().lstrip("pP")
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                ids.update(range(int(a), int(b.lstrip("pP")) + 1))
            else:
                ids.add(int(part))
        except ValueError:
            raise DrmguardError(f"subject list {text!r} must hold integers such as 0,3 or "
                                "1-5") from None
    return ids


# --- files -------------------------------------------------------------------------------
def is_junk(path: Path) -> bool:
    """Finder/Windows metadata and AppleDouble files that zips often carry."""
    return (path.name in _JUNK_NAMES or path.name.startswith("._")
            or "__MACOSX" in path.parts)


def require_dir(path, dataset: str) -> Path:
    root = Path(os.path.expanduser(str(path)))
    if not root.exists():
        raise DrmguardError(f"{dataset}: folder {root} does not exist")
    if not root.is_dir():
        raise DrmguardError(f"{dataset}: {root} is not a folder")
    return root


def subdirs(path: Path) -> list[Path]:
    """Sorted non-junk sub-folders."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not is_junk(p))


def read_text_lines(path: Path) -> list[str]:
    """Lines with trailing whitespace stripped and blank lines dropped (any newline style)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DrmguardError(f"cannot read {path}: {e.strerror or e}") from None
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()]


def floats(tokens: Iterable[str], where: str) -> np.ndarray:
    try:
        return np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError as e:
        raise DrmguardError(f"corrupt label file {where}: {e}") from None


# --- images ------------------------------------------------------------------------------
def open_rgb(path: Path, min_height: int | None = None) -> Image.Image:
    """Decode an image file to an RGB PIL image (grey and RGBA converted).

    ``min_height``: for JPEGs, let the decoder downscale by a power of two while keeping at
    least this many rows (much faster for 5184×3456 frames that end up as small crops).
    """
    try:
        img = Image.open(path)
        if min_height is not None and img.format == "JPEG" and img.height > min_height:
            w, h = img.size
            img.draft("RGB", (max(1, int(np.ceil(w * min_height / h))), int(min_height)))
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DrmguardError(f"cannot decode image {path}: {e}") from None


def crop_resize(img: Image.Image, center: tuple[float, float], side: float,
                out_hw: tuple[int, int]) -> np.ndarray:
    """Square crop of ``side`` pixels centred at ``center`` (x, y), resized to ``out_hw``.

    Parts of the box outside the image are black, so the head stays centred at frame borders.
    """
    half = side / 2.0
    box = tuple(int(round(v)) for v in (center[0] - half, center[1] - half,
                                        center[0] + half, center[1] + half))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise DrmguardError(f"crop box {box} is empty")
    return resize_array(img.crop(box), out_hw)


def resize_array(img: Image.Image, out_hw: tuple[int, int] | None) -> np.ndarray:
    """PIL image -> uint8 H×W×3 array, resized (bilinear, antialiased) when ``out_hw`` is set."""
    if out_hw is not None and (img.height, img.width) != tuple(out_hw):
        img = img.resize((out_hw[1], out_hw[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def bgr_to_rgb(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr[..., ::-1])


# --- assembly ----------------------------------------------------------------------------
class Collector:
    """Accumulates (image, target, subject) rows and builds the ArrayDataset at the end."""

    def __init__(self, dataset: str, source: Path):
        self.dataset, self.source = dataset, source
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.subjects: list[int] = []
        self.skipped: dict[str, int] = {}

    def add(self, image: np.ndarray, target, subject: int) -> None:
        self.images.append(image)
        self.targets.append(np.asarray(target, dtype=np.float32))
        self.subjects.append(int(subject))

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def build(self, task: str, target_names: list[str], meta: dict) -> ArrayDataset:
        if not self.images:
            why = "; ".join(f"{n} {r}" for r, n in self.skipped.items())
            raise DrmguardError(f"{self.dataset}: no samples found in {self.source}"
                                + (f" ({why})" if why else ""))
        shapes = {im.shape for im in self.images}
        if len(shapes) > 1:
            raise DrmguardError(f"{self.dataset}: images of different sizes {sorted(shapes)}; "
                                "pass a size to resize them")
        meta = {"dataset": self.dataset, "source": str(self.source), **meta}
        if self.skipped:
            meta["skipped"] = dict(self.skipped)
        return ArrayDataset(np.stack(self.images), np.stack(self.targets), task,
                            np.asarray(self.subjects, dtype=np.int64), list(target_names), meta)


def track(iterable, desc: str, enabled: bool, total: int | None = None):
    """Iterate with a tqdm bar (silenced by enabled=False or DRMGUARD_QUIET=1)."""
    return progress_bar(iterable, total=total, desc=desc, enabled=enabled)


def limit_per_subject(items: list, key: Callable[[Any], int], limit: int) -> list:
    """Keep at most ``limit`` items per subject (in order); 0 keeps all."""
    if not limit:
        return items
    seen: dict[int, int] = {}
    out = []
    for it in items:
        k = key(it)
        if seen.get(k, 0) < limit:
            seen[k] = seen.get(k, 0) + 1
            out.append(it)
    return out
