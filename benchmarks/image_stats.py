"""Image statistics of the synthetic renderer, before and after texture, against a real face.

For each image size (32, 64 and 224 px) and each source -- the renderer of an earlier commit
(default ``e0d7320``, the last one without texture, checked out with ``git archive`` into a
temporary directory), the renderer of this working tree, and a real face crop (the astronaut
photograph shipped with scikit-image) -- it computes, on the luminance in [0, 1]:

- **gradient**: the mean absolute difference between horizontally and vertically adjacent
  pixels (per pixel, averaged over both directions and all images);
- **slope**: the slope of a least-squares line through log10 power against log10 spatial
  frequency of the radially averaged power spectrum (mean-removed, Hann-windowed images,
  frequencies from 2 cycles per image to Nyquist). Natural images have about -2.

Writes ``results/image_stats.json`` and ``results/image_stats.md``::

    PYTHONPATH=src python benchmarks/image_stats.py [--old-commit e0d7320] [--n 64]

Needs scikit-image for the real photograph (``pip install scikit-image``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (32, 64, 224)
TASKS = ("gaze", "headpose")
# the astronaut's head and shoulders, 224x224 at the photograph's own resolution
REAL_CROP = (slice(0, 224), slice(118, 342))

_RENDER = """
import sys, numpy as np
from drmguard.data.synthetic import synth_gaze, synth_headpose
task, n, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
gen = synth_gaze if task == "gaze" else synth_headpose
np.save(out, gen(n, size=size, subjects=8, seed=0).images)
"""


def luminance(images: np.ndarray) -> np.ndarray:
    """N×H×W×3 uint8 -> N×H×W float64 in [0, 1]."""
    return images.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def mean_abs_gradient(lum: np.ndarray) -> float:
    """Mean absolute difference of adjacent pixels (both directions), N×H×W in [0, 1]."""
    gx = np.abs(np.diff(lum, axis=2)).mean()
    gy = np.abs(np.diff(lum, axis=1)).mean()
    return float((gx + gy) / 2.0)


def spectrum_slope(lum: np.ndarray) -> float:
    """Slope of log power vs log frequency of the radially averaged mean power spectrum."""
    n, h, w = lum.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    x = (lum - lum.mean(axis=(1, 2), keepdims=True)) * win
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    radius = np.rint(np.hypot(fx, fy)).astype(int)
    top = min(h, w) // 2
    sums = np.bincount(radius.ravel(), power.ravel(), minlength=top + 1)[:top + 1]
    counts = np.bincount(radius.ravel(), minlength=top + 1)[:top + 1]
    f = np.arange(2, top + 1)
    slope, _ = np.polyfit(np.log10(f), np.log10(sums[f] / counts[f]), 1)
    return float(slope)


def stats(images: np.ndarray) -> dict:
    lum = luminance(images)
    return {"gradient": round(mean_abs_gradient(lum), 4), "slope": round(spectrum_slope(lum), 2)}


def real_face(size: int) -> np.ndarray:
    """The astronaut's face, resized to size×size with area averaging (1×size×size×3)."""
    try:
        from skimage.data import astronaut
    except ImportError:
        sys.exit("benchmarks/image_stats.py needs scikit-image for its real photograph: "
                 "pip install scikit-image")
    from PIL import Image

    crop = Image.fromarray(astronaut()[REAL_CROP])
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.BOX)
    return np.asarray(crop)[None]


def render(src: Path, task: str, n: int, size: int, tmp: Path) -> np.ndarray:
    """Images from the drmguard package under ``src`` (run in a fresh interpreter)."""
    out = tmp / f"{src.name}-{task}-{size}.npy"
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", _RENDER, task, str(n), str(size), str(out)],
                   check=True, env=env)
    return np.load(out)


def old_source(commit: str, tmp: Path) -> Path:
    """``src/`` of ``commit``, extracted into ``tmp`` with git archive."""
    dest = tmp / "old"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def table(rows: list[dict]) -> str:
    head = ("| size | source | gradient (gaze) | slope (gaze) | gradient (head pose) "
            "| slope (head pose) |\n| --- | --- | --- | --- | --- | --- |\n")
    lines = []
    for r in rows:
        if r["source"] == "real":
            cells = [f"{r['gradient']:.4f}", f"{r['slope']:.2f}"] * 2
        else:
            cells = [f"{r[t]['gradient']:.4f}" if i == 0 else f"{r[t]['slope']:.2f}"
                     for t in TASKS for i in (0, 1)]
        lines.append(f"| {r['size']} | {r['source']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-commit", default="e0d7320")
    ap.add_argument("--n", type=int, default=64, help="synthetic images per task and size")
    ap.add_argument("--out", default=str(ROOT / "results" / "image_stats"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources = {"old": old_source(args.old_commit, tmp), "new": ROOT / "src"}
        for size in SIZES:
            for name, src in sources.items():
                row = {"size": size, "source": name}
                for task in TASKS:
                    row[task] = stats(render(src, task, args.n, size, tmp))
                rows.append(row)
            rows.append({"size": size, "source": "real", **stats(real_face(size))})
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result = {"old_commit": args.old_commit, "commit": commit, "n": args.n,
              "real": "skimage.data.astronaut()[0:224, 118:342], area-resized",
              "definitions": {"gradient": "mean |difference| of adjacent pixels' luminance "
                                          "(0..1), both directions",
                              "slope": "log-log slope of the radially averaged power "
                                       "spectrum, 2 cycles/image to Nyquist"},
              "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(
        f"# Synthetic image statistics (old = {args.old_commit}, new = {commit})\n\n"
        + table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
