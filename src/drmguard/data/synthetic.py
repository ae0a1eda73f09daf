"""Built-in synthetic gaze and head-pose datasets: drmguard's default data, generated anywhere.

Both generators ray-cast a small scene of ellipsoids under an orthographic camera, vectorised
in numpy over a chunk of images (small features are computed in per-image windows only), with
edges anti-aliased over one pixel so that sub-pixel motion changes pixel values continuously.
They return an :class:`ArrayDataset` of uint8 RGB images N×S×S×3 (S a multiple of 8, 8..1024).

Frames and angle conventions
----------------------------
Image coordinates run over [-1, 1] in both directions: ``u`` (= camera x) to the right, ``v``
(= camera y) downwards; the camera looks along +z (OpenCV camera frame) and projects
orthographically, ``(x, y, z) -> (u, v)``. A head at zero pose faces the camera (its forward
direction is -z). Head rotations are

    R = Rotation.from_euler("YXZ", [yaw, -pitch, roll])      (intrinsic yaw, pitch, roll)

mapping head-frame vectors to camera-frame vectors. The pitch is negated so that the head's
forward vector ``R @ (0, 0, -1)`` equals ``drmguard.tasks.gaze_to_vector(yaw, pitch)``: the
head-pose and gaze tasks share one convention. Positive yaw turns the face towards the image's
left (the subject's right), positive pitch turns it up, positive roll rotates it clockwise in
the image.

``synth_gaze``
    Normalised-face images in the style of MPIIFaceGaze: a face filling the frame, a small head
    rotation (yaw ±12°, pitch ±10°, roll ±4°) and an eye-in-head rotation (yaw ±18°, pitch ±14°).
    Both eyeballs are spheres behind lid apertures, ray-cast with the iris and pupil centred on
    the gaze direction, so sub-pixel iris shifts change pixel values continuously; the upper lid
    follows the eye's pitch. The label is the gaze in the camera frame, ``g = R_head @ e`` with
    ``e = gaze_to_vector(eye yaw, eye pitch)``, as (yaw, pitch) in radians. The eye-in-head
    rotation carries most of the label's variance, so the head pose alone cannot predict it: a
    model has to read the eyes (and the head pose, which places the eyeball centres).
``synth_headpose``
    A whole head (ellipsoid with skin, hair, eyes, brows, mouth, optional beard and glasses as
    surface texture, plus nose and ear ellipsoids) rotated by yaw ±60°, pitch ±40°, roll ±30°
    (uniform), on a background with a torso. Labels (yaw, pitch, roll) in degrees. Occlusion is
    resolved per pixel: each ray keeps the nearest hit of the head ellipsoid, face texture lives
    only on the head's front half, and the nose and ears are painted over the head with a depth
    test against its surface (the far ear hides behind the head, the buried half of the nose
    stays hidden).

Every subject's identity (skin tone, face shape, eye spacing and size, iris colour, hair colour
and style, brows, nose, mouth, glasses, beard, and its texture) is drawn from its own RNG seeded
by ``(seed, task, subject)``, so subject ``k`` looks the same in every call with the same seed
and subject-wise splits test generalisation to new faces. Per image nuisances: lighting
direction, ambient level and specular strength, light fall-off and an optional soft shadow edge,
colour cast, brightness and contrast, background colours, edges, clutter and texture, small
translation and scale jitter, pupil size, blur and sensor noise (read and shot noise). Same
arguments give byte-identical arrays.

Texture
-------
Since ``SYNTHETIC_VERSION`` 3 the surfaces carry texture, so that image statistics (mean
absolute gradient per pixel, power-spectrum slope) approach those of real face crops
(``benchmarks/image_stats.py``, docs/synthetic.md) and small geometric triggers (WaNet's warp)
change pixel values as they do on photographs. Everything samples one fixed periodic noise
field with a natural-image spectrum (the *atlas*, amplitude ~ 1/f^1.25), low-passed to the
pixel footprint so that detail finer than a pixel averages out instead of aliasing:

- skin grain and reddish blotches, in surface coordinates (they move with the head);
- hair strands (the atlas stretched along the strands) in the hair's and the brows' colour,
  beard stubble; single eyelashes (drawn, not sampled);
- radial iris fibres about the iris centre and a dark limbus (gaze task);
- background texture and clutter rectangles; Blinn-Phong highlights on the skin.

Where a subject's texture lies in the atlas is part of its identity, so its skin, hair and
irises look the same in all its images; only geometry (and hence the labels) and the nuisances
change between them.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import DrmguardError
from ..tasks import gaze_to_vector, vector_to_gaze
from ..utils import progress_bar
from .base import ArrayDataset

__all__ = ["synth_gaze", "synth_headpose", "GAZE_RANGES_DEG", "HEADPOSE_RANGES_DEG"]

#: Half-ranges (degrees) of the uniform distributions behind the gaze labels.
GAZE_RANGES_DEG = {"head_yaw": 12.0, "head_pitch": 10.0, "head_roll": 4.0,
                   "eye_yaw": 18.0, "eye_pitch": 14.0}
#: Half-ranges (degrees) of the uniform head-pose labels.
HEADPOSE_RANGES_DEG = {"yaw": 60.0, "pitch": 40.0, "roll": 30.0}

_MIN_SIZE, _MAX_SIZE = 8, 1024
_CHUNK_PIXELS = 1 << 17  # pixels per chunk: arrays stay cache-sized, numpy overhead amortised
_HEAD_ZOOM = 1.15  # head units -> image units for synth_headpose (the head fills the frame)
# bump whenever the rendered images or labels change: cached zoo models depend on it
SYNTHETIC_VERSION = 3
_TAG = {"gaze": 1, "headpose": 2}  # separates the two generators' random streams
_F = np.float32


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def synth_gaze(n: int, size: int = 32, subjects: int = 20, seed: int = 0,
               progress: bool = False) -> ArrayDataset:
    """``n`` synthetic normalised-face images with gaze labels (yaw, pitch) in radians."""
    _check_args(n, size, subjects, seed)
    per, subj = _params("gaze", n, subjects, seed)
    images = _render_chunks(_render_gaze, per, n, size, seed, "gaze", progress)
    meta = {"source": "synthetic", "generator": "synth_gaze", "size": size, "seed": seed,
            "subjects": subjects, "units": "rad", "ranges_deg": dict(GAZE_RANGES_DEG)}
    return ArrayDataset(images, per["label"], "gaze", subj, ["yaw", "pitch"], meta)


def synth_headpose(n: int, size: int = 32, subjects: int = 20, seed: int = 0,
                   progress: bool = False) -> ArrayDataset:
    """``n`` synthetic head images with head-pose labels (yaw, pitch, roll) in degrees."""
    _check_args(n, size, subjects, seed)
    per, subj = _params("headpose", n, subjects, seed)
    images = _render_chunks(_render_head, per, n, size, seed, "headpose", progress)
    meta = {"source": "synthetic", "generator": "synth_headpose", "size": size, "seed": seed,
            "subjects": subjects, "units": "deg", "euler": "YXZ intrinsic, pitch negated",
            "ranges_deg": dict(HEADPOSE_RANGES_DEG)}
    return ArrayDataset(images, per["label"], "headpose", subj, ["yaw", "pitch", "roll"], meta)


# ---------------------------------------------------------------------------------------------
# argument checks and chunked rendering
# ---------------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_args(n, size, subjects, seed) -> None:
    if not _is_int(n) or n < 1:
        raise DrmguardError(f"number of images must be a positive integer, got {n!r}")
    if not _is_int(size) or size % 8 or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise DrmguardError(f"image size must be a multiple of 8 between {_MIN_SIZE} and "
                            f"{_MAX_SIZE}, got {size!r}")
    if not _is_int(subjects) or subjects < 1:
        raise DrmguardError(f"number of subjects must be a positive integer, got {subjects!r}")
    if not _is_int(seed) or seed < 0:
        raise DrmguardError(f"seed must be a non-negative integer, got {seed!r}")


def _identity(task: str, subject: int, seed: int) -> dict:
    """Subject ``subject``'s looks, from an RNG of its own: the same in every call."""
    rng = np.random.default_rng([seed, _TAG[task], 1, subject])
    ident = _gaze_identity(rng) if task == "gaze" else _head_identity(rng)
    ident.update(_texture_identity(rng))  # drawn last: the earlier looks keep their values
    return ident


