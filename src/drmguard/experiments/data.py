"""The data every experiment of a (task, profile) shares: a seeded synthetic dataset split by
subject into training set, defender's benign set D_b, and test set."""

from __future__ import annotations

from functools import lru_cache

from ..data.base import Splits, split_dataset
from ..errors import DrmguardError
from ..profiles import get_profile

SPLIT_RATIOS = (0.8, 0.1, 0.1)


@lru_cache(maxsize=4)
def synthetic_splits(task: str, profile: str = "cpu", seed: int = 0) -> Splits:
    """Synthetic data of ``task`` at the profile's size, split by subject (seeded)."""
    from ..data.synthetic import synth_gaze, synth_headpose

    makers = {"gaze": synth_gaze, "headpose": synth_headpose}
    if task not in makers:
        raise DrmguardError(f"no synthetic data for task '{task}'")
    prof = get_profile(profile)
    ds = makers[task](prof.n_samples, size=prof.size_for(task), subjects=prof.subjects,
                      seed=seed)
    return split_dataset(ds, SPLIT_RATIOS, by_subject=True, seed=seed)
