"""Loaders of the four real datasets, on fixtures written in their documented layouts."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

import fixtures_real as F
from drmguard.data import biwi, columbiagaze, load_dataset, mpiifacegaze, pandora
from drmguard.data.base import ArrayDataset
from drmguard.data.protocols import (leave_one_subject_out, n_folds, pandora_split,
                                     paper_random_split, protocol_splits, sequence_split,
                                     subject_kfold)
from drmguard.errors import DrmguardError
from drmguard.tasks import vector_to_gaze

torch.set_num_threads(1)


def _close_color(pixel, color, tol=20):
    return np.abs(np.asarray(pixel, int) - np.asarray(color, int)).max() <= tol


# --- conventions -------------------------------------------------------------------------
def test_gaze_vector_signs():
    yaw, pitch = vector_to_gaze(np.array([0.0, 0.0, -1.0]))
    assert abs(yaw) < 1e-12 and abs(pitch) < 1e-12
    # towards camera +x (image right = the subject's left): negative yaw
    yaw, pitch = vector_to_gaze(np.array([1.0, 0.0, -1.0]))
    assert yaw == pytest.approx(-np.pi / 4) and abs(pitch) < 1e-12
    # towards camera -y (up in the image): positive pitch
    yaw, pitch = vector_to_gaze(np.array([0.0, -1.0, -1.0]))
    assert pitch == pytest.approx(np.pi / 4) and abs(yaw) < 1e-12


# --- MPIIFaceGaze ------------------------------------------------------------------------
def test_mpii_normalized_bgr_to_rgb_and_labels(tmp_path):
    truth = F.make_mpii_normalized(tmp_path)
    ds = mpiifacegaze.load(str(tmp_path), progress=False)
    assert ds.meta["layout"] == "normalized" and ds.task == "gaze"
    assert ds.target_names == ["yaw", "pitch"]
    assert ds.images.shape == (6, 32, 32, 3)
    assert tuple(ds.images[0, 16, 16]) == F.RED  # stored BGR, returned RGB
    np.testing.assert_allclose(ds.targets, truth["yaw_pitch"], atol=1e-6)
    assert ds.subjects.tolist() == truth["subjects"]
    one = mpiifacegaze.load(str(tmp_path), size=16, progress=False, subjects="p01",
                            max_per_subject="2")
    assert one.images.shape == (2, 16, 16, 3) and set(one.subjects) == {1}


def test_mpii_normalized_corrupt_label(tmp_path):
    d = tmp_path / "norm"
    d.mkdir()
    with h5py.File(d / "p00.mat", "w") as f:
        f.create_dataset("Data/data", data=np.zeros((3, 3, 8, 8), np.uint8))
        f.create_dataset("Data/label", data=np.zeros((2, 16)))
    with pytest.raises(DrmguardError, match="corrupt label"):
        mpiifacegaze.load(str(d), progress=False)


def test_mpii_gazehub_layout(tmp_path):
    truth = F.make_mpii_gazehub(tmp_path)
    ds = mpiifacegaze.load(str(tmp_path), size=32, progress=False)
    assert ds.meta["layout"] == "gazehub"
    np.testing.assert_allclose(ds.targets, truth["yaw_pitch"], atol=1e-6)  # 2DGaze = yaw,pitch
    assert ds.subjects.tolist() == truth["subjects"]
    assert ds.meta["skipped"] == {"labels without image": 2}
    assert _close_color(ds.images[0, 16, 16], F.GREEN)


@pytest.mark.parametrize("flavour", ["hysts", "xshi"])
def test_mpii_h5_layouts(tmp_path, flavour):
    path = tmp_path / "MPIIFaceGaze.h5"
    rgb = F._patch_image(16, 16, F.BLUE)
    with h5py.File(path, "w") as f:
        for k in range(2):
            f.create_dataset(f"p02/image/{k:04d}", data=rgb[..., ::-1])
            f.create_dataset(f"p02/gaze/{k:04d}", data=np.array([0.1 * k, -0.2]))  # pitch, yaw
            if flavour == "xshi":
                f.create_dataset(f"p02/left/{k:04d}", data=np.zeros((4, 4, 3), np.uint8))
    ds = mpiifacegaze.load(str(path), progress=False)
    sign = -1.0 if flavour == "xshi" else 1.0
    np.testing.assert_allclose(ds.targets, sign * np.array([[-0.2, 0.0], [-0.2, 0.1]]),
                               atol=1e-6)
    assert tuple(ds.images[0, 8, 8]) == F.BLUE and ds.subjects.tolist() == [2, 2]
    assert ds.meta["flavour"] == flavour


def _smooth_frame(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // (w - 1)), (yy * 255 // (h - 1)), np.full_like(xx, 128)],
                    -1).astype(np.uint8)


def test_normalization_straight_head_is_identity():
    """Head facing the camera straight at the normalised distance, camera = normalised camera:
    R = I, S = I, W = I, the face image is the frame itself and the gaze is gt − fc as is."""
    K = np.array([[960.0, 0, 112], [0, 960.0, 112], [0, 0, 1]])
    fc, gt = np.array([0.0, 0.0, 600.0]), np.array([-100.0, -50.0, 200.0])
    W, R, S = mpiifacegaze.normalization_warp(fc, np.zeros(3), K)
    np.testing.assert_allclose(R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(S, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(W, np.eye(3), atol=1e-12)
    frame = _smooth_frame(224, 224)
    img, (yaw, pitch) = mpiifacegaze.normalize_sample(frame, K, np.zeros(3), fc, gt)
    assert np.abs(img.astype(int) - frame).max() <= 1
    g = gt - fc  # (-100, -50, -400): towards the camera, to the image left and up
    assert yaw == pytest.approx(np.arctan2(100.0, 400.0))
    assert pitch == pytest.approx(np.arcsin(50.0 / np.linalg.norm(g)))


def test_normalization_geometry_off_axis():
    K = np.array([[700.0, 0, 160], [0, 700.0, 120], [0, 0, 1]])
    fc = np.array([80.0, -40.0, 550.0])
    rvec = np.array([0.1, -0.3, 0.2])
    W, R, S = mpiifacegaze.normalization_warp(fc, rvec, K)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ fc, [0, 0, np.linalg.norm(fc)], atol=1e-9)
    head_x = _rodrigues(rvec)[:, 0]
    assert abs(R[1] @ head_x) < 1e-12  # no roll w.r.t. the head x-axis
    # the face centre lands in the middle of the normalised image
    p = K @ fc
    q = W @ np.array([p[0] / p[2], p[1] / p[2], 1.0])
    np.testing.assert_allclose(q[:2] / q[2], [112, 112], atol=1e-9)
    frame = np.zeros((240, 320, 3), np.uint8)
    u, v = int(round(p[0] / p[2])), int(round(p[1] / p[2]))
    frame[v - 1:v + 2, u - 1:u + 2] = 255
    img = mpiifacegaze.warp_image(frame, W, (224, 224))
    peak = np.unravel_index(img[..., 0].argmax(), img.shape[:2])
    assert abs(peak[0] - 112) <= 2 and abs(peak[1] - 112) <= 2


def _rodrigues(rvec):
    th = np.linalg.norm(rvec)
    k = rvec / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx


def test_normalization_distance_scaling():
    """A face twice as far as the normalised distance is magnified twice."""
    K = np.array([[960.0, 0, 112], [0, 960.0, 112], [0, 0, 1]])
    frame = np.zeros((224, 224, 3), np.uint8)
    frame[102:122, 102:122] = 255  # 20 px square around the centre
    W, _, S = mpiifacegaze.normalization_warp([0, 0, 1200.0], np.zeros(3), K)
    assert S[2, 2] == pytest.approx(0.5)
    img = mpiifacegaze.warp_image(frame, W, (224, 224))
    rows = np.flatnonzero(img[:, 112, 0] > 127)
    assert 38 <= len(rows) <= 42


def test_warp_matches_opencv_pixel_convention():
    """warp_image == inverse mapping with pixel centres at integers (cv2.warpPerspective),
    here computed with scipy's map_coordinates as an independent reference."""
    from scipy.ndimage import map_coordinates

    frame = _smooth_frame(60, 80)
    frame[20:30, 30:45] = F.RED
    W = np.array([[1.3, 0.1, -7.0], [-0.05, 1.2, 3.0], [1e-4, -2e-4, 1.0]])
    out = mpiifacegaze.warp_image(frame, W, (50, 40))
    v, u = np.mgrid[0:40, 0:50]
    src = np.linalg.inv(W) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    xs, ys = src[0] / src[2], src[1] / src[2]
    ref = np.stack([map_coordinates(frame[..., c].astype(float), [ys, xs], order=1,
                                    mode="constant").reshape(40, 50) for c in range(3)], -1)
    inside = ((xs > 0) & (xs < 79) & (ys > 0) & (ys < 59)).reshape(40, 50)
    assert np.abs(out.astype(float) - ref)[inside].max() <= 2.0