def _params(task: str, n: int, subjects: int, seed: int) -> tuple[dict, np.ndarray]:
    """Every image's rendering parameters (float32 arrays with n rows) and subject ids."""
    rng = np.random.default_rng([seed, _TAG[task], 0])
    subj = rng.permutation(np.arange(n) % subjects).astype(np.int64)
    idents = [_identity(task, k, seed) for k in range(subjects)]
    per = {key: np.stack([d[key] for d in idents])[subj] for key in idents[0]}
    per.update(_gaze_pose(rng, n) if task == "gaze" else _head_pose(rng, n))
    per.update(_nuisance(rng, n))
    return {key: np.asarray(val, dtype=_F) for key, val in per.items()}, subj


def _render_chunks(render, per: dict, n: int, size: int, seed: int, task: str,
                   progress: bool) -> np.ndarray:
    """Render ``n`` images chunk by chunk; each chunk's sensor noise has its own seeded stream."""
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    grid = (np.arange(size, dtype=_F) + _F(0.5)) * _F(2.0 / size) - _F(1.0)
    starts = range(0, n, chunk)
    for i, a in enumerate(progress_bar(starts, desc=f"synthesising {task}", enabled=progress,
                                       unit="chunk")):
        b = min(n, a + chunk)
        p = {k: val[a:b] for k, val in per.items()}
        out[a:b] = _camera(render(p, grid), p, np.random.default_rng([seed, _TAG[task], 2, i]))
    return out


# ---------------------------------------------------------------------------------------------
# numeric helpers. Scalar fields are B×H×W, colour images channel-first B×3×H×W (so numpy's
# inner loops run along image rows), per-image values (B,) and colours (B,3).
# ---------------------------------------------------------------------------------------------
def _s(x):
    """(B,) -> (B,1,1) for broadcasting against B×H×W."""
    return x[:, None, None]


def _c(x):
    """(B,3) colours -> (B,3,1,1)."""
    return x[:, :, None, None]


def _fill(colour, shape) -> np.ndarray:
    """A B×3×H×W image of one colour per image; ``colour`` (B,3) or (3,), ``shape`` (B,H,W)."""
    colour = np.asarray(colour, dtype=_F)
    out = np.empty((shape[0], 3) + tuple(shape[1:]), dtype=_F)
    out[:] = _c(colour) if colour.ndim == 2 else colour[None, :, None, None]
    return out


def _cov(sd, px):
    """Coverage from a signed distance (negative inside): a linear ramp one pixel wide."""
    return np.clip(_F(0.5) - sd / px, _F(0.0), _F(1.0))


def _mix(col, target, m):
    """In place ``col <- col + m * (target - col)``; col B×3×H×W, m B×H×W."""
    diff = target - col
    diff *= m[:, None]
    col += diff
    return col


def _ellipse_sd(x, y, ax, ay):
    """Approximate signed distance to an axis-aligned ellipse (first order near its edge)."""
    fx, fy = x / ax, y / ay
    f = fx * fx + fy * fy
    return (f - 1.0) / (2.0 * np.sqrt((fx / ax) ** 2 + (fy / ay) ** 2) + 1e-6)


def _surface_z(x, y, ax, ay, az):
    """Local z of the front (camera-facing at zero pose) of an ellipsoid above local (x, y)."""
    return -az * np.sqrt(np.maximum(1.0 - (x / ax) ** 2 - (y / ay) ** 2, 0.0))


def _rotations(yaw_deg, pitch_deg, roll_deg) -> np.ndarray:
    """(B,3,3) head->camera rotations in this module's convention (see module docstring)."""
    eul = np.stack([yaw_deg, -pitch_deg, roll_deg], axis=1).astype(np.float64)
    return Rotation.from_euler("YXZ", eul, degrees=True).as_matrix().astype(_F)


def _place(centre, rot, scale, local) -> np.ndarray:
    """Camera-frame position (B,3) of head-frame points ``local`` (B,3)."""
    return centre + scale[:, None] * np.einsum("bij,bj->bi", rot, local.astype(_F))


def _light(p) -> np.ndarray:
    """(B,3) unit vectors towards the light, which is on the camera's side (z < 0)."""
    l_vec = np.stack([p["light_x"], p["light_y"], -np.ones_like(p["light_x"])], axis=1)
    return (l_vec / np.linalg.norm(l_vec, axis=1, keepdims=True)).astype(_F)


class _Window:
    """One rectangle of pixels per image, all of the same size, around a per-image centre.

    Small features (eyes, mouth, nose, ears) are rendered on these patches instead of the
    whole frame, which saves most of the work. ``u``/``v`` are the patch's pixel coordinates.
    """

    def __init__(self, grid, cx, cy, half_w, half_h):
        size = len(grid)
        self.rows = self._axis(grid, cy, half_h)
        self.cols = self._axis(grid, cx, half_w)
        self.u = grid[self.cols][:, None, :]
        self.v = grid[self.rows][:, :, None]
        # flat indices into contiguous B×H×W and B×3×H×W arrays (faster than 3-D indexing)
        b = np.arange(len(cx))[:, None, None]
        self._flat3 = (b * size + self.rows[:, :, None]) * size + self.cols[:, None, :]
        bc = b[:, None] * 3 + np.arange(3)[None, :, None, None]
        rows4, cols4 = self.rows[:, None, :, None], self.cols[:, None, None, :]
        self._flat4 = (bc * size + rows4) * size + cols4

    @staticmethod
    def _axis(grid, centre, half) -> np.ndarray:
        size = len(grid)
        half = np.broadcast_to(np.asarray(half, dtype=np.float64), centre.shape)
        n = min(size, int(np.ceil(half.max() * size)) + 3)
        start = np.floor((centre - half + 1.0) * (size / 2.0) - 0.5).astype(np.int64)
        return np.clip(start, 0, size - n)[:, None] + np.arange(n)

    def _flat(self, arr) -> np.ndarray:
        return self._flat3 if arr.ndim == 3 else self._flat4

    def take(self, arr) -> np.ndarray:
        """The window's pixels of a contiguous B×H×W or B×3×H×W array."""
        return np.take(arr.reshape(-1), self._flat(arr))

    def put(self, arr, patch) -> None:
        """Write ``patch`` back into the window's pixels of ``arr`` (contiguous, in place)."""
        assert arr.flags.c_contiguous
        arr.reshape(-1)[self._flat(arr)] = patch


