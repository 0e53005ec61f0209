"""Training augmentation (pure numpy/OpenCV) and the MindSpore dataset built on it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from job import recipe
from job.data.pipeline import (
    Augment,
    apply_augment,
    augment_sample,
    draw_augment,
    eval_input,
    normalise_chw,
    train_dataset,
)

IGNORE = 255
MEAN = np.array(recipe.IMAGE_MEAN_BGR, dtype=np.float64)[:, None, None]
STD = np.array(recipe.IMAGE_STD_BGR, dtype=np.float64)[:, None, None]


def coordinate_sample(height: int = 120, width: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Image whose B channel is the column and G channel the row; label is the column too."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([cols, rows, np.zeros_like(cols)], axis=2).astype(np.uint8)
    return image, cols.astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)  # lossless, so exact values survive the bytes path
    assert ok
    return encoded.tobytes()


def denormalise(chw: np.ndarray) -> np.ndarray:
    return chw * STD + MEAN


def test_normalisation_uses_the_recipe_bgr_mean_and_std() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = (image.transpose(2, 0, 1).astype(np.float64) - MEAN) / STD
    np.testing.assert_allclose(normalise_chw(image), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_unit_scale_full_crop_is_identity_or_mirror(flip: bool) -> None:
    image, label = coordinate_sample(64, 64)
    out, out_label = apply_augment(
        image, label, Augment(64, 64, 0, 0, flip), crop_size=64, ignore_label=IGNORE
    )
    expected_image, expected_label = (image[:, ::-1], label[:, ::-1]) if flip else (image, label)
    np.testing.assert_allclose(out, normalise_chw(np.ascontiguousarray(expected_image)), atol=1e-6)
    np.testing.assert_array_equal(out_label, expected_label)
    assert out.dtype == np.float32 and out_label.dtype == np.int32


@pytest.mark.parametrize("flip", [False, True])
def test_padding_is_bottom_right_before_flip(flip: bool) -> None:
    image, label = coordinate_sample(30, 40)
    out, out_label = apply_augment(
        image, label, Augment(30, 40, 0, 0, flip), crop_size=64, ignore_label=IGNORE
    )
    pad_cols = slice(0, 24) if flip else slice(40, 64)
    valid_cols = slice(24, 64) if flip else slice(0, 40)
    assert (out_label[30:] == IGNORE).all() and (out_label[:, pad_cols] == IGNORE).all()
    assert (out[:, 30:] == 0).all() and (out[:, :, pad_cols] == 0).all()  # 0 after normalisation
    np.testing.assert_array_equal(out_label[:30, valid_cols], label[:, ::-1] if flip else label)


@pytest.mark.parametrize(
    ("aug", "crop"),
    [
        (Augment(240, 400, 37, 150, False), 128),  # 2x up, interior crop
        (Augment(240, 400, 100, 250, True), 128),  # 2x up, crop touching the bottom-right, flipped
        (Augment(66, 110, 0, 0, False), 96),  # 0.55x down, padded
        (Augment(150, 250, 10, 154, True), 96),  # 1.25x, flipped
    ],
)
def test_geometry_matches_scale_crop_flip(aug: Augment, crop: int) -> None:
    """Every valid output pixel shows the source pixel that resize->crop->flip puts there."""
    image, label = coordinate_sample()
    out, out_label = apply_augment(image, label, aug, crop_size=crop, ignore_label=IGNORE)
    valid_h, valid_w = min(crop, aug.scaled_h - aug.top), min(crop, aug.scaled_w - aug.left)
    assert (out_label != IGNORE).sum() == valid_h * valid_w
    cols = np.arange(crop) if not aug.flip else crop - 1 - np.arange(crop)
    src_x = (aug.left + cols + 0.5) * 200 / aug.scaled_w - 0.5
    src_y = (aug.top + np.arange(crop) + 0.5) * 120 / aug.scaled_h - 0.5
    valid = out_label != IGNORE
    bgr = denormalise(out)
    expected_x = np.broadcast_to(np.clip(src_x, 0, 199)[None, :], valid.shape)
    expected_y = np.broadcast_to(np.clip(src_y, 0, 119)[:, None], valid.shape)
    assert np.abs(out_label - expected_x)[valid].max() <= 0.51  # nearest
    assert np.abs(bgr[0] - expected_x)[valid].max() <= 0.6  # bilinear, rounded to uint8
    assert np.abs(bgr[1] - expected_y)[valid].max() <= 0.6


def test_random_augmentation_invariants_through_encoded_bytes() -> None:
    """Image and label stay aligned under random scale/crop/flip; padding and flips behave."""
    image, label = coordinate_sample()
    image_bytes, label_bytes = png(image), png(label)
    rng = np.random.default_rng(1)
    flips, sizes = 0, []
    for _ in range(40):
        out, out_label = augment_sample(
            image_bytes, label_bytes, rng, crop_size=160, min_scale=0.5, max_scale=2.0, ignore_label=IGNORE
        )
        assert out.shape == (3, 160, 160) and out_label.shape == (160, 160)
        valid = out_label != IGNORE
        assert (out[:, ~valid] == 0).all()
        bgr = denormalise(out)
        assert np.abs(bgr[0] - out_label)[valid].max() <= 1.01  # image column == label column
        row = out_label[0][valid[0]].astype(int)
        flipped = row[0] > row[-1]
        assert (np.diff(row) <= 0).all() if flipped else (np.diff(row) >= 0).all()
        flips += flipped
        sizes.append((valid.any(axis=1).sum(), valid.any(axis=0).sum()))
        first_valid_col = np.flatnonzero(valid[0])[0]
        assert first_valid_col == 0 or flipped  # unflipped padding is always on the right
    assert 8 <= flips <= 32
    heights = np.array(sizes)[:, 0]
    assert heights.min() >= int(120 * 0.5) and heights.min() < 80  # small scales happen
    assert (heights == 160).any()  # large scales fill the crop


def test_scale_draw_spans_exactly_min_to_max() -> None:
    low = draw_augment((100, 200), np.zeros(4), crop_size=64, min_scale=0.5, max_scale=2.0)
    high = draw_augment((100, 200), np.full(4, 1 - 1e-12), crop_size=64, min_scale=0.5, max_scale=2.0)
    assert (low.scaled_h, low.scaled_w, low.top, low.left, low.flip) == (50, 100, 0, 0, True)
    assert (high.scaled_h, high.scaled_w) == (199, 399)  # int() of 199.99..., 399.99...
    assert (high.top, high.left, high.flip) == (199 - 64, 399 - 64, False)  # last crop position


def test_label_values_stay_within_the_source_values() -> None:
    rng = np.random.default_rng(2)
    label = rng.choice(np.array([0, 1, 2, IGNORE], dtype=np.uint8), size=(37, 53))
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for _ in range(10):
        _, out_label = augment_sample(
            png(image), png(label), rng, crop_size=48, min_scale=0.5, max_scale=2.0, ignore_label=IGNORE
        )
        assert set(np.unique(out_label).tolist()) <= {0, 1, 2, IGNORE}


def test_eval_input_resizes_long_side_and_zero_pads() -> None:
    image = np.full((30, 60, 3), 200, dtype=np.uint8)
    chw, height, width = eval_input(image, 41)
    assert chw.shape == (3, 41, 41) and (height, width) == (20, 41)
    assert (chw[:, 20:] == 0).all()
    np.testing.assert_allclose(chw[:, :20], normalise_chw(np.full((20, 41, 3), 200, np.uint8)))
    _, height, width = eval_input(np.zeros((60, 30, 3), np.uint8), 41)
    assert (height, width) == (41, 20)


@pytest.fixture(scope="module")
def mindrecord(synthetic_set, tmp_path_factory) -> str:
    from job.data.convert import convert_list

    root, train, _ = synthetic_set
    out = tmp_path_factory.mktemp("pipeline") / "train.mindrecord"
    return convert_list(str(root), str(train), str(out), 2, False)[0]


def batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(data, label) for data, label in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)]


@pytest.mark.mindspore
def test_train_dataset_batches_shapes_values_and_sharding(mindrecord) -> None:
    common = {"crop_size": 48, "min_scale": 0.5, "max_scale": 2.0, "ignore_label": IGNORE}
    result = batches(train_dataset(mindrecord, batch_size=4, **common))
    assert len(result) == 1  # 6 samples, batch 4, remainder dropped
    data, label = result[0]
    assert data.shape == (4, 3, 48, 48) and data.dtype == np.float32
    assert label.shape == (4, 48, 48) and label.dtype == np.int32
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3, IGNORE}
    per_rank = [
        batches(train_dataset(mindrecord, batch_size=1, num_shards=2, shard_id=rank, **common))
        for rank in (0, 1)
    ]
    assert [len(b) for b in per_rank] == [3, 3]  # 6 records split over 2 ranks


@pytest.mark.mindspore
def test_train_dataset_is_repeatable_with_a_seed(mindrecord) -> None:
    def first_epoch(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        dataset = train_dataset(
            mindrecord, batch_size=2, crop_size=40, min_scale=0.5, max_scale=2.0, ignore_label=IGNORE,
            num_parallel_workers=1, seed=seed,
        )  # fmt: skip
        return batches(dataset)

    one, again, other = first_epoch(5), first_epoch(5), first_epoch(6)
    for (d1, l1), (d2, l2) in zip(one, again, strict=True):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    assert any(not np.array_equal(d1, d3) for (d1, _), (d3, _) in zip(one, other, strict=True))