def test_mpii_original_layout(tmp_path):
    K = np.array([[960.0, 0, 112], [0, 960.0, 112], [0, 0, 1]])
    frame = _smooth_frame(240, 260)
    frame[100:124, 100:124] = F.RED
    fc = np.array([0.0, 0.0, 600.0])
    samples = [dict(frame=frame, rvec=np.zeros(3), tvec=fc, fc=fc, gt=[-100.0, -50.0, 200.0]),
               dict(frame=None, rvec=np.zeros(3), tvec=fc, fc=fc, gt=[0, 0, 0]),
               dict(frame=frame, rvec=[0.05, 0.2, 0.0], tvec=fc, fc=[30.0, 10.0, 580.0],
                    gt=[200.0, -100.0, 0.0])]
    F.write_mpii_original_subject(tmp_path, 4, K, samples)
    ds = mpiifacegaze.load(str(tmp_path), progress=False)
    assert ds.meta["layout"] == "original" and ds.images.shape == (2, 224, 224, 3)
    assert ds.meta["skipped"] == {"labels without frame": 1}
    assert ds.subjects.tolist() == [4, 4]
    g = np.array([-100.0, -50.0, -400.0])
    np.testing.assert_allclose(ds.targets[0], [np.arctan2(100, 400),
                                               np.arcsin(50 / np.linalg.norm(g))], atol=1e-6)
    assert np.abs(ds.images[0].astype(int) - frame[:224, :224]).mean() < 3  # JPEG, W = I
    assert _close_color(ds.images[0, 112, 112], F.RED)
    # the third sample goes through the full normalisation
    _, expect = mpiifacegaze.normalize_sample(frame, K, samples[2]["rvec"], samples[2]["fc"],
                                              samples[2]["gt"])
    np.testing.assert_allclose(ds.targets[1], expect, atol=1e-6)