def _surface_window(grid, centre, rot, sc, x0, x1, y0, y1, axes, margin=0.02) -> _Window:
    """A window around the image of the rectangle [x0,x1]×[y0,y1] (head units, per image)
    drawn on the front of the ellipsoid with semi-axes ``axes`` (three (B,) arrays)."""
    pts = []
    for fx in (0.0, 0.5, 1.0):
        for fy in (0.0, 0.5, 1.0):
            x, y = x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)
            local = np.stack([x, y, _surface_z(x, y, *axes)], 1)
            pts.append(_place(centre, rot, sc, local))
    pts = np.stack(pts)
    lo, hi = pts.min(0), pts.max(0)
    return _Window(grid, (lo[:, 0] + hi[:, 0]) / 2, (lo[:, 1] + hi[:, 1]) / 2,
                   (hi[:, 0] - lo[:, 0]) / 2 + margin, (hi[:, 1] - lo[:, 1]) / 2 + margin)


class _Hit:
    """Where the pixels' rays first meet an ellipsoid.

    ``alpha`` coverage, ``depth`` camera z, ``x, y, z`` the hit point in the object's own frame
    divided by its scale (texture is defined in unscaled head units), ``lambert`` the diffuse
    term, ``facing`` the |cosine| between surface normal and viewing direction, ``spec`` a
    Blinn-Phong highlight (exponent 16).
    """

    __slots__ = ("alpha", "depth", "x", "y", "z", "lambert", "facing", "spec")


def _ellipsoid(u, v, centre, rot, axes, scale, light, px, facing=True, shine=False) -> _Hit:
    """Ray-cast one ellipsoid per image: centre (B,3), rotation (B,3,3), semi-axes (B,3) in
    head units times ``scale`` (B,). Pixel rays are parallel to +z (orthographic camera).

    Solves the ray/quadric equation per pixel; the silhouette is the projected ellipse (the
    Schur complement of the quadric's matrix), anti-aliased with a first-order signed distance.
    """
    axes_img = axes * scale[:, None]
    inv = (1.0 / axes_img ** 2).astype(_F)
    q = np.einsum("bij,bj,bkj->bik", rot, inv, rot)
    dx, dy = u - _s(centre[:, 0]), v - _s(centre[:, 1])
    qzz = q[:, 2, 2]
    lin = _s(q[:, 0, 2]) * dx + _s(q[:, 1, 2]) * dy
    f = _s(q[:, 0, 0]) * dx * dx + _s(2 * q[:, 0, 1]) * dx * dy + _s(q[:, 1, 1]) * dy * dy
    f -= lin * lin / _s(qzz)
    m = q[:, :2, :2] - q[:, :2, 2:3] * q[:, 2:3, :2] / qzz[:, None, None]
    g0 = _s(m[:, 0, 0]) * dx + _s(m[:, 0, 1]) * dy
    g1 = _s(m[:, 0, 1]) * dx + _s(m[:, 1, 1]) * dy
    hit = _Hit()
    hit.alpha = _cov((f - 1.0) / (2.0 * np.sqrt(g0 * g0 + g1 * g1) + 1e-6), px)
    t = -(lin + np.sqrt(np.maximum(_s(qzz) * (1.0 - f), 0.0))) / _s(qzz)
    hit.depth = t + _s(centre[:, 2])
    rs = rot / scale[:, None, None]  # local = R^T (p - c) / scale
    hit.x = _s(rs[:, 0, 0]) * dx + _s(rs[:, 1, 0]) * dy + _s(rs[:, 2, 0]) * t
    hit.y = _s(rs[:, 0, 1]) * dx + _s(rs[:, 1, 1]) * dy + _s(rs[:, 2, 1]) * t
    hit.z = _s(rs[:, 0, 2]) * dx + _s(rs[:, 1, 2]) * dy + _s(rs[:, 2, 2]) * t
    ninv = (1.0 / axes ** 2).astype(_F)  # outward normal ~ local / axes^2
    nx, ny, nz = hit.x * _s(ninv[:, 0]), hit.y * _s(ninv[:, 1]), hit.z * _s(ninv[:, 2])
    norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-6
    lh = np.einsum("bji,bj->bi", rot, light)  # the light direction in the object's frame
    hit.lambert = np.maximum(nx * _s(lh[:, 0]) + ny * _s(lh[:, 1]) + nz * _s(lh[:, 2]), 0)
    hit.lambert /= norm
    if facing:
        hit.facing = np.abs(nx * _s(rot[:, 2, 0]) + ny * _s(rot[:, 2, 1])
                            + nz * _s(rot[:, 2, 2]))
        hit.facing /= norm
    if shine:  # the half vector between the light and the camera, in the object's frame
        half = light + _F([0.0, 0.0, -1.0])
        hh = np.einsum("bji,bj->bi", rot, half / np.linalg.norm(half, axis=1, keepdims=True))
        spec = np.maximum(nx * _s(hh[:, 0]) + ny * _s(hh[:, 1]) + nz * _s(hh[:, 2]), 0) / norm
        for _ in range(4):
            spec *= spec
        hit.spec = spec
    return hit


def _shade(hit: _Hit, p) -> np.ndarray:
    """Ambient plus Lambertian light, B×H×W."""
    amb = _s(p["ambient"])
    return amb + (1.0 - amb) * hit.lambert


def _highlight(col, hit: _Hit, p, mask=None) -> None:
    """Add the skin's specular highlight (white light) to shaded colours ``col`` in place."""
    spec = hit.spec * _s(p["spec"] * p["shine"])
    col += (spec if mask is None else spec * mask)[:, None]


def _paint_part(scene, win: _Window, hit: _Hit, rgb, body_alpha, body_depth) -> None:
    """Paint a part (nose, ear) rendered in ``win`` into ``scene`` with a depth test.

    Where the part is nearer than the body's surface it covers it; where it is behind (an ear
    on the far side, the buried half of a nose) it only shows outside the body's silhouette.
    """
    b_alpha, b_depth = win.take(body_alpha), win.take(body_depth)
    in_front = (hit.depth <= b_depth) | (b_alpha <= 0)
    vis = hit.alpha * np.where(in_front, _F(1.0), 1.0 - b_alpha)
    patch = win.take(scene)
    win.put(scene, _mix(patch, rgb, vis))


