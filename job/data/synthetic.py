"""A small synthetic segmentation set for the demo and the tests (no dataset can be downloaded here).

Scenes are a textured, noisy, low-saturation background with 1-3 shapes (circles, ellipses,
rectangles, triangles; the shape does not tell the class). Each object class has its own hue and
its own texture (stripes at a class-specific angle and period, a checkerboard, dots or a smooth
gradient), jittered per object and overlaid with noise, so a CNN must learn colour and texture
from context rather than read off a single pixel value. Like PASCAL VOC, a thin band around
every object boundary is labelled 255 (ignore). Images are JPEG (q=90). ``generate`` writes labels
as 8-bit grayscale PNGs of class ids and list files of paths relative to the root; ``generate_voc``
writes the same scenes as PASCAL VOC ships them (palette PNGs, split files of names), which
``prepare-voc`` converts like the real data set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from job.errors import BadInput
from job.recipe import IGNORE_LABEL

TEXTURES = ("stripes", "checker", "dots", "smooth")


@dataclass(frozen=True)
class ClassStyle:
    """How objects of one class look: OpenCV hue (0-180) and a texture with its geometry."""

    hue: float
    texture: str
    angle: float  # radians, for stripes
    period: float  # fraction of the image size


def class_styles(num_classes: int) -> list[ClassStyle]:
    """Styles for classes 1..num_classes-1 (index 0 is the background and has none).

    Hues are spread evenly; neighbouring hues get different textures, so two classes that look
    alike in colour differ in texture.
    """
    styles = []
    for index in range(num_classes - 1):
        styles.append(
            ClassStyle(
                hue=180.0 * index / max(num_classes - 1, 1),
                texture=TEXTURES[index % len(TEXTURES)],
                angle=np.pi * ((index * 0.37) % 1.0),
                period=0.08 + 0.04 * (index % 3),
            )
        )
    return styles


def _texture(style: ClassStyle, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the class's pattern with a random phase."""
    height, width = shape
    size = max(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = style.period * size * rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * np.pi)
    if style.texture == "stripes":
        along = xx * np.cos(style.angle) + yy * np.sin(style.angle)
        return 0.5 + 0.5 * np.sin(2 * np.pi * along / period + phase)
    if style.texture == "checker":
        cells = (np.floor(xx / (period / 2)) + np.floor(yy / (period / 2))) % 2
        return cells.astype(np.float32)
    if style.texture == "dots":
        wave = np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase)
        return (wave > 0.5).astype(np.float32)
    ramp = (xx * np.cos(phase) + yy * np.sin(phase)) / size
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)


def _background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 BGR: low-saturation colour with blotchy low-frequency variation."""
    height, width = shape
    grid = rng.uniform(-1, 1, size=(4, 4, 3)).astype(np.float32)
    blotches = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    base = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 50), rng.uniform(90, 170))
    return base + 35.0 * blotches


def _object_colours(style: ClassStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The texture's two BGR colours: the class hue (jittered) at a light and a dark value."""
    hue = (style.hue + rng.uniform(-4, 4)) % 180
    saturation = rng.uniform(170, 240)
    light = _hsv_to_bgr(hue, saturation, rng.uniform(200, 245))
    dark = _hsv_to_bgr(hue, saturation, rng.uniform(80, 130))
    return light, dark


def _hsv_to_bgr(hue: float, saturation: float, value: float) -> np.ndarray:
    """One OpenCV HSV colour (hue 0-180) -> (3,) float32 BGR."""
    hsv = np.array([[[hue, saturation, value]]], dtype=np.float32).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.float32)[0, 0]


