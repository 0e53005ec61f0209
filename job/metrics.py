"""Segmentation metrics from a confusion matrix (pure numpy).

Rows are ground truth, columns predictions. IoU = diag / (row + col - diag); mIoU is the mean
over classes whose union is non-empty (classes absent from both labels and predictions are nan
and do not count), as in the DeepLabV3 evaluation.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; pixels labelled ``ignore_label`` are dropped.

    Raises ValueError for shape mismatches and for labels or predictions outside
    ``0..num_classes-1`` (other than the ignore label): silently dropping them, as the zoo
    did, hides a wrong ``num_classes``.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    label = label.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    keep = label != ignore_label
    label, pred = label[keep], pred[keep]
    for name, values in (("label", label), ("prediction", pred)):
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise ValueError(
                f"{name} values {sorted(set(values[bad].tolist()))[:10]} outside 0..{num_classes - 1}"
                f" (ignore label {ignore_label})"
            )
    counts = np.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """float64 IoU per class; nan where the class is in neither labels nor predictions."""
    matrix = np.asarray(matrix, dtype=np.float64)
    diag = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, diag / np.where(union > 0, union, 1), np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """nan-mean of the per-class IoU; nan when no class is present at all."""
    iou = iou_per_class(matrix)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


class ConfusionMatrix:
    """Accumulates a confusion matrix image by image."""

    def __init__(self, num_classes: int, ignore_label: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        self.matrix += confusion_matrix(pred, label, self.num_classes, self.ignore_label)

    def iou(self) -> np.ndarray:
        return iou_per_class(self.matrix)

    def miou(self) -> float:
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        """Fraction of labelled pixels predicted correctly; nan with no labelled pixel."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")
