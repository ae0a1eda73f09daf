"""The data every experiment of a (task, profile) shares: a seeded synthetic dataset split by
subject into training set, defender's benign set D_b, and test set; for the ``classification``
task scikit-learn's digits (the profile's first ``n_samples`` images at its size), split by
sample (:data:`DIGITS_SPLIT_RATIOS`)."""

from __future__ import annotations

from functools import lru_cache

from ..data.base import Splits, split_dataset
from ..errors import DrmguardError
from ..profiles import get_profile
from ..tasks import Task, get_task

SPLIT_RATIOS = (0.8, 0.1, 0.1)
DIGITS_SPLIT_RATIOS = (0.7, 0.1, 0.2)  # 1,797 digits: 1,258 train, 180 D_b, 359 test


@lru_cache(maxsize=4)
def synthetic_splits(task: str, profile: str = "cpu", seed: int = 0) -> Splits:
    """Synthetic data of ``task`` at the profile's size, split by subject (seeded)."""
    from ..data.synthetic import synth_gaze, synth_headpose

    if task == "classification":
        from ..data.digits import load as load_digits

        prof = get_profile(profile)
        ds = load_digits(size=prof.size_for(task), limit=prof.n_samples)
        return split_dataset(ds, DIGITS_SPLIT_RATIOS, by_subject=False, seed=seed)
    makers = {"gaze": synth_gaze, "headpose": synth_headpose}
    if task not in makers:
        raise DrmguardError(f"no synthetic data for task '{task}'")
    prof = get_profile(profile)
    ds = makers[task](prof.n_samples, size=prof.size_for(task), subjects=prof.subjects,
                      seed=seed)
    return split_dataset(ds, SPLIT_RATIOS, by_subject=True, seed=seed)


def experiment_task(task: str) -> Task:
    """The :class:`~drmguard.tasks.Task` of an experiment's data: ``classification`` has the
    digits' 10 classes."""
    if task == "classification":
        from ..data.digits import NUM_CLASSES

        return get_task(task, dim=NUM_CLASSES)
    return get_task(task)