def test_mpii_errors(tmp_path):
    with pytest.raises(DrmguardError, match="does not exist"):
        mpiifacegaze.load(str(tmp_path / "nope"), progress=False)
    with pytest.raises(DrmguardError, match="no known layout"):
        mpiifacegaze.load(str(tmp_path), progress=False)
    F.make_mpii_gazehub(tmp_path)
    with pytest.raises(DrmguardError, match="unknown option"):
        mpiifacegaze.load(str(tmp_path), progress=False, colour="rgb")
    (tmp_path / "Label" / "p00.label").write_text("Face 2DGaze\np00/face/1.jpg 0.1,x\n")
    with pytest.raises(DrmguardError, match="corrupt label file"):
        mpiifacegaze.load(str(tmp_path), progress=False)


# --- ColumbiaGaze ------------------------------------------------------------------------
def test_columbia_names_crop_and_targets(tmp_path):
    truth = F.make_columbia(tmp_path)
    ds = columbiagaze.load(str(tmp_path), size=32, progress=False)
    assert len(ds) == 18 and ds.task == "gaze"  # junk and AppleDouble files skipped
    order = np.lexsort((ds.targets[:, 1], ds.targets[:, 0], ds.subjects))
    expect = np.lexsort((truth["targets"][:, 1], truth["targets"][:, 0], truth["subjects"]))
    np.testing.assert_allclose(ds.targets[order], truth["targets"][expect], atol=1e-7)
    assert sorted(ds.subjects.tolist()) == sorted(truth["subjects"])
    assert _close_color(ds.images[0, 16, 16], F.RED)  # centre crop holds the patch, RGB order
    full = columbiagaze.load(str(tmp_path), size=32, progress=False, crop="1.0")
    assert _close_color(full.images[0, 16, 1], F.BLUE)  # wider crop reaches the blue frame
    head = columbiagaze.load(str(tmp_path), size=16, progress=False, with_head="1")
    assert head.task == "generic" and head.target_names == ["yaw", "pitch", "head_yaw"]
    assert sorted(np.round(np.rad2deg(head.targets[:, 2])).tolist()) == sorted(
        np.round(np.rad2deg(truth["head_yaw"])).tolist())
    assert columbiagaze.parse_name("0003_2m_-30P_-10V_15H.jpg") == {
        "subject": 3, "distance_m": 2, "head_yaw": -30, "gaze_v": -10, "gaze_h": 15}
    assert columbiagaze.parse_name("._0003_2m_0P_0V_0H.jpg") is None


