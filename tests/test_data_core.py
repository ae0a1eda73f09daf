import numpy as np
import pytest

from drmguard.data import load_dataset, save_folder, save_npz, split_dataset
from drmguard.data.base import ArrayDataset
from drmguard.errors import DrmguardError


def test_folder_roundtrip(tmp_path, toy_dataset):
    save_folder(toy_dataset, tmp_path / "d", progress=False)
    back = load_dataset(str(tmp_path / "d"), progress=False)
    np.testing.assert_array_equal(back.images, toy_dataset.images)
    np.testing.assert_allclose(back.targets, toy_dataset.targets, rtol=1e-6)
    np.testing.assert_array_equal(back.subjects, toy_dataset.subjects)
    assert back.target_names == ["a", "b"] and back.task == "generic"
    sel = load_dataset(str(tmp_path / "d"), columns=["b"], progress=False)
    np.testing.assert_allclose(sel.targets[:, 0], toy_dataset.targets[:, 1], rtol=1e-6)
    with pytest.raises(DrmguardError):
        save_folder(toy_dataset, tmp_path / "d", progress=False)  # never overwrite


def test_npz_roundtrip(tmp_path, toy_dataset):
    p = save_npz(toy_dataset, tmp_path / "d.npz")
    back = load_dataset(str(p))
    np.testing.assert_array_equal(back.images, toy_dataset.images)
    np.testing.assert_array_equal(back.targets, toy_dataset.targets)
    np.testing.assert_array_equal(back.subjects, toy_dataset.subjects)
    assert back.target_names == ["a", "b"]


def test_dataset_item_and_tensors(toy_dataset):
    x, y = toy_dataset[3]
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y.shape == (2,)
    xb, yb = toy_dataset.tensors([0, 3])
    assert xb.shape == (2, 3, 16, 16)
    # plain NCHW memory, not a channels-last view (see data.base.float_images)
    assert xb.is_contiguous() and xb.stride() == (768, 256, 16, 1)
    np.testing.assert_allclose(xb[1].numpy(), x.numpy())


def test_bad_targets_rejected():
    with pytest.raises(DrmguardError, match="NaN"):
        ArrayDataset(np.zeros((2, 8, 8, 3), np.uint8), np.array([[1.0], [np.nan]]))
    with pytest.raises(DrmguardError):
        ArrayDataset(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 1)))


def test_split_by_subject_leaks_no_subject(toy_dataset):
    s = split_dataset(toy_dataset, (0.6, 0.2, 0.2), by_subject=True, seed=3)
    parts = [set(p.subjects.tolist()) for p in (s.train, s.benign, s.test)]
    assert all(parts)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(len(p) for p in (s.train, s.benign, s.test)) == len(toy_dataset)
    again = split_dataset(toy_dataset, (0.6, 0.2, 0.2), by_subject=True, seed=3)
    np.testing.assert_array_equal(again.test.subjects, s.test.subjects)


def test_split_by_ratio(toy_dataset):
    s = split_dataset(toy_dataset, (0.8, 0.1, 0.1), seed=0)
    assert (len(s.train), len(s.benign), len(s.test)) == (48, 6, 6)
    with pytest.raises(DrmguardError):
        split_dataset(toy_dataset, (1, -1, 1))