# ---------------------------------------------------------------------------------------------
# per-image nuisances and the camera model
# ---------------------------------------------------------------------------------------------
def _nuisance(rng, n) -> dict:
    unif = rng.uniform
    return {
        "light_x": unif(-0.7, 0.7, n), "light_y": unif(-0.7, 0.3, n),
        "ambient": unif(0.35, 0.65, n),
        "bg1": unif(0.05, 0.95, (n, 3)), "bg2": unif(0.05, 0.95, (n, 3)),
        "bg_angle": unif(0, 2 * np.pi, n), "bg_offset": unif(-1.2, 1.2, n),
        "bg_soft": np.exp(unif(np.log(0.02), np.log(1.5), n)),
        "gain": unif(0.9, 1.1, (n, 3)), "bright": unif(0.95, 1.4, n),
        "contrast": unif(0.9, 1.3, n),
        "blur": unif(0.0, 0.25, n), "noise": unif(0.003, 0.012, n),
        "shift_x": unif(-0.04, 0.04, n), "shift_y": unif(-0.04, 0.04, n),
        "scale": unif(0.96, 1.04, n),
        # texture-era nuisances (drawn after the earlier ones, which keep their values)
        "bg_uv": unif(0, _ATLAS, (n, 2)), "bg_tex": unif(0.1, 0.4, n),
        "clutter_xy": unif(-1.1, 1.1, (n, _CLUTTER, 2)),
        "clutter_wh": np.exp(unif(np.log(0.04), np.log(0.5), (n, _CLUTTER, 2))),
        "clutter_rgb": unif(0.05, 0.95, (n, _CLUTTER, 3)),
        "clutter_on": (unif(0, 1, (n, _CLUTTER)) < 0.75).astype(float),
        "spec": unif(0.0, 0.35, n), "falloff": unif(-0.25, 0.25, (n, 2)),
        "shot": unif(0.0, 0.03, n),
        "shadow": unif(0.0, 0.35, n) * (unif(0, 1, n) < 0.4), "shadow_angle": unif(0, 2 * np.pi, n),
        "shadow_offset": unif(-0.8, 0.8, n), "shadow_soft": unif(0.02, 0.3, n),
    }


def _background(p, u, v) -> np.ndarray:
    """Two colours separated by a soft edge at a random angle (from gradients to hard edges),
    cluttered with rectangles of other colours (furniture, posters, windows) and textured."""
    px = _F(2.0 / u.shape[-1])
    proj = u * _s(np.cos(p["bg_angle"])) + v * _s(np.sin(p["bg_angle"])) - _s(p["bg_offset"])
    m = _F(0.5) + _F(0.5) * np.tanh(proj / _s(2.0 * p["bg_soft"]))
    scene = _mix(_fill(p["bg1"], m.shape), _c(p["bg2"]), m)
    for k in range(_CLUTTER):
        xy, wh = p["clutter_xy"][:, k], p["clutter_wh"][:, k]
        box = np.maximum(np.abs(u - _s(xy[:, 0])) - _s(wh[:, 0]),
                         np.abs(v - _s(xy[:, 1])) - _s(wh[:, 1]))
        _mix(scene, _c(p["clutter_rgb"][:, k]), _cov(box, px) * _s(p["clutter_on"][:, k]))
    tex = _noise(u * _F(_TEXELS) + _s(p["bg_uv"][:, 0]), v * _F(_TEXELS) + _s(p["bg_uv"][:, 1]),
                 _footprint(px, _TEXELS))
    scene *= (1.0 + _s(p["bg_tex"]) * tex)[:, None]
    return scene


def _camera(img, p, rng) -> np.ndarray:
    """Light fall-off, colour cast, exposure, optical blur, a tone curve and sensor noise (read
    noise plus shot noise growing with the signal); float B×3×H×W -> uint8 B×H×W×3."""
    size = img.shape[-1]
    grid = (np.arange(size, dtype=_F) + _F(0.5)) * _F(2.0 / size) - _F(1.0)
    u, v = grid[None, None, :], grid[None, :, None]
    light = 1.0 + _s(p["falloff"][:, 0]) * u + _s(p["falloff"][:, 1]) * v
    # a soft shadow edge across the frame (a window frame, a lamp's cut-off)
    proj = u * _s(np.cos(p["shadow_angle"])) + v * _s(np.sin(p["shadow_angle"]))
    light *= 1.0 - _s(p["shadow"] * 0.5) * (1.0 + np.tanh((proj - _s(p["shadow_offset"]))
                                                         / _s(p["shadow_soft"])))
    img *= light[:, None]
    # white balance, brightness and contrast (about mid-grey) as one affine map per channel
    img *= _c(p["gain"]) * _s(p["bright"] * p["contrast"])[:, None]
    img += _s(0.5 * (1.0 - p["contrast"]))[:, None]
    # optical blur: a per-image mix with the 3×3 box-filtered image (borders left sharp)
    box = img[..., :-2] + img[..., 1:-1] + img[..., 2:]
    box = (box[:, :, :-2] + box[:, :, 1:-1] + box[:, :, 2:]) * _F(1.0 / 9.0)
    inner = img[:, :, 1:-1, 1:-1]
    inner += (box - inner) * _s(p["blur"])[:, None]
    # the camera's tone curve: a soft shoulder above _KNEE instead of hard clipping
    over = np.maximum(img - _F(_KNEE), _F(0.0))
    img -= over
    img += _F(1.0 - _KNEE) * np.tanh(over / _F(1.0 - _KNEE))
    # sensor noise: triangular (sum of two uniform bytes), zero mean, unit variance once scaled
    noise = rng.integers(0, 256, img.shape, dtype=np.uint8).astype(_F)
    noise += rng.integers(0, 256, img.shape, dtype=np.uint8)
    noise -= _F(255.0)
    sigma = np.sqrt(_s(p["noise"] ** 2)[:, None]
                    + _s(p["shot"] ** 2)[:, None] * np.clip(img, 0.0, 1.0))
    noise *= sigma * _F(255.0 / 104.2)
    img *= _F(255.0)
    img += noise
    img += _F(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8).transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# texture: one periodic noise field (the atlas), sampled in surface or image coordinates
# ---------------------------------------------------------------------------------------------
_ATLAS = 512  # texels per side, a power of two (wrap-around by masking)
_ATLAS_SEED = 20261201  # fixed: the atlas belongs to the renderer, not to a data set's seed
_TEXELS = 160.0  # atlas texels per head unit (or image half-width) for skin and background
_PORES = 600.0  # atlas texels per head unit for the skin's grain
_CLUTTER = 5  # background rectangles per image
_KNEE = 0.75  # the tone curve is linear below this level, compresses highlights above it
# atlas texels per radian around the iris: 12 periods, so no coarse light/dark sectors that
# would shift the iris's apparent centre (and the gaze it shows); unresolved below ~100 px
_FIBRES = 6 * _ATLAS / np.pi


@functools.lru_cache(maxsize=16)
def _atlas(blur: float) -> np.ndarray:
    """A periodic noise field with a natural-image spectrum (amplitude ~ 1/f^1.25), of unit
    standard deviation before a Gaussian low-pass of ``blur`` texels (the pixel footprint:
    texture finer than a pixel averages out, as in a camera, instead of aliasing)."""
    n = _ATLAS
    rng = np.random.default_rng(_ATLAS_SEED)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.rfftfreq(n), indexing="ij"))
    spec = rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)
    spec *= np.maximum(f, 1.0 / n) ** -1.25
    spec[0, 0] = 0.0
    spec /= np.fft.irfft2(spec, s=(n, n)).std()
    return np.fft.irfft2(spec * np.exp(-2.0 * (np.pi * f * blur) ** 2), s=(n, n)).astype(_F)