def test_columbia_errors(tmp_path):
    with pytest.raises(DrmguardError, match="does not exist"):
        columbiagaze.load(str(tmp_path / "missing"), progress=False)
    (tmp_path / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DrmguardError, match="no samples found"):
        columbiagaze.load(str(tmp_path), progress=False)
    with pytest.raises(DrmguardError, match="not a valid bool"):
        columbiagaze.load(str(tmp_path), progress=False, with_head="maybe")


# --- Biwi --------------------------------------------------------------------------------
def _fsanet_reference(R):
    """FSA-Net's formulas written out (TYY_create_db_biwi.py), independent of scipy."""
    M = R.T
    pitch = np.arctan2(M[2, 1], M[2, 2])
    yaw = -np.arctan2(-M[2, 0], np.sqrt(M[2, 1] ** 2 + M[2, 2] ** 2))
    roll = -np.arctan2(M[1, 0], M[0, 0])
    return np.rad2deg([yaw, pitch, roll])


def _hopenet_reference(R):
    roll = np.arctan2(R[1, 0], R[0, 0])
    yaw = np.arctan2(-R[2, 0], np.sqrt(R[2, 1] ** 2 + R[2, 2] ** 2))
    pitch = -np.arctan2(R[2, 1], R[2, 2])
    return np.rad2deg([yaw, pitch, roll])


def test_biwi_angle_conventions():
    for yaw, pitch, roll in F.BIWI_ANGLES + [(0.0, 0.0, 0.0), (70.0, -55.0, 30.0)]:
        R = F.biwi_matrix_fsanet(yaw, pitch, roll)
        np.testing.assert_allclose(biwi.rotation_to_euler(R), [yaw, pitch, roll], atol=1e-9)
        np.testing.assert_allclose(biwi.rotation_to_euler(R, "hopenet"), _hopenet_reference(R),
                                   atol=1e-9)
        for conv in biwi.CONVENTIONS:
            back = biwi.euler_to_rotation(*biwi.rotation_to_euler(R, conv), convention=conv)
            np.testing.assert_allclose(back, R, atol=1e-9)
    # the pose.txt example of the HF dataset card, through FSA-Net's own formulas
    R = np.array([[0.988397, 0.0731349, 0.133128], [-0.0441539, 0.976945, -0.208876],
                  [-0.145334, 0.200575, 0.968838]])
    np.testing.assert_allclose(biwi.rotation_to_euler(R), _fsanet_reference(R), atol=1e-3)
    # the two conventions agree only for small angles
    small = F.biwi_matrix_fsanet(2.0, -1.0, 1.5)
    assert np.abs(biwi.rotation_to_euler(small) - biwi.rotation_to_euler(small, "hopenet")
                  ).max() < 0.2


