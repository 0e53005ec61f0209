"""Learning-rate schedules at chosen steps, against values worked out by hand from FACTS' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from job.schedules import learning_rates


def test_cosine_at_start_quarter_half_and_end():
    lrs = learning_rates("cos", 0.08, 100)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(0.08)
    assert lrs[25] == pytest.approx(0.08 * 0.5 * (1 + math.sqrt(0.5)), rel=1e-6)  # cos(pi/4)
    assert lrs[50] == pytest.approx(0.04, rel=1e-6)
    assert lrs[99] == pytest.approx(0.08 * 0.5 * (1 + math.cos(math.pi * 0.99)), rel=1e-5)
    assert bool(np.all(np.diff(lrs) <= 0))


def test_poly_with_end_lr():
    lrs = learning_rates("poly", 0.02, 10, end_lr=0.001)
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[5] == pytest.approx(0.019 * 0.5**0.9 + 0.001, rel=1e-6)
    assert lrs[9] == pytest.approx(0.019 * 0.1**0.9 + 0.001, rel=1e-6)


def test_exp_is_a_staircase():
    lrs = learning_rates("exp", 0.1, 100, decay_steps=40, decay_rate=0.1)
    assert lrs[0] == lrs[39] == pytest.approx(0.1)
    assert lrs[40] == lrs[79] == pytest.approx(0.01)
    assert lrs[80] == pytest.approx(0.001)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError):
        learning_rates("step", 0.1, 10)
    with pytest.raises(ValueError):
        learning_rates("cos", 0.1, 0)
