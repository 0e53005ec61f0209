"""Training input pipeline: MindRecord -> augmented NCHW float32 batches.

Augmentation follows the recipe (FACTS 1): decode BGR; random scale U(min, max) with bilinear
image / nearest label; normalise with the BGR mean/std; pad bottom/right to the crop size (image 0
after normalisation, label ignore); random crop; horizontal flip p=0.5; HWC -> CHW.

For speed the scale, crop and flip are one ``cv2.warpAffine`` that produces only the pixels of
the crop window that lie inside the scaled image ("resize then crop" without materialising the
scaled image), and normalisation is a per-channel uint8 -> float32 lookup table that writes
straight into the CHW output. Only that window is normalised; the padding is filled with the
constants directly. The per-sample code is plain numpy/OpenCV (no MindSpore) so it is unit-tested
without a dataset; MindSpore is imported only by ``train_dataset``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from job import recipe

if TYPE_CHECKING:
    import mindspore.dataset


def _build_lut() -> np.ndarray:
    """(3, 256) float32: (value - mean[c]) / std[c] for every uint8 value, BGR channel order."""
    values = np.arange(256, dtype=np.float64)
    return np.stack(
        [(values - mean) / std for mean, std in zip(recipe.IMAGE_MEAN_BGR, recipe.IMAGE_STD_BGR, strict=True)]
    ).astype(np.float32)


NORMALISE_LUT = _build_lut()
NORMALISE_LUT.flags.writeable = False


class RandomSource(Protocol):
    """Anything with numpy Generator's ``random(size)`` (the Generator itself, or a locked wrapper)."""

    def random(self, size: int) -> np.ndarray: ...


