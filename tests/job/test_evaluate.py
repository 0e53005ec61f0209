"""Multi-scale / flip evaluation with a real MindSpore Cell whose predictions are known exactly.

The network is a 1x1 convolution copying the B, G, R input channels to classes 0, 1, 2 (class 3
has a large negative bias and is never predicted): it predicts "the dominant colour". Images are
pure-colour regions, labels their colour class with an ignore band at colour edges (where
resizing mixes colours), so the expected predictions are known without running the protocol.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from job.errors import BadInput
from job.evaluate import canvas_size, evaluate
from job.palette import colorize

pytestmark = pytest.mark.mindspore

IGNORE = 255
NUM_CLASSES = 4
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)  # BGR: class = dominant channel


def colour_net(num_classes: int = NUM_CLASSES):
    import mindspore as ms
    from mindspore import nn

    net = nn.Conv2d(3, num_classes, 1, has_bias=True)
    weight = np.zeros((num_classes, 3, 1, 1), dtype=np.float32)
    for channel in range(3):
        weight[channel, channel] = 1.0
    bias = np.zeros(num_classes, dtype=np.float32)
    bias[3:] = -10.0
    net.weight.set_data(ms.Tensor(weight))
    net.bias.set_data(ms.Tensor(bias))
    return net


def spy_net(net):
    """A Cell around ``net`` recording how evaluate drives it (PyNative mode runs ``construct`` in
    Python on every call; GRAPH mode would trace it once per shape)."""
    from mindspore import nn

    class Spy(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.shapes, self.train_modes = net, [], []

        def set_train(self, mode: bool = True):
            self.train_modes.append(mode)
            return super().set_train(mode)

        def construct(self, batch):
            self.shapes.append(tuple(batch.shape))
            return self.net(batch)

    return Spy()


@pytest.fixture
def pynative():
    import mindspore as ms

    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=mode)


def class_map(height: int, width: int, seed: int) -> np.ndarray:
    """Asymmetric layout of colour classes: three uneven vertical bands and a block."""
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.choice(np.arange(8, width - 8), size=2, replace=False))
    classes = np.zeros((height, width), dtype=np.uint8)
    classes[:, cuts[0] : cuts[1]] = 1
    classes[:, cuts[1] :] = 2
    classes[height // 4 : height // 2, 4 : width // 3] = (seed + 1) % 3
    return classes


def write_set(root: Path, relabel: bool = False) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """Images of pure colour classes, labels (optionally with deliberately wrong regions)."""
    truths, labels, lines = [], [], []
    for index, (height, width) in enumerate([(40, 60), (60, 45), (50, 50)]):
        truth = class_map(height, width, index)
        label = truth.copy()
        kernel = np.ones((9, 9), np.uint8)
        label[cv2.dilate(truth, kernel) != cv2.erode(truth, kernel)] = IGNORE  # edges blur under resizing
        if relabel:  # labels disagree with the (perfect colour) prediction in a known region
            region = label[height - 12 : height - 2, 2:20]
            region[region != IGNORE] = (index + 2) % 3
        cv2.imwrite(str(root / f"img{index}.png"), COLOURS[truth])
        cv2.imwrite(str(root / f"lbl{index}.png"), label)
        truths.append(truth)
        labels.append(label)
        lines.append(f"img{index}.png lbl{index}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root / "val.txt", truths, labels


def reference_iou(preds: list[np.ndarray], labels: list[np.ndarray]) -> list[float]:
    """Per-class IoU from boolean masks over all images (independent of job.metrics)."""
    pred, label = np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in labels])
    valid = label != IGNORE
    result = []
    for cls in range(NUM_CLASSES):
        union = (((pred == cls) | (label == cls)) & valid).sum()
        result.append((((pred == cls) & (label == cls)) & valid).sum() / union if union else math.nan)
    return result


@pytest.mark.parametrize(
    ("scales", "flip", "batch_size"),
    [([1.0], False, 1), ([1.0], True, 1), ([0.5, 1.0, 1.5], True, 2), ([0.75, 1.25], False, 3)],
)
def test_perfect_predictor_scores_one(tmp_path, pynative, scales, flip, batch_size) -> None:
    data_lst, _, _ = write_set(tmp_path)
    spy = spy_net(colour_net())
    result = evaluate(
        spy, data_root=str(tmp_path), data_lst=str(data_lst), num_classes=NUM_CLASSES, ignore_label=IGNORE,
        crop_size=65, scales=scales, flip=flip, batch_size=batch_size,
    )  # fmt: skip
    assert result["miou"] == pytest.approx(1.0)
    assert result["iou"][:3] == pytest.approx([1.0, 1.0, 1.0]) and result["iou"][3] is None
    assert result["images"] == 3
    assert spy.train_modes == [False]  # BatchNorm must use moving statistics
    batches = math.ceil(3 / batch_size)
    assert len(spy.shapes) == batches * len(scales) * (2 if flip else 1)
    sides = {canvas_size(65, scale) for scale in scales}
    assert {shape[2] for shape in spy.shapes} == sides
    assert all(shape[0] == batch_size and shape[1] == 3 and shape[2] == shape[3] for shape in spy.shapes)


def test_canvas_sizes_follow_the_zoo() -> None:
    assert [canvas_size(513, s) for s in (0.5, 0.75, 1.0, 1.25, 1.75)] == [257, 385, 513, 641, 897]


def test_imperfect_labels_match_an_independent_iou(tmp_path) -> None:
    data_lst, truths, labels = write_set(tmp_path, relabel=True)
    result = evaluate(
        colour_net(), data_root=str(tmp_path), data_lst=str(data_lst), num_classes=NUM_CLASSES,
        ignore_label=IGNORE, crop_size=65, scales=[0.5, 1.0], flip=True,
    )  # fmt: skip
    expected = reference_iou(truths, labels)
    assert result["iou"][:3] == pytest.approx(expected[:3]) and result["iou"][3] is None
    assert result["miou"] == pytest.approx(np.mean(expected[:3]))
    assert result["miou"] < 0.95  # the relabelled regions really cost something


def test_saves_palette_colour_predictions_named_by_stem(tmp_path) -> None:
    data_lst, truths, labels = write_set(tmp_path)
    out = tmp_path / "pred"
    evaluate(
        colour_net(), data_root=str(tmp_path), data_lst=str(data_lst), num_classes=NUM_CLASSES,
        ignore_label=IGNORE, crop_size=65, scales=[1.0], flip=False, save_predictions=str(out),
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    for index, (truth, label) in enumerate(zip(truths, labels, strict=True)):
        saved = cv2.imread(str(out / f"img{index}.png"), cv2.IMREAD_COLOR)
        valid = label != IGNORE
        np.testing.assert_array_equal(saved[valid], colorize(truth)[valid])
        assert saved[valid].tolist()[0] != [0, 0, 0] or truth[valid][0] == 0  # VOC colours, not raw ids


def test_bad_inputs_raise_bad_input(tmp_path) -> None:
    data_lst, _, labels = write_set(tmp_path)
    common = {"data_root": str(tmp_path), "data_lst": str(data_lst), "ignore_label": IGNORE, "crop_size": 33}
    with pytest.raises(BadInput, match="network predicts 4 classes, num_classes is 5"):
        evaluate(colour_net(), num_classes=5, scales=[1.0], flip=False, **common)
    with pytest.raises(BadInput, match="scales"):
        evaluate(colour_net(), num_classes=NUM_CLASSES, scales=[], flip=False, **common)
    bad = labels[1].copy()
    bad[0, 0] = 9
    cv2.imwrite(str(tmp_path / "lbl1.png"), bad)
    with pytest.raises(BadInput, match=r"line 2 .*label values \[9\]"):
        evaluate(colour_net(), num_classes=NUM_CLASSES, scales=[1.0], flip=False, **common)
    (tmp_path / "lbl1.png").unlink()
    with pytest.raises(BadInput, match=r"line 2: label lbl1\.png not found"):
        evaluate(colour_net(), num_classes=NUM_CLASSES, scales=[1.0], flip=False, **common)
