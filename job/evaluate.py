"""Multi-scale, optionally flipped, evaluation: mIoU over a list file (and optional prediction PNGs).

The protocol is the MindSpore model zoo's DeepLabV3 ``eval.py`` (FACTS 1), with its scale
semantics made explicit:

* A scale ``s`` selects a square canvas of side ``int((crop_size - 1) * s) + 1`` (513 -> 257, 385,
  513, 641, 897 for 0.5, 0.75, 1.0, 1.25, 1.75: the "output-stride friendly" 8k+1 sizes the zoo
  used). The image's long side is resized to that side (bilinear; short side truncated), then
  normalised and zero-padded bottom/right to the square. So "resize long side to crop size" is
  the scale-1.0 case and other scales change the canvas, not a resize of the original image.
* The network's logits go through a softmax over classes; with ``flip`` the horizontally flipped
  canvas is also run and its (re-flipped) probabilities are added.
* Probabilities are cropped back to the resized region, resized (bilinear) to the original image
  size and summed over scales; the prediction is the argmax.

mIoU comes from a confusion matrix with ignore-labelled pixels dropped (``job.metrics``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from job.data.convert import decode_label_checked
from job.data.listfile import Pair, read_list
from job.data.pipeline import eval_input
from job.errors import BadInput
from job.metrics import ConfusionMatrix
from job.palette import colorize

if TYPE_CHECKING:
    import mindspore


def canvas_size(crop_size: int, scale: float) -> int:
    """Side of the square network input for one scale (the zoo's ``int((crop - 1) * s) + 1``)."""
    return int((crop_size - 1) * scale) + 1


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax (float32)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def predict_probabilities(
    net: mindspore.nn.Cell, images: Sequence[np.ndarray], side: int, *, flip: bool, batch_size: int
) -> list[np.ndarray]:
    """Class probabilities (H, W, C) float32 at each image's original size, for one canvas side.

    The batch is padded with blank canvases up to ``batch_size`` so every call has the same input
    shape (GRAPH mode compiles once per shape).
    """
    import mindspore

    batch = np.zeros((max(batch_size, len(images)), 3, side, side), dtype=np.float32)
    regions = []
    for index, image in enumerate(images):
        batch[index], height, width = eval_input(image, side)
        regions.append((height, width))
    probs = softmax(_run(net, batch, mindspore))
    if flip:
        flipped = np.ascontiguousarray(batch[:, :, :, ::-1])
        probs += softmax(_run(net, flipped, mindspore))[:, :, :, ::-1]
    results = []
    for index, image in enumerate(images):
        height, width = regions[index]
        cropped = np.ascontiguousarray(probs[index, :, :height, :width].transpose(1, 2, 0))
        results.append(_resize_channels(cropped, image.shape[1], image.shape[0]))
    return results


def _run(net: mindspore.nn.Cell, batch: np.ndarray, mindspore: Any) -> np.ndarray:
    logits = net(mindspore.Tensor(batch)).asnumpy().astype(np.float32, copy=False)
    if logits.shape[0] != batch.shape[0] or logits.shape[2:] != batch.shape[2:]:
        raise BadInput(f"network output shape {logits.shape} does not match its input {batch.shape}")
    return logits


def _resize_channels(probs: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an (h, w, C) float32 map; OpenCV handles up to 512 channels at once."""
    if probs.shape[:2] == (height, width):
        return probs
    resized = cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized if resized.ndim == 3 else resized[:, :, None]  # cv2 drops a single channel axis


def predict_labels(
    net: mindspore.nn.Cell,
    images: Sequence[np.ndarray],
    *,
    num_classes: int,
    crop_size: int,
    scales: Sequence[float],
    flip: bool,
    batch_size: int = 1,
) -> list[np.ndarray]:
    """Label maps (H, W) at each BGR image's own size: the protocol above, without labels.

    Shared by ``evaluate`` and ``predict`` so a prediction is exactly what evaluation scores.
    ``net`` must already be in inference mode. uint8 for up to 256 classes, else int32. Raises
    BadInput if the network predicts another number of classes.
    """
    total = [np.zeros((*image.shape[:2], num_classes), dtype=np.float32) for image in images]
    for scale in scales:
        side = canvas_size(crop_size, scale)
        probs = predict_probabilities(net, images, side, flip=flip, batch_size=batch_size)
        for index, prob in enumerate(probs):
            if prob.shape[2] != num_classes:
                raise BadInput(f"network predicts {prob.shape[2]} classes, num_classes is {num_classes}")
            total[index] += prob
    dtype = np.uint8 if num_classes <= 256 else np.int32
    return [prob.argmax(axis=2).astype(dtype) for prob in total]


def evaluate(
    net: mindspore.nn.Cell,
    *,
    data_root: str,
    data_lst: str,
    num_classes: int,
    ignore_label: int,
    crop_size: int,
    scales: list[float],
    flip: bool,
    batch_size: int = 1,
    save_predictions: str | None = None,
) -> dict:
    """Evaluate ``net`` (NCHW float32 -> NCHW logits at the input size) on a list file.

    Returns {"miou": float, "iou": [float, or None for a class absent from labels and
    predictions], "images": int}. The network is put in inference mode (BatchNorm moving
    statistics). ``save_predictions`` is a directory receiving ``<image stem>.png`` colour
    (VOC palette) predictions. Raises BadInput for a bad list, unreadable samples, label values
    outside ``0..num_classes-1`` (other than ``ignore_label``), or a network with the wrong
    number of classes.
    """
    _check_settings(crop_size, scales, batch_size, num_classes)
    pairs = read_list(data_root, data_lst)
    net.set_train(False)
    matrix = ConfusionMatrix(num_classes, ignore_label)
    if save_predictions:
        os.makedirs(save_predictions, exist_ok=True)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images, labels = zip(*(_load(data_root, pair) for pair in chunk), strict=True)
        predictions = predict_labels(
            net, images, num_classes=num_classes, crop_size=crop_size, scales=scales, flip=flip,
            batch_size=batch_size,
        )  # fmt: skip
        for pair, label, prediction in zip(chunk, labels, predictions, strict=True):
            try:
                matrix.update(prediction, label)
            except ValueError as error:
                raise BadInput(f"line {pair.line} of {data_lst}: label {pair.label}: {error}") from error
            if save_predictions:
                _save(save_predictions, pair, prediction)
    if matrix.matrix.sum() == 0:
        raise BadInput(f"{data_lst}: no labelled pixels (every pixel is {ignore_label})")
    iou = matrix.iou()
    return {
        "miou": matrix.miou(),
        "iou": [None if np.isnan(value) else float(value) for value in iou],
        "images": len(pairs),
    }


def _check_settings(crop_size: int, scales: Sequence[float], batch_size: int, num_classes: int) -> None:
    if not scales or any(scale <= 0 for scale in scales):
        raise BadInput(f"evaluation scales must be a non-empty list of positive numbers, got {list(scales)}")
    if crop_size < 1 or batch_size < 1 or num_classes < 1:
        raise BadInput("crop_size, batch_size and num_classes must be positive")


def _load(data_root: str, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(BGR image, label) of one sample; BadInput (with the line number) if unusable."""
    image_path, label_path = pair.paths(data_root)
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise BadInput(f"line {pair.line}: image {pair.image} cannot be decoded")
    try:
        with open(label_path, "rb") as handle:
            label = decode_label_checked(handle.read())
    except ValueError as error:
        raise BadInput(f"line {pair.line}: label {pair.label} {error}") from error
    if label.shape != image.shape[:2]:
        raise BadInput(f"line {pair.line}: label size differs from image size")
    return image, label


def _save(directory: str, pair: Pair, prediction: np.ndarray) -> None:
    stem = os.path.splitext(os.path.basename(pair.image))[0]
    path = os.path.join(directory, f"{stem}.png")
    if not cv2.imwrite(path, colorize(prediction)):
        raise OSError(f"cannot write {path}")