def as_buffer(data: bytes | np.ndarray) -> np.ndarray:
    """Encoded bytes -> 1-D uint8 array for cv2.imdecode.

    MindDataset hands a ``bytes`` column to Python as a shape-(1,) ``|S<n>`` array; its buffer holds
    exactly the stored bytes (fixed item size, so trailing zero bytes are not lost).
    """
    return np.frombuffer(data, dtype=np.uint8)


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """Encoded JPEG/PNG -> (H, W, 3) uint8 BGR; ValueError if it cannot be decoded."""
    image = cv2.imdecode(as_buffer(data), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("image cannot be decoded")
    return image


def decode_label(data: bytes | np.ndarray) -> np.ndarray:
    """Encoded single-channel PNG of class ids -> (H, W) uint8; ValueError if it cannot be decoded."""
    label = cv2.imdecode(as_buffer(data), cv2.IMREAD_GRAYSCALE)
    if label is None:
        raise ValueError("label cannot be decoded")
    return label


def normalise_into(image: np.ndarray, out: np.ndarray) -> None:
    """Write the normalised (3, h, w) float32 form of a (h, w, 3) uint8 BGR image into ``out``.

    ``np.take`` with mode="clip" avoids the internal buffering that mode="raise" does when
    ``out`` is a non-contiguous view (the pipeline writes into a window of the padded output).
    """
    for channel in range(3):
        np.take(NORMALISE_LUT[channel], image[:, :, channel], out=out[channel], mode="clip")


def normalise_chw(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> normalised (3, H, W) float32."""
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    normalise_into(image, out)
    return out


@dataclass(frozen=True)
class Augment:
    """One draw of the random augmentation: scaled size and crop origin on the scaled image."""

    scaled_h: int
    scaled_w: int
    top: int
    left: int
    flip: bool


def draw_augment(
    shape: tuple[int, int], uniforms: np.ndarray, *, crop_size: int, min_scale: float, max_scale: float
) -> Augment:
    """Turn four U[0, 1) draws into an augmentation for an image of ``shape`` (h, w).

    The scale is U(min, max); the crop origin is uniform over the positions of a crop_size window
    in the scaled image padded bottom/right to at least crop_size (so 0 when the scaled side is
    shorter than the crop).
    """
    height, width = shape
    scale = min_scale + (max_scale - min_scale) * float(uniforms[0])
    scaled_h, scaled_w = max(1, int(height * scale)), max(1, int(width * scale))
    top = int(uniforms[1] * (max(scaled_h - crop_size, 0) + 1))
    left = int(uniforms[2] * (max(scaled_w - crop_size, 0) + 1))
    return Augment(scaled_h, scaled_w, top, left, bool(uniforms[3] < 0.5))


def apply_augment(
    image: np.ndarray, label: np.ndarray, aug: Augment, *, crop_size: int, ignore_label: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scale + crop + flip + normalise + pad, equivalent to the recipe's sequence of steps.

    Returns ((3, crop, crop) float32, (crop, crop) int32). The warp maps output pixel centres to
    source pixel centres exactly as ``cv2.resize`` does (x_src = (x + 0.5) * w / scaled_w - 0.5),
    so image and label stay aligned; BORDER_REPLICATE reproduces resize's edge clamping and the
    padding (bottom/right of the scaled image, before the flip) is written as constants.
    """
    height, width = label.shape
    valid_h = min(crop_size, aug.scaled_h - aug.top)
    valid_w = min(crop_size, aug.scaled_w - aug.left)
    sy, sx = height / aug.scaled_h, width / aug.scaled_w
    if aug.flip:  # output column j shows window column valid_w - 1 - j
        row_x = (-sx, 0.0, sx * (aug.left + valid_w - 0.5) - 0.5)
    else:
        row_x = (sx, 0.0, sx * (aug.left + 0.5) - 0.5)
    matrix = np.array([row_x, (0.0, sy, sy * (aug.top + 0.5) - 0.5)], dtype=np.float64)
    size = (valid_w, valid_h)
    inverse = cv2.WARP_INVERSE_MAP
    image_win = cv2.warpAffine(
        image, matrix, size, flags=cv2.INTER_LINEAR | inverse, borderMode=cv2.BORDER_REPLICATE
    )
    label_win = cv2.warpAffine(
        label, matrix, size, flags=cv2.INTER_NEAREST | inverse, borderMode=cv2.BORDER_REPLICATE
    )
    # The flip mirrors the padded crop, so the valid window sits at the right when flipped.
    cols = slice(crop_size - valid_w, crop_size) if aug.flip else slice(0, valid_w)
    image_out = np.zeros((3, crop_size, crop_size), dtype=np.float32)
    normalise_into(image_win, image_out[:, :valid_h, cols])
    label_out = np.full((crop_size, crop_size), ignore_label, dtype=np.int32)
    label_out[:valid_h, cols] = label_win
    return image_out, label_out


def augment_sample(
    image_bytes: bytes | np.ndarray,
    label_bytes: bytes | np.ndarray,
    rng: RandomSource,
    *,
    crop_size: int,
    min_scale: float,
    max_scale: float,
    ignore_label: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole per-sample training transform: encoded bytes -> ((3, c, c) float32, (c, c) int32)."""
    image, label = decode_image(image_bytes), decode_label(label_bytes)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image size {image.shape[:2]} differs from label size {label.shape}")
    aug = draw_augment(
        label.shape, rng.random(4), crop_size=crop_size, min_scale=min_scale, max_scale=max_scale
    )
    return apply_augment(image, label, aug, crop_size=crop_size, ignore_label=ignore_label)


class _LockedRandom:
    """Thread-safe ``random(n)`` over one numpy Generator (Generators are not thread-safe).

    Only the draw is locked, so parallel map workers still overlap decoding and warping (OpenCV
    releases the GIL).
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._lock = threading.Lock()

    def random(self, size: int) -> np.ndarray:
        with self._lock:
            return self._rng.random(size)


class _Transform:
    """The callable given to ``Dataset.map``: ``augment_sample`` with fixed parameters."""

    def __init__(self, rng: np.random.Generator, **params: float) -> None:
        self._rng = _LockedRandom(rng)
        self._params = params

    def __call__(self, data: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return augment_sample(data, label, self._rng, **self._params)


def train_dataset(
    data_file: str,
    *,
    batch_size: int,
    crop_size: int,
    min_scale: float,
    max_scale: float,
    ignore_label: int,
    num_shards: int = 1,
    shard_id: int = 0,
    shuffle: bool = True,
    num_parallel_workers: int = 2,
    seed: int | None = None,
) -> mindspore.dataset.Dataset:
    """Batches of ("data" float32 (N, 3, crop, crop), "label" int32 (N, crop, crop)), remainder dropped.

    ``data_file`` is any shard of a MindRecord set (MindSpore finds its siblings from the header);
    ``num_shards``/``shard_id`` split the records between data-parallel ranks (MindSpore pads the
    shorter shards by repeating records, so every rank sees the same number of steps).

    ``seed`` seeds the augmentation (mixed with ``shard_id`` so ranks draw differently) and, through
    ``mindspore.dataset.config.set_seed`` (a process-wide setting), the record shuffle. Runs are
    exactly repeatable only with ``num_parallel_workers=1``: with more workers the order in which
    samples take augmentation draws varies.
    """
    import mindspore.dataset as ds  # only here: the per-sample code must not need MindSpore

    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} outside 0..{num_shards - 1}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    if seed is not None:
        ds.config.set_seed(seed)
    rng = np.random.default_rng(None if seed is None else [seed, shard_id])
    transform = _Transform(
        rng, crop_size=crop_size, min_scale=min_scale, max_scale=max_scale, ignore_label=ignore_label
    )
    dataset = ds.MindDataset(
        data_file,
        columns_list=["data", "label"],
        num_shards=num_shards if num_shards > 1 else None,
        shard_id=shard_id if num_shards > 1 else None,
        shuffle=shuffle,
        num_parallel_workers=1,
    )
    dataset = dataset.map(
        operations=transform,
        input_columns=["data", "label"],
        output_columns=["data", "label"],
        num_parallel_workers=num_parallel_workers,
        # Threads, not processes: OpenCV releases the GIL, and process workers cost ~2.3 s to start.
        python_multiprocessing=False,
    )
    return dataset.batch(batch_size, drop_remainder=True)


def eval_input(image: np.ndarray, long_side: int) -> tuple[np.ndarray, int, int]:
    """Evaluation preprocessing: resize the long side to ``long_side`` (bilinear), normalise, pad square.

    Returns ((3, long_side, long_side) float32 zero-padded bottom/right, resized h, resized w).
    The short side is truncated as in the zoo: int(long_side * short / long).
    """
    height, width = image.shape[:2]
    if height > width:
        new_h, new_w = long_side, max(1, int(long_side * width / height))
    else:
        new_h, new_w = max(1, int(long_side * height / width)), long_side
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((3, long_side, long_side), dtype=np.float32)
    normalise_into(resized, out[:, :new_h, :new_w])
    return out, new_h, new_w
