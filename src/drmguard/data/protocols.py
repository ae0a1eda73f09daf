"""Evaluation protocols of the four real datasets, each returning ``Splits(train, benign, test)``.

- ``random`` — the DRMGuard paper: a seeded random split of the *images* into the training set
  D_t, the defender's benign set D_b and the test set (the paper's exact percentages were lost
  from the text; the default 0.8 / 0.1 / 0.1 is drmguard's, change it with ``train=``,
  ``benign=``).
- ``loso`` — MPIIFaceGaze: leave one subject out (15 folds, fold i tests on the i-th subject).
- ``kfold`` — ColumbiaGaze: k folds over subjects (default 5, contiguous groups of sorted ids as
  public code does; ``shuffle=True`` permutes subjects with the seed first).
- ``sequence`` — Biwi protocol 2 (FSA-Net): a seeded random permutation of the sequences,
  the first ⌊70 %⌋ (16 of 24) for training, the rest (8) for testing.
- ``pandora`` — subjects 01–17 for training, 18–22 for testing (a public loader's split).

In the subject-wise protocols the test set shares no subject with the rest; the benign set is a
seeded fraction ``benign_ratio`` of the remaining (training-subject) images, so D_b and D_t may
share subjects but never with the test set.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import DrmguardError
from .base import ArrayDataset, Splits, split_dataset

PROTOCOLS = ("random", "loso", "kfold", "sequence", "pandora")
STANDARD = {"mpiifacegaze": "loso", "columbiagaze": "kfold", "biwi": "sequence",
            "pandora": "pandora"}
PANDORA_TEST_SUBJECTS = tuple(range(18, 23))


def _subjects(ds: ArrayDataset, protocol: str) -> np.ndarray:
    if ds.subjects is None:
        raise DrmguardError(f"protocol {protocol} needs subject ids in the dataset")
    return np.unique(ds.subjects)


def _with_benign(ds: ArrayDataset, test_mask: np.ndarray, benign_ratio: float,
                 seed: int) -> Splits:
    """Test = ``test_mask``; benign = a seeded ``benign_ratio`` of the rest; train = the rest."""
    if not 0 <= benign_ratio < 1:
        raise DrmguardError(f"benign_ratio must be in [0, 1), got {benign_ratio}")
    pool = np.flatnonzero(~test_mask)
    test = np.flatnonzero(test_mask)
    if len(pool) == 0 or len(test) == 0:
        raise DrmguardError(f"split leaves {len(pool)} training and {len(test)} test images")
    perm = np.random.default_rng(seed).permutation(pool)
    nb = int(round(len(pool) * benign_ratio))
    if benign_ratio > 0 and nb == 0 and len(pool) > 1:
        nb = 1
    return Splits(ds.subset(np.sort(perm[nb:])), ds.subset(np.sort(perm[:nb])), ds.subset(test))


def paper_random_split(ds: ArrayDataset, seed: int = 0, train: float = 0.8,
                       benign: float = 0.1) -> Splits:
    """The paper's protocol: random images for D_t and D_b, the remainder for testing."""
    if train <= 0 or benign < 0 or train + benign >= 1:
        raise DrmguardError(f"need train > 0, benign >= 0 and train + benign < 1, got "
                            f"{train}, {benign}")
    return split_dataset(ds, (train, benign, 1.0 - train - benign), by_subject=False, seed=seed)


def leave_one_subject_out(ds: ArrayDataset, fold: int, benign_ratio: float = 0.1,
                          seed: int = 0) -> Splits:
    """Fold ``fold`` tests on the fold-th subject (in sorted id order)."""
    subj = _subjects(ds, "loso")
    if not 0 <= fold < len(subj):
        raise DrmguardError(f"loso fold must be in 0..{len(subj) - 1}, got {fold}")
    return _with_benign(ds, ds.subjects == subj[fold], benign_ratio, seed)


