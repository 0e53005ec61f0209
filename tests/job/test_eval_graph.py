"""The compiled evaluation path (job.eval_graph + job.evaluate.Predictor) against the numpy protocol it
replaced (``reference_*`` below, the implementation before the move, kept verbatim in spirit): same
checkpoint, same images, same probabilities, predictions and mIoU.

The network is small but not trivial (random 3x3 and 1x1 convolutions, saved to a checkpoint and
loaded back), so its logits vary across every pixel and class and any slip in softmax axis, flip
direction, crop or channel order changes the result.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from job.data.pipeline import eval_input
from job.evaluate import Predictor, canvas_size, evaluate
from job.metrics import ConfusionMatrix

pytestmark = pytest.mark.mindspore

CLASSES = 4
IGNORE = 255
CROP = 33


# -- the numpy reference: the host-side protocol as it was ---------------------------------------------
def reference_softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def reference_probabilities(net, images, side: int, *, flip: bool, batch_size: int) -> list[np.ndarray]:
    """Canvas -> logits -> numpy softmax (+ flipped run, flipped back) -> crop -> resize to the image."""
    import mindspore as ms

    batch = np.zeros((max(batch_size, len(images)), 3, side, side), dtype=np.float32)
    regions = []
    for index, image in enumerate(images):
        batch[index], height, width = eval_input(image, side)
        regions.append((height, width))
    probs = reference_softmax(net(ms.Tensor(batch)).asnumpy().astype(np.float32))
    if flip:
        flipped = np.ascontiguousarray(batch[:, :, :, ::-1])
        probs += reference_softmax(net(ms.Tensor(flipped)).asnumpy().astype(np.float32))[:, :, :, ::-1]
    results = []
    for index, image in enumerate(images):
        height, width = regions[index]
        cropped = np.ascontiguousarray(probs[index, :, :height, :width].transpose(1, 2, 0))
        if cropped.shape[:2] != image.shape[:2]:
            cropped = cv2.resize(cropped, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        results.append(cropped)
    return results


def reference_labels(net, images, *, scales, flip: bool, batch_size: int) -> list[np.ndarray]:
    total = [np.zeros((*image.shape[:2], CLASSES), dtype=np.float32) for image in images]
    for scale in scales:
        side = canvas_size(CROP, scale)
        for index, prob in enumerate(
            reference_probabilities(net, images, side, flip=flip, batch_size=batch_size)
        ):
            total[index] += prob
    return [prob.argmax(axis=2).astype(np.uint8) for prob in total]


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """A random conv net saved to a checkpoint and loaded into a fresh copy (the copy is evaluated)."""
    import mindspore as ms
    from mindspore import nn

    from job import device

    device.select_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)

    def build() -> nn.Cell:
        return nn.SequentialCell(
            nn.Conv2d(3, 8, 3, pad_mode="same", has_bias=True),
            nn.ReLU(),
            nn.Conv2d(8, CLASSES, 1, has_bias=True),
        )

    trained, rng = build(), np.random.default_rng(11)
    for param in trained.get_parameters():  # large random weights: every class wins somewhere
        param.set_data(ms.Tensor(rng.normal(0, 1, param.shape).astype(np.float32)))
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
    ms.save_checkpoint(trained, path)
    net = build()
    missing, _ = ms.load_param_into_net(net, ms.load_checkpoint(path))
    assert not missing
    net.set_train(False)
    return net


def images_and_labels(root: Path) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """Wide, tall, square-at-crop and large images with noisy labels (and an ignore band)."""
    rng = np.random.default_rng(5)
    images, labels, lines = [], [], []
    for index, (height, width) in enumerate([(40, 57), (64, 48), (33, 33), (90, 70), (21, 30)]):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (3, 3), 0)  # structure beyond single pixels
        label = rng.integers(0, CLASSES, (height, width), dtype=np.uint8)
        label[:, : width // 6] = IGNORE
        cv2.imwrite(str(root / f"i{index}.png"), image)
        cv2.imwrite(str(root / f"l{index}.png"), label)
        images.append(image)
        labels.append(label)
        lines.append(f"i{index}.png l{index}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root / "val.txt", images, labels


CASES = [([1.0], False, 1), ([0.5, 1.0, 1.5], True, 2), ([0.75, 1.25], True, 3)]


@pytest.mark.parametrize(("scales", "flip", "batch_size"), CASES)
def test_probabilities_and_predictions_match_the_numpy_protocol(network, tmp_path, scales, flip, batch_size):
    _, images, _ = images_and_labels(tmp_path)
    predictor = Predictor(
        network, num_classes=CLASSES, crop_size=CROP, scales=scales, flip=flip, batch_size=batch_size
    )
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        for scale in scales:
            side = canvas_size(CROP, scale)
            new = predictor.probabilities(chunk, side)
            old = reference_probabilities(network, chunk, side, flip=flip, batch_size=batch_size)
            for got, want in zip(new, old, strict=True):
                assert got.shape == want.shape and got.dtype == np.float32
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        expected = reference_labels(network, chunk, scales=scales, flip=flip, batch_size=batch_size)
        for got, want in zip(predictor.labels(chunk), expected, strict=True):
            np.testing.assert_array_equal(got, want)
            assert len(np.unique(got)) > 1  # a constant prediction would hide a channel or flip slip
    assert predictor.timing.network > 0


@pytest.mark.parametrize(("scales", "flip", "batch_size"), CASES)
def test_miou_matches_the_numpy_protocol(network, tmp_path, scales, flip, batch_size):
    data_lst, images, labels = images_and_labels(tmp_path)
    result = evaluate(
        network, data_root=str(tmp_path), data_lst=str(data_lst), num_classes=CLASSES, ignore_label=IGNORE,
        crop_size=CROP, scales=scales, flip=flip, batch_size=batch_size,
    )  # fmt: skip
    matrix = ConfusionMatrix(CLASSES, IGNORE)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        predictions = reference_labels(network, chunk, scales=scales, flip=flip, batch_size=batch_size)
        for prediction, label in zip(predictions, labels[start : start + batch_size], strict=True):
            matrix.update(prediction, label)
    assert result["images"] == len(images)
    assert result["miou"] == matrix.miou()
    assert result["iou"] == [float(value) for value in matrix.iou()]
    assert (
        result["seconds"]["network"] > 0
        and result["seconds"]["host"] > 0
        and result["seconds"]["host_cpu"] > 0
    )