def test_biwi_original_layout(tmp_path):
    truth = F.make_biwi(tmp_path)
    ds = biwi.load(str(tmp_path), size=32, progress=False)
    assert ds.task == "headpose" and ds.target_names == ["yaw", "pitch", "roll"]
    np.testing.assert_allclose(ds.targets, truth["angles"], atol=1e-3)
    assert ds.subjects.tolist() == truth["subjects"]
    assert ds.meta["skipped"] == {"frames without pose": 3, "poses without frame": 3}
    for img in ds.images:  # the crop is centred on the projected head centre
        assert _close_color(img[16, 16], F.GREEN)
        assert _close_color(img[1, 1], (90, 90, 90))
    hop = biwi.load(str(tmp_path / "hpdb"), size=16, progress=False, convention="hopenet",
                    crop="none")
    expect = [_hopenet_reference(F.biwi_matrix_fsanet(*a)) for a in truth["angles"]]
    np.testing.assert_allclose(hop.targets, expect, atol=1e-3)
    assert hop.images.shape == (9, 16, 16, 3)


def test_biwi_default_size_and_projection(tmp_path):
    truth = F.make_biwi(tmp_path, sequences=(5,))
    ds = biwi.load(str(tmp_path), progress=False)
    assert ds.images.shape[1:] == (112, 112, 3)
    cal = biwi.read_calibration(tmp_path / "hpdb" / "05" / "rgb.cal")
    np.testing.assert_allclose(cal[2], F.BIWI_T_RGB)
    _, center = biwi.read_pose(tmp_path / "hpdb" / "05" / "frame_00003_pose.txt")
    u, v, _ = biwi.project_to_rgb(center, cal)
    np.testing.assert_allclose((u, v), truth["head_pixel"][0], atol=1e-9)


def test_biwi_corrupt_pose(tmp_path):
    F.make_biwi(tmp_path, sequences=(1,))
    (tmp_path / "hpdb" / "01" / "frame_00004_pose.txt").write_text("1 0 0\n0 1 0\n0 0\n\n1 2 3\n")
    with pytest.raises(DrmguardError, match="frame_00004_pose.txt"):
        biwi.load(str(tmp_path), progress=False)


def test_biwi_poseidon_layout(tmp_path):
    truth = F.make_biwi_poseidon(tmp_path)
    ds = biwi.load(str(tmp_path / "face_dataset_large"), progress=False)
    assert ds.meta["layout"] == "poseidon" and ds.meta["image"] == "depth"
    # angles.txt columns are frame, roll, pitch, yaw: the output is (yaw, pitch, roll)
    np.testing.assert_allclose(ds.targets, truth["angles"], atol=1e-4)
    assert ds.subjects.tolist() == truth["subjects"]
    assert ds.meta["skipped"] == {"labels without image": 2}
    assert ds.images.shape == (6, 20, 20, 3)
    assert (ds.images[..., 0] == ds.images[..., 2]).all()  # grey replicated
    with pytest.raises(DrmguardError, match="face_rgb"):
        biwi.load(str(tmp_path / "face_dataset_large"), progress=False, image="rgb")


# --- Pandora -----------------------------------------------------------------------------
def test_pandora_json_pickle_and_head_crop(tmp_path):
    truth = F.make_pandora(tmp_path)
    ds = pandora.load(str(tmp_path), size=32, progress=False)
    assert ds.task == "headpose" and ds.meta["crops"] == {"head": 8}
    np.testing.assert_allclose(ds.targets, truth["angles"], atol=1e-6)
    assert ds.subjects.tolist() == truth["subjects"]  # subject 18 came from data.p
    assert ds.meta["skipped"] == {"labels without image": 4, "images without label": 4}
    for img in ds.images:
        assert _close_color(img[16, 16], F.BLUE)
    native = pandora.load(str(tmp_path), progress=False, subjects="1")
    assert native.images.shape == (2, pandora.DEFAULT_SIZE, pandora.DEFAULT_SIZE, 3)