def subject_kfold(ds: ArrayDataset, fold: int, k: int = 5, benign_ratio: float = 0.1,
                  seed: int = 0, shuffle: bool = False) -> Splits:
    """Fold ``fold`` of ``k`` subject-disjoint folds (sorted ids in contiguous groups)."""
    subj = _subjects(ds, "kfold")
    if not 2 <= k <= len(subj):
        raise DrmguardError(f"kfold needs 2 <= k <= {len(subj)} subjects, got k={k}")
    if not 0 <= fold < k:
        raise DrmguardError(f"kfold fold must be in 0..{k - 1}, got {fold}")
    if shuffle:
        subj = np.random.default_rng(seed).permutation(subj)
    groups = np.array_split(subj, k)
    return _with_benign(ds, np.isin(ds.subjects, groups[fold]), benign_ratio, seed)


def sequence_split(ds: ArrayDataset, seed: int = 0, train_fraction: float = 0.7,
                   benign_ratio: float = 0.1) -> Splits:
    """Biwi protocol 2: ⌊train_fraction · n⌋ random sequences train, the others test."""
    seqs = _subjects(ds, "sequence")
    n_train = int(np.floor(len(seqs) * train_fraction + 1e-9))
    if not 1 <= n_train < len(seqs):
        raise DrmguardError(f"sequence split of {len(seqs)} sequences with fraction "
                            f"{train_fraction} leaves an empty side")
    test_seqs = np.random.default_rng(seed).permutation(seqs)[n_train:]
    return _with_benign(ds, np.isin(ds.subjects, test_seqs), benign_ratio, seed)


def fixed_subject_split(ds: ArrayDataset, test_subjects: Iterable[int],
                        benign_ratio: float = 0.1, seed: int = 0) -> Splits:
    """Test on the listed subjects, train (and draw D_b) from all the others."""
    _subjects(ds, "fixed subject split")
    test_subjects = np.asarray(list(test_subjects), dtype=np.int64)
    return _with_benign(ds, np.isin(ds.subjects, test_subjects), benign_ratio, seed)


def pandora_split(ds: ArrayDataset, benign_ratio: float = 0.1, seed: int = 0) -> Splits:
    """Pandora: subjects 01–17 train, 18–22 test."""
    return fixed_subject_split(ds, PANDORA_TEST_SUBJECTS, benign_ratio, seed)


def n_folds(ds: ArrayDataset, protocol: str = "standard", k: int = 5) -> int:
    """How many folds a protocol has on ``ds`` (1 for single-split protocols)."""
    protocol = _resolve(ds, protocol)
    if protocol == "loso":
        return len(_subjects(ds, protocol))
    return k if protocol == "kfold" else 1


def _resolve(ds: ArrayDataset, protocol: str) -> str:
    if protocol == "standard":
        name = ds.meta.get("dataset")
        if name not in STANDARD:
            raise DrmguardError(f"no standard protocol for dataset {name!r}; choose one of "
                                f"{', '.join(PROTOCOLS)}")
        return STANDARD[name]
    if protocol not in PROTOCOLS:
        raise DrmguardError(f"unknown protocol '{protocol}' (choose standard or "
                            f"{', '.join(PROTOCOLS)})")
    return protocol


def protocol_splits(ds: ArrayDataset, protocol: str = "standard", fold: int = 0,
                    seed: int = 0, benign_ratio: float = 0.1, **kwargs) -> Splits:
    """Dispatch by protocol name; ``standard`` uses the dataset's own protocol
    (``ds.meta['dataset']``). Extra keyword arguments go to the protocol function (``k``,
    ``shuffle``, ``train_fraction``, or ``train``/``benign`` for ``random``)."""
    protocol = _resolve(ds, protocol)
    extra = {"random": {"train", "benign"}, "loso": set(), "kfold": {"k", "shuffle"},
             "sequence": {"train_fraction"}, "pandora": set()}[protocol]
    unknown = sorted(set(kwargs) - extra)
    if unknown:
        raise DrmguardError(f"protocol {protocol} takes no option(s) {', '.join(unknown)}")
    if protocol == "random":
        return paper_random_split(ds, seed=seed, **kwargs)
    if protocol == "loso":
        return leave_one_subject_out(ds, fold, benign_ratio, seed)
    if protocol == "kfold":
        return subject_kfold(ds, fold, benign_ratio=benign_ratio, seed=seed, **kwargs)
    if protocol == "sequence":
        return sequence_split(ds, seed=seed, benign_ratio=benign_ratio, **kwargs)
    return pandora_split(ds, benign_ratio, seed)
