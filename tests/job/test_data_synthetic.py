"""The synthetic demo set: deterministic, well-formed, VOC-like, and separable by appearance."""

from __future__ import annotations

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pytest

from job.data.synthetic import generate
from job.errors import BadInput

IGNORE = 255


def read_pairs(root: Path, list_file: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for line in list_file.read_text().splitlines():
        image_rel, label_rel = line.split()
        assert not Path(image_rel).is_absolute()  # relative to the root, as list files must be
        image = cv2.imread(str(root / image_rel), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(root / label_rel), cv2.IMREAD_UNCHANGED)
        pairs.append((image, label))
    return pairs


def test_lists_images_and_labels_are_well_formed(synthetic_set) -> None:
    root, train, val = synthetic_set
    assert (train.name, val.name) == ("train.txt", "val.txt")
    pairs = read_pairs(root, train) + read_pairs(root, val)
    assert len(pairs) == 6 + 3
    for image, label in pairs:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        assert label.ndim == 2 and label.dtype == np.uint8  # single-channel class ids, not colours
        assert image.shape[:2] == label.shape
        assert image.shape[1] == 64 and 48 <= image.shape[0] <= 64
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2, 3, IGNORE}
        assert IGNORE in values  # VOC-like ignore band around objects
        assert values & {1, 2, 3}  # every scene has an object
    jpegs = list((root / "images").glob("*.jpg"))
    assert len(jpegs) == 9 and all(path.stat().st_size > 0 for path in jpegs)


def test_same_seed_same_bytes_other_seed_differs(tmp_path) -> None:
    kwargs = {"num_train": 2, "num_val": 1, "size": 48, "num_classes": 3}
    generate(str(tmp_path / "a"), seed=7, **kwargs)
    generate(str(tmp_path / "b"), seed=7, **kwargs)
    generate(str(tmp_path / "c"), seed=8, **kwargs)
    names = [
        "train.txt",
        "val.txt",
        "images/train_00000.jpg",
        "labels/train_00001.png",
        "images/val_00000.jpg",
    ]
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert (mismatch, errors) == ([], [])
    _, mismatch, _ = filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", names[2:], shallow=False)
    assert mismatch


def test_classes_are_separable_by_local_appearance(tmp_path) -> None:
    """A nearest-class-mean classifier on blurred colour must beat chance clearly on held-out images.

    Not a proof of CNN learnability, but it fails if classes shared one appearance or the
    background looked like an object.
    """
    num_classes = 5
    train, val = generate(str(tmp_path), num_train=12, num_val=4, size=96, num_classes=num_classes, seed=3)

    def features(path: Path) -> tuple[np.ndarray, np.ndarray]:
        pixels, labels = [], []
        for image, label in read_pairs(tmp_path, path):
            blurred = cv2.blur(image, (7, 7)).reshape(-1, 3).astype(np.float32)
            keep = label.reshape(-1) != IGNORE
            pixels.append(blurred[keep])
            labels.append(label.reshape(-1)[keep])
        return np.concatenate(pixels), np.concatenate(labels)

    x_train, y_train = features(Path(train))
    x_val, y_val = features(Path(val))
    present = [c for c in range(num_classes) if (y_train == c).any()]
    means = np.stack([x_train[y_train == c].mean(axis=0) for c in present])
    predicted = np.array(present)[np.argmin(((x_val[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)]
    objects = y_val != 0
    assert (predicted == y_val).mean() > 0.85
    assert (predicted[objects] == y_val[objects]).mean() > 0.8  # objects, not only the background


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 1}, {"num_classes": 256}, {"size": 8}, {"num_train": -1}],
)
def test_rejects_bad_arguments(tmp_path, kwargs) -> None:
    settings = {"num_train": 1, "num_val": 1, "size": 32, "num_classes": 3, "seed": 0, **kwargs}
    with pytest.raises(BadInput):
        generate(str(tmp_path), **settings)
