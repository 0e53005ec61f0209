"""Confusion-matrix metrics against an independent boolean-mask reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from job.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou

IGNORE = 255


def reference_iou(pred: np.ndarray, label: np.ndarray, num_classes: int) -> list[float]:
    """Per-class |P ∩ L| / |P ∪ L| over labelled pixels, from boolean masks (no confusion matrix)."""
    valid = label != IGNORE
    result = []
    for cls in range(num_classes):
        p, t = (pred == cls) & valid, (label == cls) & valid
        union = np.logical_or(p, t).sum()
        result.append(np.logical_and(p, t).sum() / union if union else math.nan)
    return result


@st.composite
def pred_label(draw) -> tuple[np.ndarray, np.ndarray, int]:
    num_classes = draw(st.integers(1, 6))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    pred = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, num_classes - 1)))
    label = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, num_classes - 1) | st.just(IGNORE)))
    return pred, label, num_classes


@settings(max_examples=200, deadline=None)
@given(pred_label())
def test_iou_matches_boolean_mask_reference(case) -> None:
    pred, label, num_classes = case
    matrix = confusion_matrix(pred, label, num_classes, IGNORE)
    np.testing.assert_allclose(iou_per_class(matrix), reference_iou(pred, label, num_classes), equal_nan=True)
    expected = np.array(reference_iou(pred, label, num_classes))
    present = ~np.isnan(expected)
    if present.any():
        assert mean_iou(matrix) == pytest.approx(expected[present].mean())
    else:
        assert math.isnan(mean_iou(matrix))
    assert matrix.sum() == (label != IGNORE).sum()  # ignored pixels dropped, nothing else


@settings(max_examples=50, deadline=None)
@given(pred_label(), pred_label())
def test_accumulating_images_equals_one_concatenated_image(first, second) -> None:
    num_classes = max(first[2], second[2])
    accumulator = ConfusionMatrix(num_classes, IGNORE)
    accumulator.update(first[0], first[1])
    accumulator.update(second[0], second[1])
    joined = confusion_matrix(
        np.concatenate([first[0].ravel(), second[0].ravel()]),
        np.concatenate([first[1].ravel(), second[1].ravel()]),
        num_classes,
        IGNORE,
    )
    np.testing.assert_array_equal(accumulator.matrix, joined)


def test_hand_computed_example() -> None:
    label = np.array([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    metrics = ConfusionMatrix(4, IGNORE)
    metrics.update(pred, label)
    # class 0: TP 1, union {(0,0),(0,1),(1,1)} = 3; class 1: TP 2, union 3; class 2: TP 1, union 2; 3 absent.
    np.testing.assert_allclose(metrics.iou(), [1 / 3, 2 / 3, 1 / 2, np.nan], equal_nan=True)
    assert metrics.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics.pixel_accuracy() == pytest.approx(4 / 6)


def test_out_of_range_values_are_errors_not_silently_dropped() -> None:
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix(np.zeros(3, int), np.array([0, 5, IGNORE]), 4, IGNORE)
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix(np.array([0, 4, 0]), np.zeros(3, int), 4, IGNORE)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 4, IGNORE)


def test_no_labelled_pixel_gives_nan() -> None:
    metrics = ConfusionMatrix(3, IGNORE)
    metrics.update(np.zeros((2, 2), int), np.full((2, 2), IGNORE))
    assert np.isnan(metrics.iou()).all()
    assert math.isnan(metrics.miou())