def _footprint(px, texels_per_unit) -> float:
    """The low-pass (texels) for sampling at ``texels_per_unit`` with pixels ``px`` units wide;
    quantised so that the atlases can be cached. It depends only on the image size, never on
    other images of a chunk, so that every image is the same whatever the chunking."""
    return float(np.clip(np.round(2.0 * px * texels_per_unit) / 4.0, 0.0, float(_ATLAS)))


def _noise(tu, tv, blur: float) -> np.ndarray:
    """The atlas (low-passed by ``blur`` texels) at texel coordinates ``tu, tv``: bilinear,
    wrapping around."""
    flat = _atlas(blur).reshape(-1)
    fu, fv = np.floor(tu), np.floor(tv)
    wu, wv = (tu - fu).astype(_F), (tv - fv).astype(_F)
    mask = _ATLAS - 1
    iu0, iv0 = fu.astype(np.int64) & mask, (fv.astype(np.int64) & mask) * _ATLAS
    iu1, iv1 = (iu0 + 1) & mask, (iv0 + _ATLAS) & (_ATLAS * _ATLAS - 1)
    top = np.take(flat, iv0 + iu0)
    top += wu * (np.take(flat, iv0 + iu1) - top)
    bottom = np.take(flat, iv1 + iu0)
    bottom += wu * (np.take(flat, iv1 + iu1) - bottom)
    top += wv * (bottom - top)
    return top


def _strands(across, along, offset, px_units, k_across=90.0, k_along=6.0):
    """Hair strands: the atlas stretched ``k_across / k_along`` times along the strands, at
    per-subject ``offset`` (B,2); ``across``/``along`` are coordinates in head units."""
    return _noise(across * _F(k_across) + _s(offset[:, 0]),
                  along * _F(k_along) + _s(offset[:, 1]), _footprint(px_units, k_across))


def _texture_identity(rng) -> dict:
    """A subject's texture: where its skin, hair and irises lie in the atlas, and contrasts."""
    return {"skin_uv": rng.uniform(0, _ATLAS, 2), "hair_uv": rng.uniform(0, _ATLAS, 2),
            "iris_uv": rng.uniform(0, _ATLAS, 2),
            "skin_tex": rng.uniform(0.02, 0.06),  # mottling of the skin
            "blush": rng.uniform(0.0, 0.25),  # reddish blotches
            "hair_tex": rng.uniform(0.4, 0.7),  # contrast between strands
            "shine": rng.uniform(0.3, 1.0)}  # specular strength of the skin


def _skin_texture(col, x, y, p, px_units) -> None:
    """Mottle the skin colour ``col`` (B×3×H×W, in place) at surface coordinates ``x, y``."""
    uv = p["skin_uv"]
    tex = _noise(x * _F(_PORES) + _s(uv[:, 0]), y * _F(_PORES) + _s(uv[:, 1]),
                 _footprint(px_units, _PORES))
    col *= (1.0 + _s(p["skin_tex"]) * tex)[:, None]
    blotch = np.clip(_noise(x * _F(80.0) + _s(uv[:, 1]), y * _F(80.0) + _s(uv[:, 0]),
                            _footprint(px_units, 80.0)), 0.0, None)
    _mix(col, _c(p["skin"] * np.array([1.0, 0.7, 0.7], _F)), blotch * _s(p["blush"] * 0.5))


def _hair_colour(p, strands) -> np.ndarray:
    """Per-pixel hair colour B×3×H×W: the subject's hair colour, lighter and darker strands."""
    return _c(p["hair"]) * (1.0 + _s(p["hair_tex"]) * np.clip(strands, -1.5, 1.5))[:, None]


# ---------------------------------------------------------------------------------------------
# shared identity pieces
# ---------------------------------------------------------------------------------------------
_IRIS = np.array([[0.30, 0.17, 0.08], [0.18, 0.10, 0.05], [0.25, 0.40, 0.62],
                  [0.30, 0.45, 0.28], [0.42, 0.45, 0.48], [0.45, 0.32, 0.15]])
_HAIR = np.array([[0.06, 0.05, 0.05], [0.22, 0.13, 0.07], [0.45, 0.30, 0.15],
                  [0.80, 0.65, 0.40], [0.55, 0.22, 0.10], [0.70, 0.70, 0.70]])
_FRAMES = np.array([[0.05, 0.05, 0.05], [0.35, 0.20, 0.10], [0.70, 0.70, 0.72],
                    [0.55, 0.10, 0.10]])
_SCLERA = np.array([0.93, 0.91, 0.88], dtype=_F)


def _skin(rng) -> np.ndarray:
    tone = rng.uniform()
    dark, light = np.array([0.33, 0.20, 0.13]), np.array([0.96, 0.80, 0.68])
    return np.clip(dark + tone * (light - dark) + rng.normal(0, 0.025, 3), 0, 1)


def _pick(rng, palette) -> np.ndarray:
    return np.clip(palette[rng.integers(len(palette))] + rng.normal(0, 0.03, 3), 0, 1)


def _common_identity(rng) -> dict:
    skin, hair = _skin(rng), _pick(rng, _HAIR)
    return {"skin": skin, "hair": hair, "iris": _pick(rng, _IRIS),
            "lip": np.clip(skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 0.02, 3), 0, 1),
            "brow": np.clip(hair * 0.8 + skin * 0.15, 0, 1), "frame": _pick(rng, _FRAMES)}


# ---------------------------------------------------------------------------------------------
# gaze: normalised faces
# ---------------------------------------------------------------------------------------------
def _gaze_identity(rng) -> dict:
    ident = _common_identity(rng)
    eye_w = rng.uniform(0.20, 0.23)
    ident.update({
        "face_ax": rng.uniform(0.80, 0.94), "face_ay": rng.uniform(1.08, 1.22),
        "face_az": rng.uniform(0.72, 0.80),
        "eye_x": rng.uniform(0.33, 0.40), "eye_y": rng.uniform(-0.27, -0.19),
        "eye_w": eye_w, "lid_up": rng.uniform(0.44, 0.50) * eye_w,
        "lid_low": rng.uniform(0.30, 0.34) * eye_w, "eye_tilt": rng.uniform(-0.015, 0.015),
        "ball_r": eye_w * rng.uniform(0.98, 1.02), "iris_r": rng.uniform(0.38, 0.43),
        "brow_gap": rng.uniform(0.10, 0.15), "brow_t": rng.uniform(0.018, 0.035),
        "hairline": rng.uniform(-0.95, -0.68), "hair_len": rng.uniform(-0.3, 1.0),
        "nose_w": rng.uniform(0.11, 0.15), "nose_l": rng.uniform(0.16, 0.21),
        "nose_d": rng.uniform(0.10, 0.13),
        "mouth_y": rng.uniform(0.50, 0.62), "mouth_w": rng.uniform(0.20, 0.28),
        "mouth_h": rng.uniform(0.035, 0.06),
        "glasses": float(rng.uniform() < 0.2), "glass_t": rng.uniform(0.022, 0.04),
    })
    return ident


