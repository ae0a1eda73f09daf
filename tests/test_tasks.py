import math

import numpy as np
import pytest
import torch

from drmguard.errors import DrmguardError
from drmguard.tasks import GAZE, HEADPOSE, gaze_to_vector, get_task, vector_to_gaze


def test_gaze_vector_conventions():
    # straight at the camera: (0, 0, -1)
    v = gaze_to_vector(np.array([0.0, 0.0]))
    np.testing.assert_allclose(v, [0, 0, -1], atol=1e-12)
    # yaw +90°: x = -sin(yaw) = -1
    np.testing.assert_allclose(gaze_to_vector(np.array([math.pi / 2, 0.0])), [-1, 0, 0], atol=1e-12)
    # pitch +90°: y = -1
    np.testing.assert_allclose(gaze_to_vector(np.array([0.0, math.pi / 2])), [0, -1, 0], atol=1e-12)
    yp = np.array([[0.3, -0.2], [-0.5, 0.4]])
    np.testing.assert_allclose(vector_to_gaze(gaze_to_vector(yp)), yp, atol=1e-12)
    t = torch.tensor(yp)
    torch.testing.assert_close(vector_to_gaze(gaze_to_vector(t)), t)


def test_angular_error_hand_computed():
    pred = torch.tensor([[0.0, 0.0], [math.radians(10), 0.0], [0.0, math.radians(-7)]])
    true = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    err = GAZE.error(pred, true)
    torch.testing.assert_close(err, torch.tensor([0.0, 10.0, 7.0]), atol=1e-4, rtol=0)
    # yaw and pitch both 10°: angle = arccos(cos10·cos10)
    e = GAZE.error(torch.tensor([[math.radians(10), math.radians(10)]]), torch.zeros(1, 2))
    expected = math.degrees(math.acos(math.cos(math.radians(10)) ** 2))
    assert abs(float(e) - expected) < 1e-4


def test_headpose_and_generic_error():
    pred = torch.tensor([[10.0, -5.0, 3.0]])
    true = torch.tensor([[7.0, -1.0, 3.0]])
    assert float(HEADPOSE.error(pred, true)) == pytest.approx((3 + 4 + 0) / 3)
    g = get_task("generic", dim=2)
    assert float(g.error(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))) == 1.5
    assert float(g.loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))) == 1.5


def test_task_errors():
    with pytest.raises(DrmguardError):
        get_task("nope")
    with pytest.raises(DrmguardError):
        get_task("gaze", dim=3)
    with pytest.raises(DrmguardError):
        get_task("generic")
    with pytest.raises(DrmguardError):
        GAZE.error(torch.zeros(2, 3), torch.zeros(2, 3))
