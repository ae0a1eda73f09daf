"""A labelled image grid of a dataset sample, for eyeballing data before training on it.

Gaze tiles carry an arrow from the image centre along the gaze direction projected to the image
(the camera looks along +z, image x right and y down, as in :mod:`drmguard.tasks`); head-pose
tiles carry the head's three rotated axes (red x, green y, blue forward), with the rotation
convention of :mod:`drmguard.data.synthetic`; other tasks just print their target values.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DrmguardError
from ..tasks import gaze_to_vector
from .base import ArrayDataset


def preview_grid(ds: ArrayDataset, out_png: str, n: int = 16, seed: int = 0) -> str:
    """Write a grid of ``n`` randomly chosen (seeded) images with their labels to ``out_png``.

    Returns the path written. Existing files are overwritten; callers decide policy.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if len(ds) == 0:
        raise DrmguardError("cannot preview an empty dataset")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DrmguardError(f"number of preview images must be a positive integer, got {n!r}")
    n = min(int(n), len(ds))
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows), squeeze=False)
    names = ds.target_names or [f"y{i}" for i in range(ds.target_dim)]
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        img = ds.images[i]
        h, w = img.shape[:2]
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img,
                  cmap="gray" if img.shape[2] == 1 else None, interpolation="nearest")
        t = ds.targets[i]
        if ds.task == "gaze" and len(t) == 2:
            _draw_gaze(ax, t, w, h)
            title = f"yaw {np.rad2deg(t[0]):+.1f}°\npitch {np.rad2deg(t[1]):+.1f}°"
        elif ds.task == "headpose" and len(t) == 3:
            _draw_axes(ax, t, w, h)
            title = f"y {t[0]:+.0f}° p {t[1]:+.0f}°\nr {t[2]:+.0f}°"
        else:
            title = "\n".join(f"{nm} {val:.3g}" for nm, val in zip(names[:3], t[:3]))
            if len(t) > 3:
                title += " …"
        if ds.subjects is not None:
            title = f"#{i} s{ds.subjects[i]}  " + title
        else:
            title = f"#{i}  " + title
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return str(out_png)


def _draw_gaze(ax, yaw_pitch, w, h) -> None:
    g = gaze_to_vector(np.asarray(yaw_pitch, dtype=np.float64))
    cx, cy, length = w / 2 - 0.5, h / 2 - 0.5, 0.45 * min(w, h)
    ax.arrow(cx, cy, g[0] * length, g[1] * length, color="yellow", width=0.012 * w,
             head_width=0.06 * w, length_includes_head=True)


def _draw_axes(ax, ypr, w, h) -> None:
    from scipy.spatial.transform import Rotation

    yaw, pitch, roll = (float(a) for a in ypr)
    rot = Rotation.from_euler("YXZ", [yaw, -pitch, roll], degrees=True).as_matrix()
    cx, cy, length = w / 2 - 0.5, h / 2 - 0.5, 0.35 * min(w, h)
    # head x (subject's left, image right at zero pose), head up (-y), forward (-z)
    for vec, colour in ((rot @ [1, 0, 0], "red"), (rot @ [0, -1, 0], "lime"),
                        (rot @ [0, 0, -1], "deepskyblue")):
        ax.plot([cx, cx + vec[0] * length], [cy, cy + vec[1] * length], color=colour, lw=1.5)