def _gaze_pose(rng, n) -> dict:
    r = GAZE_RANGES_DEG
    head = np.stack([rng.uniform(-r["head_yaw"], r["head_yaw"], n),
                     rng.uniform(-r["head_pitch"], r["head_pitch"], n),
                     rng.uniform(-r["head_roll"], r["head_roll"], n)], axis=1)
    eye = np.deg2rad(np.stack([rng.uniform(-r["eye_yaw"], r["eye_yaw"], n),
                               rng.uniform(-r["eye_pitch"], r["eye_pitch"], n)], axis=1))
    gaze, label = _gaze_labels(head, eye)
    return {"head": head, "eye": eye, "gaze_vec": gaze, "label": label,
            "openness": rng.uniform(0.96, 1.04, n), "pupil": rng.uniform(0.35, 0.55, n),
            "glint": rng.uniform(0.0, 0.5, n)}


def _gaze_labels(head_deg, eye_rad) -> tuple[np.ndarray, np.ndarray]:
    """Gaze in the camera frame, as unit vectors (B,3) and (yaw, pitch) radians (B,2), from the
    head rotation (yaw, pitch, roll degrees) and the eye-in-head (yaw, pitch radians)."""
    head = np.asarray(head_deg, dtype=np.float64)
    rot = Rotation.from_euler("YXZ", head * [1, -1, 1], degrees=True).as_matrix()
    gaze = np.einsum("bij,bj->bi", rot, gaze_to_vector(np.asarray(eye_rad, dtype=np.float64)))
    return gaze, vector_to_gaze(gaze)


def _render_gaze(p, grid) -> np.ndarray:
    px = _F(2.0 / len(grid))
    u, v = grid[None, None, :], grid[None, :, None]
    bsz, sc = len(p["scale"]), p["scale"]
    zeros = np.zeros(bsz, _F)
    rot = _rotations(p["head"][:, 0], p["head"][:, 1], p["head"][:, 2])
    light = _light(p)
    fax, fay, faz = p["face_ax"], p["face_ay"], p["face_az"]
    centre = np.stack([p["shift_x"], 0.12 + p["shift_y"], zeros], 1)
    face = _ellipsoid(u, v, centre, rot, np.stack([fax, fay, faz], 1), sc, light, px,
                      facing=False, shine=True)
    ptex = px / sc  # one pixel in head units, (B,)

    col = _fill(p["skin"], face.x.shape)
    _skin_texture(col, face.x, face.y, p, px)
    # hair on the forehead, the hairline curving down towards the temples
    hairline = _s(p["hairline"]) + 0.35 * (face.x / _s(fax)) ** 2
    strands = _strands(face.x, face.y, p["hair_uv"], px)
    hair_cov = _cov(face.y - hairline, _s(ptex))
    _mix(col, _hair_colour(p, strands), hair_cov)
    shade = _shade(face, p)

    # mouth: lips and the line between them
    axes = (fax, fay, faz)
    mw, mh = p["mouth_w"] + 0.01, p["mouth_h"] + 0.01
    win = _surface_window(grid, centre, rot, sc, -mw, mw, p["mouth_y"] - mh,
                          p["mouth_y"] + mh, axes)
    x, y = win.take(face.x), win.take(face.y) - _s(p["mouth_y"])
    patch, pt = win.take(col), _s(ptex)
    _mix(patch, _c(p["lip"]), _cov(_ellipse_sd(x, y, _s(p["mouth_w"]), _s(p["mouth_h"])), pt))
    line = np.abs(y) - 0.006 + np.maximum(np.abs(x) - _s(p["mouth_w"]) * 0.95, 0)
    _mix(patch, _c(p["lip"]) * 0.45, _cov(line, pt))
    win.put(col, patch)

    # eyes (brows, lids, eyeballs), each in its own window, drawn before the face's shading
    gvec = p["gaze_vec"]
    lid_top = np.maximum(p["brow_gap"] + p["lid_up"] + 0.04 + p["brow_t"],
                         1.8 * p["lid_up"] + 0.05)
    for side in (-1.0, 1.0):
        ex, half_w = side * p["eye_x"], 1.3 * p["eye_w"] + 0.03
        win = _surface_window(grid, centre, rot, sc, ex - half_w, ex + half_w,
                              p["eye_y"] - lid_top - 0.01, p["eye_y"] + p["lid_low"] + 0.05, axes)
        patch = win.take(col)
        _gaze_eye(patch, p, win, win.take(face.x), win.take(face.y), side, rot, centre, sc, gvec,
                  light, px)
        win.put(col, patch)
    col *= shade[:, None]
    _highlight(col, face, p, 1.0 - hair_cov)
    # glasses sit in front of the face: drawn after shading, in a band across the face
    if p["glasses"].any():
        gh = 1.05 * p["eye_w"] + p["glass_t"] + 0.01
        win = _surface_window(grid, centre, rot, sc, -fax, fax, p["eye_y"] - gh,
                              p["eye_y"] + gh, axes)
        patch = win.take(col)
        _glasses(patch, p, win.take(face.x), win.take(face.y), _s(ptex))
        win.put(col, patch)

    # compose over the background and the hair around the head
    scene = _background(p, u, v)
    hx = (u - _s(centre[:, 0])) / _s(sc)
    hy = (v - _s(centre[:, 1])) / _s(sc)
    hair_sd = np.maximum(_ellipse_sd(hx, hy + 0.12, _s(fax + 0.12), _s(fay + 0.05)),
                         hy - _s(p["hair_len"]))
    strands = _strands(hx, hy, p["hair_uv"][:, ::-1], px)
    hair_rgb = _hair_colour(p, strands) * _s(0.55 + 0.45 * p["ambient"])[:, None]
    _mix(scene, hair_rgb, _cov(hair_sd, _s(ptex)))
    _mix(scene, col, face.alpha)

    # nose: a protruding ellipsoid with its own shading and dark nostrils underneath
    ny = p["eye_y"] + 0.5 * (p["mouth_y"] - p["eye_y"])
    nc = _place(centre, rot, sc, np.stack([zeros, ny, _surface_z(zeros, ny, fax, fay, faz)], 1))
    n_axes = np.stack([p["nose_w"], p["nose_l"], p["nose_d"]], 1)
    half = sc * n_axes.max(1) + 0.03
    win = _Window(grid, nc[:, 0], nc[:, 1], half, half)
    nose = _ellipsoid(win.u, win.v, nc, rot, n_axes, sc, light, px, facing=False)
    n_col = _fill(p["skin"] * np.array([1.0, 0.96, 0.95], _F), nose.x.shape)
    nostril = np.abs(np.abs(nose.x) / _s(p["nose_w"]) - 0.55) - 0.22
    _mix(n_col, _c(p["skin"]) * 0.35,
         _cov(np.maximum(nostril, _s(p["nose_l"]) * 0.7 - nose.y), _s(ptex)) * (nose.z < 0))
    n_col *= _shade(nose, p)[:, None]
    _paint_part(scene, win, nose, n_col, face.alpha, face.depth)
    return scene


