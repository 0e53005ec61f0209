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

Softmax and flip-back run in the compiled graph next to the network (``job.eval_graph``); the
host keeps only what depends on each image's size (resize in, crop and resize back, argmax), and
decodes the next batch in a thread meanwhile. On several ranks each scores a shard of the list
and the confusion matrices are summed.

mIoU comes from a confusion matrix with ignore-labelled pixels dropped (``job.metrics``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from job.data.convert import decode_label_checked
from job.data.listfile import Pair, read_list
from job.data.pipeline import eval_input
from job.distributed import Group, sum_over_ranks
from job.errors import BadInput
from job.metrics import ConfusionMatrix
from job.palette import colorize

if TYPE_CHECKING:
    import mindspore


def canvas_size(crop_size: int, scale: float) -> int:
    """Side of the square network input for one scale (the zoo's ``int((crop - 1) * s) + 1``)."""
    return int((crop_size - 1) * scale) + 1


@dataclass
class Timing:
    """Where evaluation's time goes. Wall time under load says little about the host's own cost, so
    its CPU time is kept too: the calling thread's outside the graph plus the decode thread's."""

    network: float = 0.0  # wall seconds in the compiled graph, copying its output to the host included
    network_cpu: float = 0.0  # the calling thread's CPU seconds during those calls (it mostly waits)
    decode_cpu: float = 0.0  # CPU seconds of the thread decoding the next batch


class Predictor:
    """The protocol bound to one network: label maps for BGR images of any size, without labels.

    Shared by ``evaluate`` and ``predict`` so a prediction is exactly what evaluation scores. The
    network's part (softmax, flip-back) runs compiled in ``job.eval_graph``, one graph per canvas
    side, built on first use and kept for the network's lifetime. ``timing`` accumulates the time
    spent in the graph; the rest of a caller's time is host work. ``net`` must be in inference mode.
    """

    def __init__(
        self,
        net: mindspore.nn.Cell,
        *,
        num_classes: int,
        crop_size: int,
        scales: Sequence[float],
        flip: bool,
        batch_size: int = 1,
    ) -> None:
        from job.eval_graph import probability_graph

        _check_settings(crop_size, scales, batch_size, num_classes)
        self.graph = probability_graph(net, flip)
        self.num_classes, self.batch_size = num_classes, batch_size
        self.sides = [canvas_size(crop_size, scale) for scale in scales]
        self.timing = Timing()

    def labels(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label maps (H, W) at each image's own size: uint8 up to 256 classes, else int32."""
        total: list[np.ndarray] = []
        for side in self.sides:
            for index, prob in enumerate(self.probabilities(images, side)):
                if index < len(total):
                    total[index] += prob
                else:
                    total.append(prob)
        dtype = np.uint8 if self.num_classes <= 256 else np.int32
        return [prob.argmax(axis=2).astype(dtype) for prob in total]

    def probabilities(self, images: Sequence[np.ndarray], side: int) -> list[np.ndarray]:
        """Class probabilities (H, W, C) float32 at each image's original size, for one canvas side.

        The batch is padded with blank canvases up to ``batch_size`` so every call has the same input
        shape (one compiled graph per side).
        """
        batch = np.zeros((max(self.batch_size, len(images)), 3, side, side), dtype=np.float32)
        regions = []
        for index, image in enumerate(images):
            batch[index], height, width = eval_input(image, side)
            regions.append((height, width))
        probs = self._run(batch)
        return [
            _resize_channels(probs[index, :height, :width], image.shape[1], image.shape[0])
            for index, (image, (height, width)) in enumerate(zip(images, regions, strict=True))
        ]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import mindspore

        begin, begin_cpu = time.perf_counter(), time.thread_time()
        probs = self.graph(mindspore.Tensor(batch)).asnumpy()
        self.timing.network += time.perf_counter() - begin
        self.timing.network_cpu += time.thread_time() - begin_cpu
        n, _, side, _ = batch.shape
        if probs.ndim != 4 or probs.shape[:3] != (n, side, side):
            raise BadInput(
                f"network output {probs.shape} (channels last) does not match its input {batch.shape}"
            )
        if probs.shape[3] != self.num_classes:
            raise BadInput(f"network predicts {probs.shape[3]} classes, num_classes is {self.num_classes}")
        return probs.astype(np.float32, copy=False)


def _resize_channels(probs: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an (h, w, C) float32 map (a new array; OpenCV does up to 512 channels at once)."""
    if probs.shape[:2] == (height, width):
        return np.array(probs, dtype=np.float32)
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
    """``Predictor(...).labels(images)`` in one call."""
    predictor = Predictor(
        net, num_classes=num_classes, crop_size=crop_size, scales=scales, flip=flip, batch_size=batch_size
    )
    return predictor.labels(images)


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
    group: Group | None = None,
) -> dict:
    """Evaluate ``net`` (NCHW float32 -> NCHW logits at the input size) on a list file.

    Returns {"miou": float, "iou": [float, or None for a class absent from labels and
    predictions], "images": int, "seconds": {"network": s, "host": s, "host_cpu": s}} ("network" is
    the wall time in the compiled graph, "host" the rest: decoding, resizing, scoring; "host_cpu" the
    host work's CPU time, which the machine's load does not inflate). The network is put in
    inference mode (BatchNorm moving statistics). ``save_predictions`` is a directory receiving
    ``<image stem>.png`` colour (VOC palette) predictions. With a ``group`` of several ranks every
    rank must call this: each scores every ``group.size``-th pair from its rank on, and the confusion
    matrices are summed over the ranks, so every rank returns the whole list's metrics. Raises
    BadInput for a bad list, unreadable samples, label values outside ``0..num_classes-1`` (other
    than ``ignore_label``), or a network with the wrong number of classes.
    """
    begin, begin_cpu = time.perf_counter(), time.thread_time()
    group = group or Group()
    predictor = Predictor(  # checks the settings before the list is read
        net, num_classes=num_classes, crop_size=crop_size, scales=scales, flip=flip, batch_size=batch_size
    )
    pairs = read_list(data_root, data_lst)
    net.set_train(False)
    matrix = ConfusionMatrix(num_classes, ignore_label)
    if save_predictions:
        os.makedirs(save_predictions, exist_ok=True)
    shard = pairs[group.rank :: group.size]
    for chunk, images, labels in _loaded_chunks(data_root, shard, batch_size, predictor.timing):
        for pair, label, prediction in zip(chunk, labels, predictor.labels(images), strict=True):
            try:
                matrix.update(prediction, label)
            except ValueError as error:
                raise BadInput(f"line {pair.line} of {data_lst}: label {pair.label}: {error}") from error
            if save_predictions:
                _save(save_predictions, pair, prediction)
    if group.size > 1:
        matrix.matrix = sum_over_ranks(matrix.matrix)
    if matrix.matrix.sum() == 0:
        raise BadInput(f"{data_lst}: no labelled pixels (every pixel is {ignore_label})")
    iou = matrix.iou()
    timing = predictor.timing
    host_cpu = time.thread_time() - begin_cpu - timing.network_cpu + timing.decode_cpu
    seconds = {"network": timing.network, "host": time.perf_counter() - begin - timing.network}
    seconds["host_cpu"] = host_cpu
    return {
        "miou": matrix.miou(),
        "iou": [None if np.isnan(value) else float(value) for value in iou],
        "images": len(pairs),
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
    }


def _loaded_chunks(
    data_root: str, pairs: Sequence[Pair], batch_size: int, timing: Timing
) -> Iterator[tuple[Sequence[Pair], tuple[np.ndarray, ...], tuple[np.ndarray, ...]]]:
    """(pairs, images, labels) per batch; the next batch is decoded in a thread while this one runs
    (OpenCV releases the GIL), so decoding overlaps the network. Errors surface in list order."""
    chunks = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]

    def load(chunk: Sequence[Pair]) -> list[tuple[np.ndarray, np.ndarray]]:
        begin = time.thread_time()
        try:
            return [_load(data_root, pair) for pair in chunk]
        finally:
            timing.decode_cpu += time.thread_time() - begin  # one decode thread: no race

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-decode") as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for index, chunk in enumerate(chunks):
            loaded = pending.result()
            pending = pool.submit(load, chunks[index + 1]) if index + 1 < len(chunks) else None
            images, labels = zip(*loaded, strict=True)
            yield chunk, images, labels


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