def test_pandora_euler_keys_and_centre_crop(tmp_path):
    truth = F.make_pandora(tmp_path, subjects=(3,), pickle_subjects=())
    ds = pandora.load(str(tmp_path), size=16, progress=False, euler_keys="roll,-yaw,pitch",
                      crop="center")
    yaw, pitch, roll = truth["angles"].T
    np.testing.assert_allclose(ds.targets, np.stack([roll, -yaw, pitch], 1), atol=1e-6)
    assert ds.meta["crops"] == {"center": 2}
    with pytest.raises(DrmguardError, match="euler_keys"):
        pandora.load(str(tmp_path), progress=False, euler_keys="yaw,yaw,roll")


class _Canary:
    def __reduce__(self):
        import builtins
        return (builtins.exec, ("open(__import__('os').environ['CANARY'], 'w').write('x')",))


def test_pandora_pickle_cannot_run_code(tmp_path, monkeypatch):
    F.make_pandora(tmp_path, subjects=(1,), pickle_subjects=(1,))
    canary = tmp_path / "pwned"
    monkeypatch.setenv("CANARY", str(canary))
    seq = tmp_path / "pandora" / "01" / "base_1_ID01"
    (seq / "data.p").write_bytes(pickle.dumps([{"frame_num": 10, "x": _Canary()}]))
    with pytest.raises(DrmguardError, match="refusing to load builtins.exec"):
        pandora.load(str(tmp_path), progress=False)
    assert not canary.exists()
    (seq / "data.p").write_bytes(pickle.dumps(np.float64(1.0)))
    with pytest.raises(DrmguardError, match="refusing to load"):
        pandora.load(str(tmp_path), progress=False)


def test_pandora_small_images_are_not_cropped(tmp_path):
    truth = F.make_pandora(tmp_path, subjects=(20,), size=(48, 64), pickle_subjects=())
    ds = pandora.load(str(tmp_path), progress=False)
    assert ds.images.shape == (2, 48, 64, 3) and ds.meta["crops"] == {"none": 2}
    np.testing.assert_allclose(ds.targets, truth["angles"], atol=1e-6)


# --- spec strings ------------------------------------------------------------------------
def test_load_dataset_spec_with_options(tmp_path):
    truth = F.make_biwi(tmp_path, sequences=(2,))
    ds = load_dataset(f"biwi:{tmp_path}?convention=hopenet&size=24&crop_mm=300",
                      progress=False)
    assert ds.images.shape == (3, 24, 24, 3) and ds.meta["convention"] == "hopenet"
    expect = [_hopenet_reference(F.biwi_matrix_fsanet(*a)) for a in truth["angles"]]
    np.testing.assert_allclose(ds.targets, expect, atol=1e-3)
    with pytest.raises(DrmguardError, match="convention"):
        load_dataset(f"biwi:{tmp_path}?convention=euler", progress=False)


# --- protocols ---------------------------------------------------------------------------
def _toy(subjects, per=4, name="toy"):
    subj = np.repeat(np.asarray(subjects), per)
    n = len(subj)
    return ArrayDataset(np.zeros((n, 2, 2, 3), np.uint8), np.arange(n, dtype=np.float32), "generic",
                        subj, ["y"], {"dataset": name})


def _check_disjoint(sp, all_subjects):
    test = set(sp.test.subjects.tolist())
    rest = set(sp.train.subjects.tolist()) | set(sp.benign.subjects.tolist())
    assert test and not (test & rest)
    assert test | rest == set(all_subjects)
    ids = np.concatenate([sp.train.targets[:, 0], sp.benign.targets[:, 0], sp.test.targets[:, 0]])
    assert len(ids) == len(set(ids.tolist()))  # no sample in two parts
    return test