def _gaze_eye(col, p, win, x, y, side, rot, centre, sc, gvec, light, px) -> None:
    """Draw one eye into the face texture patch ``col``: brow, lids, lashes and the eyeball."""
    pt = _s(px / sc)
    ex, ey, w = side * p["eye_x"], p["eye_y"], p["eye_w"]
    xr = (x - _s(ex)) / _s(w)  # -1..1 across the eye opening
    inside = np.clip(1.0 - xr * xr, 0.0, 1.0)
    yc = _s(ey) + side * _s(p["eye_tilt"]) * xr  # canthal tilt (outer corner up or down)
    # the upper lid opens as the eye looks up and droops as it looks down
    y_up = yc - _s(p["lid_up"] * p["openness"] * (1.0 + 1.6 * p["eye"][:, 1])) * np.sqrt(inside)
    y_low = yc + _s(p["lid_low"]) * inside
    beyond = np.maximum(np.abs(xr) - 1.0, 0.0) * _s(w)  # distance past the eye corners
    aperture_sd = np.maximum(np.maximum(y_up - y, y - y_low), beyond)
    # brow: an arched band above the eye
    bx = (x - _s(ex + side * 0.02)) / (_s(w) * 1.25)
    brow_y = _s(ey - p["brow_gap"] - p["lid_up"]) - 0.04 * (1.0 - bx * bx)
    brow_sd = np.maximum(np.abs(y - brow_y) - _s(p["brow_t"]) * (1.0 - 0.5 * bx * bx),
                         (np.abs(bx) - 1.0) * _s(w))
    # brow hairs run along the brow: strands stretched horizontally
    hairs = _strands(y, x, p["hair_uv"], px, k_across=150.0, k_along=12.0)
    _mix(col, _c(p["brow"]) * (1.0 + 0.3 * hairs)[:, None], _cov(brow_sd, pt))
    # lid crease shadow, and the lash line just above the upper lid
    crease = np.abs(y - (y_up - 0.035)) - 0.008 + np.maximum(np.abs(xr) - 0.9, 0.0) * _s(w)
    _mix(col, _c(p["skin"]) * 0.75, _cov(crease, pt) * 0.6)
    lash = np.maximum(y_up - 0.018 - y, y - y_up) + beyond
    _mix(col, _c(p["hair"]) * 0.4, _cov(lash, pt))
    # single lashes beyond the lash line, curving outwards, thinning towards their tips
    tip = np.clip((y_up - y) / 0.05, 0.0, 1.0)
    comb = np.cos(_F(2 * np.pi / 0.022) * (x + side * 0.02 * tip * tip)) * 0.5 + 0.5
    _mix(col, _c(p["hair"]) * 0.35,
         comb * comb * (1.0 - tip) * (tip > 0) * np.clip(1.2 - np.abs(xr), 0.0, 1.0) * 0.8)

    # eyeball: a sphere behind the opening, iris and pupil centred on the gaze direction
    r = p["ball_r"]
    ez = _surface_z(ex, ey, p["face_ax"], p["face_ay"], p["face_az"]) + 0.45 * r
    ec = _place(centre, rot, sc, np.stack([ex, ey, ez], 1))
    rad = r * sc
    dx, dy = win.u - _s(ec[:, 0]), win.v - _s(ec[:, 1])
    dz = -np.sqrt(np.maximum(_s(rad * rad) - dx * dx - dy * dy, 0.0))
    along = dx * _s(gvec[:, 0]) + dy * _s(gvec[:, 1]) + dz * _s(gvec[:, 2])
    d_iris = np.sqrt(np.maximum(2.0 * _s(rad) * (_s(rad) - along), 0.0))  # chord to iris centre
    r_iris = rad * p["iris_r"]
    ball = _fill(_SCLERA, dz.shape)
    ball *= (0.65 - 0.35 * dz / _s(rad))[:, None]
    # iris: radial fibres (the atlas in polar coordinates about the iris centre), a dark limbus
    rel = d_iris / _s(r_iris)
    angle = np.arctan2(win.v - _s(ec[:, 1] + rad * gvec[:, 1]),
                       win.u - _s(ec[:, 0] + rad * gvec[:, 0]))
    fibres = _noise(angle * _F(_FIBRES) + _s(p["iris_uv"][:, 0]),
                    rel * _F(6.0) + _s(p["iris_uv"][:, 1]),
                    _footprint(px, _FIBRES / 0.06))  # texels per unit at the inner radius
    iris_lum = (0.6 + 0.4 * np.clip(1.2 - rel, 0, 1)) * (1.0 + 0.35 * fibres)
    iris_lum *= 1.0 - 0.5 * np.clip((rel - 0.75) * 4.0, 0, 1)
    iris_col = _c(p["iris"]) * iris_lum[:, None]
    _mix(ball, iris_col, _cov(d_iris - _s(r_iris), px))
    _mix(ball, _F(0.02), _cov(d_iris - _s(r_iris * p["pupil"]), px))
    # corneal glint where the normal bisects the light and view directions (gaze-independent)
    half = light + _F([0.0, 0.0, -1.0])
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    gx, gy = _s(ec[:, 0] + rad * half[:, 0]), _s(ec[:, 1] + rad * half[:, 1])
    glint = np.sqrt((win.u - gx) ** 2 + (win.v - gy) ** 2) - _s(0.22 * r_iris)
    _mix(ball, _F(1.0), _cov(glint, px) * _s(p["glint"]))
    # the upper lid's shadow on the eyeball
    ball *= (1.0 - 0.35 * np.clip(1.0 - (y - y_up) / (0.5 * _s(w)), 0, 1))[:, None]
    _mix(col, ball, _cov(aperture_sd, pt))


def _glasses(col, p, x, y, pt) -> None:
    """Frames around both eyes, a bridge and temples; the lenses add a faint sheen."""
    g, t = _s(p["glasses"]), _s(p["glass_t"])
    ring_sd = lens = None
    for side in (-1.0, 1.0):
        e = _ellipse_sd(x - _s(side * p["eye_x"]), y - _s(p["eye_y"] - 0.01),
                        _s(p["eye_w"] * 1.45), _s(p["eye_w"] * 1.05))
        ring = np.abs(e) - t * 0.5
        ring_sd = ring if ring_sd is None else np.minimum(ring_sd, ring)
        lens = _cov(e, pt) if lens is None else np.maximum(lens, _cov(e, pt))
    bridge = np.maximum(np.abs(y - _s(p["eye_y"] - p["eye_w"] * 0.45)) - t * 0.4,
                        np.abs(x) - _s(p["eye_x"] - p["eye_w"] * 1.3))
    temple = np.maximum(np.abs(y - _s(p["eye_y"] - p["eye_w"] * 0.3)) - t * 0.4,
                        _s(p["eye_x"] + p["eye_w"] * 1.4) - np.abs(x))
    frame = np.minimum(np.minimum(ring_sd, bridge), temple)
    _mix(col, _F(0.85), lens * g * 0.08)
    _mix(col, _c(p["frame"]), _cov(frame, pt) * g)