def _shape_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 mask of one random shape, 15-35 % of the image size across."""
    height, width = shape
    size = min(height, width)
    mask = np.zeros(shape, dtype=np.uint8)
    cx, cy = int(rng.uniform(0.15, 0.85) * width), int(rng.uniform(0.15, 0.85) * height)
    radius = int(rng.uniform(0.15, 0.35) * size)
    kind = rng.integers(4)
    if kind == 0:
        cv2.circle(mask, (cx, cy), radius, 1, thickness=-1)
    elif kind == 1:
        axes = (radius, max(2, int(radius * rng.uniform(0.4, 0.9))))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    elif kind == 2:
        half_w, half_h = radius, max(2, int(radius * rng.uniform(0.5, 1.0)))
        cv2.rectangle(mask, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), 1, thickness=-1)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    return mask.astype(bool)


def render(
    shape: tuple[int, int], styles: list[ClassStyle], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ((H, W, 3) uint8 BGR image, (H, W) uint8 label with 255 boundary bands)."""
    image = _background(shape, rng)
    label = np.zeros(shape, dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        class_id = int(rng.integers(1, len(styles) + 1))
        style = styles[class_id - 1]
        mask = _shape_mask(shape, rng)
        light, dark = _object_colours(style, rng)
        texture = _texture(style, shape, rng)[:, :, None]
        image[mask] = (dark + (light - dark) * texture)[mask]
        label[mask] = class_id
    image += rng.normal(0, 10, size=image.shape).astype(np.float32)  # sensor noise, everywhere
    band = 3 if min(shape) < 256 else 5
    kernel = np.ones((band, band), dtype=np.uint8)
    boundary = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    label[boundary] = IGNORE_LABEL
    return np.clip(image, 0, 255).astype(np.uint8), label


def _check(num_train: int, num_val: int, size: int, num_classes: int) -> None:
    if num_classes < 2 or num_classes > IGNORE_LABEL:
        raise BadInput(f"num_classes must be in 2..{IGNORE_LABEL}, got {num_classes}")
    if size < 16:
        raise BadInput(f"size must be >= 16, got {size}")
    if num_train < 0 or num_val < 0:
        raise BadInput("num_train and num_val must be >= 0")


def scenes(
    *, num_train: int, num_val: int, size: int, num_classes: int, seed: int
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(split, name, BGR image, label) for every scene, train then val.

    Images are ``size`` wide and 75-100 % of that high (landscape, like VOC's 500x375), so the
    pipeline's padding and evaluation's long-side resize are exercised. Deterministic for a seed:
    every image has its own generator derived from (seed, split, index).
    """
    _check(num_train, num_val, size, num_classes)
    styles = class_styles(num_classes)
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        for index in range(count):
            rng = np.random.default_rng([seed, split_id, index])
            height = int(size * rng.uniform(0.75, 1.0))
            image, label = render((height, size), styles, rng)
            yield split, f"{split}_{index:05d}", image, label


def generate(
    root: str, *, num_train: int, num_val: int, size: int, num_classes: int, seed: int
) -> tuple[str, str]:
    """Write the set under ``root`` (``images/``, ``labels/``); return the paths of train.txt and val.txt."""
    _check(num_train, num_val, size, num_classes)
    for folder in ("images", "labels"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for split, stem, image, label in scenes(
        num_train=num_train, num_val=num_val, size=size, num_classes=num_classes, seed=seed
    ):
        image_rel, label_rel = f"images/{stem}.jpg", f"labels/{stem}.png"
        _write(os.path.join(root, image_rel), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        _write(os.path.join(root, label_rel), label, [])
        lines[split].append(f"{image_rel} {label_rel}\n")
    return _write_lists(root, lines)


def generate_voc(root: str, *, num_train: int, num_val: int, size: int, num_classes: int, seed: int) -> str:
    """The same scenes in the PASCAL VOC 2012 devkit layout; returns ``root/VOCdevkit/VOC2012``.

    ``JPEGImages/<name>.jpg``, ``SegmentationClass/<name>.png`` as *palette* PNGs with VOC's colour
    map (what VOC ships; ``prepare-voc`` turns them back into index PNGs) and
    ``ImageSets/Segmentation/{train,val}.txt`` holding one name per line.
    """
    from PIL import Image

    from job.palette import voc_palette

    _check(num_train, num_val, size, num_classes)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for folder in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(voc, folder), exist_ok=True)
    names: dict[str, list[str]] = {"train": [], "val": []}
    for split, name, image, label in scenes(
        num_train=num_train, num_val=num_val, size=size, num_classes=num_classes, seed=seed
    ):
        _write(os.path.join(voc, "JPEGImages", f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        indexed = Image.fromarray(label)  # mode L; putpalette makes it a palette image of the same indices
        indexed.putpalette(voc_palette().reshape(-1).tolist())
        indexed.save(os.path.join(voc, "SegmentationClass", f"{name}.png"))
        names[split].append(f"{name}\n")
    _write_lists(os.path.join(voc, "ImageSets", "Segmentation"), names)
    return voc


def _write_lists(directory: str, lines: dict[str, list[str]]) -> tuple[str, str]:
    paths = []
    for split in ("train", "val"):
        path = os.path.join(directory, f"{split}.txt")
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(lines[split])
        paths.append(path)
    return paths[0], paths[1]


def _write(path: str, array: np.ndarray, params: list[int]) -> None:
    if not cv2.imwrite(path, array, params):
        raise OSError(f"cannot write {path}")
