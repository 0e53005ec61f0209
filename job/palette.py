"""Class colours and names: the PASCAL VOC palette by default, or a data set's own files.

Prediction PNGs use VOC's colours so they look like VOC's SegmentationClass; ``predict --palette`` and
``--class_names`` read another data set's (one line per class, or JSON) so its masks are legible too.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from job.errors import BadInput

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


@functools.cache
def voc_palette() -> np.ndarray:
    """(256, 3) uint8 RGB: VOC's bit-interleaved colour map (index 255, the ignore label, is 224,224,192)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    palette.flags.writeable = False  # cached and shared: nobody may edit it
    return palette


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class-id mask (H, W) -> (H, W, 3) uint8 BGR image for ``cv2.imwrite``; ``palette`` is (N, 3) RGB
    (default: VOC's).

    OpenCV cannot write indexed (palette) PNGs, so predictions are stored as colour images.
    """
    colours = voc_palette() if palette is None else palette
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() >= len(colours)):
        raise ValueError(f"mask values must be in 0..{len(colours) - 1}")
    return colours[mask.astype(np.intp)][:, :, ::-1].copy()


def read_palette(path: str | Path) -> np.ndarray:
    """(N, 3) uint8 RGB from a file: one ``r g b`` line per class (commas allowed, ``#`` comments), or a
    JSON list of ``[r, g, b]``. BadInput naming the file and the entry if it is not that."""
    text = _read_text(path, "palette")
    if text.lstrip().startswith("["):
        rows = _json_list(path, text, "palette")
        where = [f"entry {index + 1}" for index in range(len(rows))]
    else:
        numbered = [(number, line.split("#")[0].replace(",", " ").split()) for number, line in _lines(text)]
        rows = [fields for _, fields in numbered if fields]
        where = [f"line {number}" for number, fields in numbered if fields]
    colours = [_colour(path, place, row) for place, row in zip(where, rows, strict=True)]
    if not colours:
        raise BadInput(f"{path}: the palette has no colours")
    return np.array(colours, dtype=np.uint8)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a file: one per line (blank lines skipped), or a JSON list of strings."""
    text = _read_text(path, "class names")
    if text.lstrip().startswith("["):
        names = _json_list(path, text, "class names")
        if not all(isinstance(name, str) and name.strip() for name in names):
            raise BadInput(f"{path}: class names must be a JSON list of non-empty strings")
        names = [name.strip() for name in names]
    else:
        names = [line.strip() for _, line in _lines(text) if line.strip()]
    if not names:
        raise BadInput(f"{path}: no class names")
    return names


def default_class_names(num_classes: int) -> list[str]:
    """VOC's names for a 21-class network, otherwise ``class 0``, ``class 1``..."""
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [f"class {index}" for index in range(num_classes)]


def _read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read the {what} file ({exc})") from exc


def _lines(text: str) -> list[tuple[int, str]]:
    return list(enumerate(text.splitlines(), start=1))


def _json_list(path: str | Path, text: str, what: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON for {what} ({exc})") from exc
    if not isinstance(value, list):
        raise BadInput(f"{path}: {what} must be a JSON list")
    return value


def _colour(path: str | Path, where: str, row: object) -> tuple[int, int, int]:
    """One ``r g b`` entry as three ints in 0..255; BadInput naming ``where`` otherwise."""
    try:
        values = [int(value) for value in row]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(0 <= value <= 255 for value in values):
        raise BadInput(f"{path}: {where}: a colour is three integers 0..255 (r g b), got {row!r}")
    return values[0], values[1], values[2]