# ---------------------------------------------------------------------------------------------
# head pose: whole heads
# ---------------------------------------------------------------------------------------------
def _head_identity(rng) -> dict:
    ident = _common_identity(rng)
    ident.update({
        "shirt": rng.uniform(0.05, 0.95, 3),
        "head_ax": rng.uniform(0.52, 0.60), "head_ay": rng.uniform(0.66, 0.74),
        "head_az": rng.uniform(0.60, 0.66),
        "eye_x": rng.uniform(0.19, 0.23), "eye_y": rng.uniform(-0.10, -0.04),
        "eye_w": rng.uniform(0.075, 0.095), "eye_h": rng.uniform(0.03, 0.04),
        "brow_t": rng.uniform(0.016, 0.028),
        "hairline": rng.uniform(-0.75, -0.55), "hair_back": rng.uniform(0.5, 1.1),
        "nose_w": rng.uniform(0.05, 0.07), "nose_l": rng.uniform(0.10, 0.14),
        "nose_d": rng.uniform(0.07, 0.09),
        "mouth_y": rng.uniform(0.27, 0.33), "mouth_w": rng.uniform(0.10, 0.13),
        "mouth_h": rng.uniform(0.02, 0.032), "ear_l": rng.uniform(0.10, 0.13),
        "glasses": float(rng.uniform() < 0.25), "beard": float(rng.uniform() < 0.2),
    })
    return ident


def _head_pose(rng, n) -> dict:
    r = HEADPOSE_RANGES_DEG
    label = np.stack([rng.uniform(-r["yaw"], r["yaw"], n),
                      rng.uniform(-r["pitch"], r["pitch"], n),
                      rng.uniform(-r["roll"], r["roll"], n)], axis=1)
    return {"label": label, "look": rng.uniform(-0.3, 0.3, (n, 2))}


def _render_head(p, grid) -> np.ndarray:
    px = _F(2.0 / len(grid))
    u, v = grid[None, None, :], grid[None, :, None]
    bsz, sc = len(p["scale"]), p["scale"] * _F(_HEAD_ZOOM)
    zeros = np.zeros(bsz, _F)
    lab = p["label"]
    rot = _rotations(lab[:, 0], lab[:, 1], lab[:, 2])
    light = _light(p)
    ax, ay, az = p["head_ax"], p["head_ay"], p["head_az"]
    centre = np.stack([p["shift_x"], p["shift_y"] - 0.05, zeros], 1)
    head = _ellipsoid(u, v, centre, rot, np.stack([ax, ay, az], 1), sc, light, px,
                      shine=True)
    px_head = px / _F(_HEAD_ZOOM)  # one pixel in head units (at scale 1)

    col = _fill(p["skin"], head.x.shape)
    _skin_texture(col, head.x, head.y, p, px_head)
    # hair above a plane through the head that rises from the forehead to the nape; strands
    # run along the meridians from the crown
    ptex = (px / _s(sc)) / np.maximum(head.facing, 0.3)  # a texel's footprint grows at grazing
    hair_sd = (head.y / _s(ay) - _s(p["hairline"])
               - _s(p["hair_back"]) * (head.z / _s(az) + 0.75)) * _s(ay) * 0.6
    strands = _strands(np.arctan2(head.x, -head.z) * _F(0.55), head.y, p["hair_uv"], px_head)
    hair_cov = _cov(hair_sd, ptex)
    _mix(col, _hair_colour(p, strands), hair_cov)
    if p["beard"].any():
        beard_sd = np.maximum(0.12 - head.y, np.abs(head.x) - 0.8 * _s(ax))
        beard_sd = np.maximum(beard_sd, head.z + 0.05)  # front half only
        stubble = np.clip(0.85 + 0.4 * strands, 0.0, 1.0)
        _mix(col, _hair_colour(p, strands) * 0.8,
             _cov(beard_sd, ptex) * _s(p["beard"]) * stubble)

    # face features, in a window around the face's projected centre
    fc = _place(centre, rot, sc, np.stack([zeros, zeros + 0.1, zeros - az], 1))
    win = _Window(grid, fc[:, 0], fc[:, 1], 0.55 * sc, 0.55 * sc)
    x, y, z, pt = win.take(head.x), win.take(head.y), win.take(head.z), win.take(ptex)
    patch = win.take(col)
    front = (z < 0).astype(_F)
    my = y - _s(p["mouth_y"])
    _mix(patch, _c(p["lip"]),
         _cov(_ellipse_sd(x, my, _s(p["mouth_w"]), _s(p["mouth_h"])), pt) * front)
    for side in (-1.0, 1.0):
        w, h = p["eye_w"], p["eye_h"]
        dx, dy = x - _s(side * p["eye_x"]), y - _s(p["eye_y"])
        eye = _cov(_ellipse_sd(dx, dy, _s(w), _s(h)), pt) * front
        _mix(patch, _SCLERA[None, :, None, None], eye)
        ix, iy = dx - _s(p["look"][:, 0] * w * 0.5), dy + _s(p["look"][:, 1] * h * 0.5)
        iris = _cov(np.sqrt(ix * ix + iy * iy) - _s(h * 0.95), pt)
        _mix(patch, _c(p["iris"]) * 0.7, iris * eye)
        bx = dx / (_s(w) * 1.3)
        brow = np.maximum(np.abs(dy + _s(h) * 2.2 + 0.02 * (1 - bx * bx)) - _s(p["brow_t"]),
                          (np.abs(bx) - 1.0) * _s(w))
        hairs = 1.0 + 0.3 * win.take(strands)
        _mix(patch, _c(p["brow"]) * hairs[:, None], _cov(brow, pt) * front)
        if p["glasses"].any():
            ring = np.abs(_ellipse_sd(dx, dy + 0.005, _s(w) * 1.45, _s(w) * 1.1)) - 0.008
            _mix(patch, _c(p["frame"]), _cov(ring, pt) * front * _s(p["glasses"]))
    win.put(col, patch)
    col *= _shade(head, p)[:, None]
    _highlight(col, head, p, 1.0 - hair_cov)

    scene = _background(p, u, v)
    torso = _ellipse_sd(u - _s(centre[:, 0] * 0.5), v - 1.25, _F(0.95), _F(0.55))
    _mix(scene, _c(p["shirt"] * (0.4 + 0.6 * p["ambient"])[:, None]), _cov(torso, px))
    _mix(scene, col, head.alpha)

    # nose (protruding from the face) and ears (on the sides): lit ellipsoids, depth-tested
    ny = p["eye_y"] + 0.55 * (p["mouth_y"] - p["eye_y"])
    parts = [(np.stack([zeros, ny, _surface_z(zeros, ny, ax, ay, az) + 0.35 * p["nose_d"]], 1),
              np.stack([p["nose_w"], p["nose_l"], p["nose_d"]], 1), 0.97)]
    for side in (-1.0, 1.0):
        parts.append((np.stack([side * (ax + 0.005), p["eye_y"] + 0.08, zeros + 0.04], 1),
                      np.stack([zeros + 0.03, p["ear_l"], 0.6 * p["ear_l"]], 1), 0.9))
    for local, axes, tint in parts:
        pc = _place(centre, rot, sc, local)
        half = sc * axes.max(1) + 0.03
        win = _Window(grid, pc[:, 0], pc[:, 1], half, half)
        hit = _ellipsoid(win.u, win.v, pc, rot, axes, sc, light, px, facing=False)
        rgb = _c(p["skin"] * _F(tint)) * _shade(hit, p)[:, None]
        _paint_part(scene, win, hit, rgb, head.alpha, head.depth)
    return scene