def test_protocol_loso():
    ds = _toy(range(15), name="mpiifacegaze")
    assert n_folds(ds) == 15
    seen = set()
    for fold in range(15):
        sp = leave_one_subject_out(ds, fold, benign_ratio=0.1, seed=3)
        test = _check_disjoint(sp, range(15))
        assert len(test) == 1 and len(sp.benign) == 6
        seen |= test
    assert seen == set(range(15))
    with pytest.raises(DrmguardError, match="fold"):
        leave_one_subject_out(ds, 15)


def test_protocol_kfold_and_sequence_and_pandora():
    ds = _toy(range(1, 57), per=2, name="columbiagaze")
    tests = [_check_disjoint(subject_kfold(ds, f, k=5), range(1, 57)) for f in range(5)]
    assert sum(len(t) for t in tests) == 56 and len(set().union(*tests)) == 56
    shuffled = subject_kfold(ds, 0, k=5, shuffle=True, seed=1)
    _check_disjoint(shuffled, range(1, 57))

    bw = _toy(range(1, 25), name="biwi")
    sp = sequence_split(bw, seed=7)
    test = _check_disjoint(sp, range(1, 25))
    assert len(test) == 8  # 16 training sequences, 8 test sequences
    assert sequence_split(bw, seed=7).test.subjects.tolist() == sp.test.subjects.tolist()
    assert set(sequence_split(bw, seed=8).test.subjects.tolist()) != test

    pd = _toy(range(1, 23), name="pandora")
    test = _check_disjoint(pandora_split(pd), range(1, 23))
    assert test == set(range(18, 23))


def test_protocol_random_and_dispatch():
    ds = _toy(range(10), per=10, name="biwi")
    sp = paper_random_split(ds, seed=0, train=0.7, benign=0.1)
    assert (len(sp.train), len(sp.benign), len(sp.test)) == (70, 10, 20)
    assert protocol_splits(ds, "standard", seed=7).test.subjects.tolist() == \
        sequence_split(ds, seed=7).test.subjects.tolist()
    assert len(protocol_splits(ds, "random", seed=1, benign=0.05).benign) == 5
    with pytest.raises(DrmguardError, match="takes no option"):
        protocol_splits(ds, "loso", k=3)
    with pytest.raises(DrmguardError, match="no standard protocol"):
        protocol_splits(_toy(range(5)), "standard")


# --- CLI ---------------------------------------------------------------------------------
FIXTURES = {
    "mpiifacegaze": (F.make_mpii_gazehub, "", 6),
    "columbiagaze": (F.make_columbia, "", 18),
    "biwi": (F.make_biwi, "", 9),
    "pandora": (F.make_pandora, "", 8),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_cli_convert_and_train(tmp_path, name):
    cli = pytest.importorskip("drmguard.cli")
    make, _, n = FIXTURES[name]
    make(tmp_path / "src")
    spec = f"{name}:{tmp_path / 'src'}?size=32"
    out = tmp_path / "converted"
    assert cli.main(["data", "convert", spec, "--out", str(out), "--quiet"]) == 0
    rows = (out / "labels.csv").read_text().strip().splitlines()
    assert len(rows) == n + 1
    back = load_dataset(str(out), progress=False)
    assert back.images.shape[1:] == (32, 32, 3) and back.subjects is not None
    model = tmp_path / "model"
    assert cli.main(["train", "--data", spec, "--profile", "tiny", "--out", str(model),
                     "--quiet"]) == 0
    assert any(model.iterdir())


def test_cli_reports_loader_errors(tmp_path):
    cli = pytest.importorskip("drmguard.cli")
    assert cli.main(["data", "convert", f"biwi:{tmp_path / 'none'}", "--out",
                     str(tmp_path / "o")]) == 2
