"""The built-in synthetic gaze and head-pose generators, and the preview grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drmguard.data import synthetic as syn
from drmguard.data.base import ArrayDataset
from drmguard.data.preview import preview_grid
from drmguard.data.synthetic import synth_gaze, synth_headpose
from drmguard.errors import DrmguardError
from drmguard.tasks import GAZE, HEADPOSE, gaze_to_vector

GENERATORS = [synth_gaze, synth_headpose]


def _render(task: str, per: dict, size: int, seed: int = 0) -> np.ndarray:
    render = syn._render_gaze if task == "gaze" else syn._render_head
    return syn._render_chunks(render, per, len(per["scale"]), size, seed, task, False)


def _gaze_params(n=1, eye=(0.0, 0.0), head=(0.0, 0.0, 0.0), glasses=0.0):
    per, _ = syn._params("gaze", n, 1, 0)
    per["head"][:] = head
    per["eye"][:] = np.deg2rad(eye)
    per["glasses"][:] = glasses
    gaze, label = syn._gaze_labels(per["head"], per["eye"])
    per["gaze_vec"], per["label"] = gaze.astype(np.float32), label.astype(np.float32)
    return per


def _luminance(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64).mean(axis=-1)


@pytest.mark.parametrize("gen", GENERATORS)
def test_same_seed_same_bytes_other_seed_differs(gen):
    a = gen(24, size=16, subjects=4, seed=3)
    b = gen(24, size=16, subjects=4, seed=3)
    c = gen(24, size=16, subjects=4, seed=4)
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.targets, b.targets)
    assert np.array_equal(a.subjects, b.subjects)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.targets, c.targets)


@pytest.mark.parametrize("gen,task,dim,names", [
    (synth_gaze, "gaze", 2, ["yaw", "pitch"]),
    (synth_headpose, "headpose", 3, ["yaw", "pitch", "roll"])])
@pytest.mark.parametrize("size", [8, 24, 40])
def test_shapes_and_types(gen, task, dim, names, size):
    ds = gen(10, size=size, subjects=3, seed=0)
    assert isinstance(ds, ArrayDataset)
    assert ds.images.shape == (10, size, size, 3) and ds.images.dtype == np.uint8
    assert ds.targets.shape == (10, dim) and ds.targets.dtype == np.float32
    assert ds.task == task and ds.target_names == names
    assert ds.images.std() > 10  # not a blank frame


def test_gaze_label_ranges_and_mean_predictor():
    y = synth_gaze(3000, size=8, subjects=10, seed=1).targets
    deg = np.rad2deg(y)
    r = syn.GAZE_RANGES_DEG
    assert np.abs(deg[:, 0]).max() <= r["head_yaw"] + r["eye_yaw"] + 1.0
    assert np.abs(deg[:, 1]).max() <= r["head_pitch"] + r["eye_pitch"] + 1.0
    assert np.abs(deg[:, 0]).max() > 20 and np.abs(deg[:, 1]).max() > 15
    t = torch.from_numpy(y)
    mean_err = GAZE.error(t.mean(0, keepdim=True).expand_as(t), t).mean()
    assert mean_err >= 10.0


def test_headpose_label_ranges_and_mean_predictor():
    y = synth_headpose(3000, size=8, subjects=10, seed=1).targets
    for k, name in enumerate(["yaw", "pitch", "roll"]):
        lim = syn.HEADPOSE_RANGES_DEG[name]
        assert np.abs(y[:, k]).max() <= lim
        assert np.abs(y[:, k]).max() > 0.9 * lim
    t = torch.from_numpy(y)
    assert HEADPOSE.error(t.mean(0, keepdim=True).expand_as(t), t).mean() >= 10.0


@pytest.mark.parametrize("task", ["gaze", "headpose"])
def test_subjects_balanced_and_identity_stable(task):
    per, subj = syn._params(task, 50, 7, 5)
    counts = np.bincount(subj, minlength=7)
    assert counts.sum() == 50 and counts.max() - counts.min() <= 1
    # every image of subject k carries subject k's looks, whatever n and the subject count
    per_other, subj_other = syn._params(task, 23, 9, 5)
    for k in range(7):
        skin = syn._identity(task, k, 5)["skin"].astype(np.float32)
        assert np.array_equal(per["skin"][subj == k], np.tile(skin, ((subj == k).sum(), 1)))
        assert np.array_equal(per_other["skin"][subj_other == k],
                              np.tile(skin, ((subj_other == k).sum(), 1)))
    looks = [syn._identity(task, k, 5)["skin"] for k in range(7)]
    assert len({tuple(np.round(s, 6)) for s in looks}) == 7  # subjects differ
    ds = (synth_gaze if task == "gaze" else synth_headpose)(50, size=8, subjects=7, seed=5)
    assert np.array_equal(ds.subjects, subj)


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("bad", [{"size": 12}, {"size": 0}, {"size": 4}, {"size": 2048},
                                 {"size": "32"}, {"n": 0}, {"n": 2.5}, {"subjects": 0},
                                 {"seed": -1}])
def test_bad_arguments_raise(gen, bad):
    kwargs = {"n": 4, "size": 16, "subjects": 2, "seed": 0, **bad}
    with pytest.raises(DrmguardError):
        gen(**kwargs)


def test_gaze_changes_only_the_eyes_and_moves_the_iris_the_right_way():
    size = 64
    base = _render("gaze", _gaze_params(), size)[0]
    left = _render("gaze", _gaze_params(eye=(18.0, 0.0)), size)[0]   # yaw > 0: image left
    up = _render("gaze", _gaze_params(eye=(0.0, 14.0)), size)[0]     # pitch > 0: up
    diff = np.abs(_luminance(left) - _luminance(base))
    rows, cols = np.nonzero(diff > 8)
    assert len(rows) > 10
    # the change is confined to the eye region: the mouth, chin and bottom are untouched
    assert rows.max() < 0.6 * size
    assert np.array_equal(left[int(0.6 * size):], base[int(0.6 * size):])
    # both eyes change (one on each side of the face)
    assert (cols < size / 2).any() and (cols >= size / 2).any()
    # the dark iris moves towards image-left when yaw > 0: the image gets darker on the left
    d = _luminance(left) - _luminance(base)
    darker, lighter = np.nonzero(d < -8), np.nonzero(d > 8)
    for half in (slice(0, size // 2), slice(size // 2, size)):
        dk = darker[1][(darker[1] >= half.start) & (darker[1] < half.stop)]
        lt = lighter[1][(lighter[1] >= half.start) & (lighter[1] < half.stop)]
        assert dk.mean() < lt.mean()
    d = _luminance(up) - _luminance(base)
    darker, lighter = np.nonzero(d < -8), np.nonzero(d > 8)
    assert darker[0].mean() < lighter[0].mean()


def test_gaze_label_combines_head_and_eye():
    per = _gaze_params(n=1, eye=(10.0, -5.0))
    assert np.allclose(np.rad2deg(per["label"][0]), [10.0, -5.0], atol=1e-4)
    per = _gaze_params(n=1, eye=(10.0, 0.0), head=(8.0, 0.0, 0.0))
    assert np.allclose(np.rad2deg(per["label"][0]), [18.0, 0.0], atol=1e-4)


def test_head_rotation_convention():
    rot = syn._rotations(np.array([25.0]), np.array([-15.0]), np.array([30.0]))[0]
    want = gaze_to_vector(np.deg2rad(np.array([25.0, -15.0])))
    assert np.allclose(rot @ np.array([0.0, 0.0, -1.0]), want, atol=1e-5)


def test_headpose_yaw_moves_the_face_not_the_background():
    size = 48
    per, _ = syn._params("headpose", 2, 1, 0)
    per["label"][0] = [40.0, 0.0, 0.0]
    per["label"][1] = [-40.0, 0.0, 0.0]
    per["glasses"][:] = 0
    per["beard"][:] = 0
    per["noise"][:] = 0
    per["shot"][:] = 0  # no sensor noise at all: read noise and shot noise
    for key in per:  # same subject and nuisances for both images
        per[key][1] = per[key][0] if key != "label" else per[key][1]
    img = _render("headpose", per, size)
    diff = np.abs(_luminance(img[0]) - _luminance(img[1]))
    assert (diff > 20).mean() > 0.02
    # nearly all the change lies on the head, not in the frame's corners
    corners = np.r_[diff[:4, :4].ravel(), diff[:4, -4:].ravel()]
    assert corners.max() == 0


def test_generation_with_progress_bar(capsys):
    ds = synth_gaze(5, size=16, subjects=2, progress=True)
    assert len(ds) == 5


def test_preview_writes_png(tmp_path):
    datasets = {"gaze": synth_gaze(12, size=32, subjects=3),
                "headpose": synth_headpose(12, size=32, subjects=3),
                "generic": ArrayDataset(np.zeros((5, 16, 16, 1), np.uint8),
                                        np.arange(10.0).reshape(5, 2))}
    for name, ds in datasets.items():
        out = tmp_path / "sub" / f"{name}.png"
        path = preview_grid(ds, str(out), n=6, seed=1)
        assert path == str(out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_rejects_bad_count(tmp_path):
    with pytest.raises(DrmguardError):
        preview_grid(synth_gaze(4, size=16, subjects=2), str(tmp_path / "x.png"), n=0)


def _mean_abs_gradient(images: np.ndarray) -> float:
    lum = _luminance(images) / 255.0
    return float((np.abs(np.diff(lum, axis=-1)).mean() + np.abs(np.diff(lum, axis=-2)).mean())
                 / 2)


@pytest.mark.parametrize("gen", GENERATORS)
def test_images_carry_texture(gen):
    # mean |adjacent-pixel difference| at 32 px: 0.033 (gaze) and 0.030 (head pose) for the
    # untextured renderer of SYNTHETIC_VERSION 2, 0.054 and 0.052 now, 0.070 for a real face
    images = gen(48, size=32, subjects=8, seed=0).images
    assert _mean_abs_gradient(images) > 0.045


def _cheek_texture(per: dict) -> float:
    """High-pass energy of the left cheek of a noise-free, unblurred 64-px gaze image."""
    for key in ("noise", "shot", "blur"):
        per[key][:] = 0
    img = _luminance(_render("gaze", per, 64)[0])
    cheek = img[38:46, 14:22]
    smooth = (cheek[:-2, 1:-1] + cheek[2:, 1:-1] + cheek[1:-1, :-2] + cheek[1:-1, 2:]) / 4
    return float(np.abs(cheek[1:-1, 1:-1] - smooth).mean())


def test_skin_has_grain():
    # grey levels of high-pass residual: 0.16 for the untextured renderer (uint8 rounding of
    # smooth shading), 1.1 now
    assert _cheek_texture(_gaze_params()) > 0.3


@pytest.mark.parametrize("task", ["gaze", "headpose"])
def test_texture_belongs_to_the_subject(task):
    per, subj = syn._params(task, 40, 4, 2)
    texture_keys = set(syn._texture_identity(np.random.default_rng(0)))
    i, j = np.flatnonzero(subj == 1)[:2]
    k = np.flatnonzero(subj == 2)[0]
    for key in texture_keys:  # every image of a subject carries the subject's texture
        assert np.array_equal(per[key][subj == 1], np.repeat(per[key][i:i + 1], 10, axis=0))
    for key in per.keys() - texture_keys:  # j (same subject), k (another): i's everything else
        per[key][j] = per[key][k] = per[key][i]
    for key in ("noise", "shot"):
        per[key][:] = 0
    img = _render(task, per, 32, seed=2)
    assert np.array_equal(img[i], img[j])
    assert np.abs(img[i].astype(int) - img[k]).max() > 10  # another subject's texture differs
