"""Attack targets drawn away from the label mean (experiments.zoo.draw_target)."""

import numpy as np
import pytest

from drmguard.data.synthetic import synth_gaze, synth_headpose
from drmguard.errors import DrmguardError
from drmguard.experiments.zoo import ModelSpec, draw_target


def _sd_distance(y: np.ndarray, t) -> float:
    return float(np.linalg.norm((np.asarray(t) - y.mean(0)) / y.std(0)))


@pytest.mark.parametrize("gen", [synth_gaze, synth_headpose])
def test_targets_are_training_labels_away_from_the_mean(gen):
    y = gen(400, size=8, subjects=5, seed=0).targets
    near = np.linalg.norm((y - y.mean(0)) / y.std(0), axis=1) < 1
    assert near.mean() > 0.05  # plenty of labels a plain random draw could pick
    for seed in range(40):
        for t in draw_target(y, seed, count=2):
            assert _sd_distance(y, t) >= 1.0
            assert any(np.array_equal(np.float32(t), row) for row in y)  # a real label
    assert draw_target(y, 3, count=2) == draw_target(y, 3, count=2)  # seeded
    assert draw_target(y, 3) != draw_target(y, 4)
    assert _sd_distance(y, draw_target(y, 0, min_sd=1.5)[0]) >= 1.5


def test_too_few_labels_far_from_the_mean():
    y = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0]], dtype=np.float32)  # two at 1.22 sd
    assert len(draw_target(y, 0, count=2)) == 2
    with pytest.raises(DrmguardError):
        draw_target(y, 0, count=3)
    with pytest.raises(DrmguardError):
        draw_target(y, 0, min_sd=2.0)


def test_constant_component_does_not_divide_by_zero():
    y = np.stack([np.linspace(-1, 1, 50), np.zeros(50)], 1).astype(np.float32)
    assert abs(draw_target(y, 0)[0][0]) >= y[:, 0].std()


def test_target_rule_in_backdoored_model_keys(monkeypatch):
    import drmguard.experiments.zoo as zoo

    benign, trojan = ModelSpec("gaze", "tiny"), ModelSpec("gaze", "tiny", "badnets", 0)
    keys = benign.key(), trojan.key()
    monkeypatch.setattr(zoo, "TARGET_MIN_SD", 2.0)
    assert benign.key() == keys[0] and trojan.key() != keys[1]
