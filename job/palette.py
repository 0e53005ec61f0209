"""The PASCAL VOC colour palette, for prediction PNGs that look like VOC's SegmentationClass."""

from __future__ import annotations

import functools

import numpy as np


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


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class-id mask (H, W) -> (H, W, 3) uint8 BGR image for ``cv2.imwrite``.

    OpenCV cannot write indexed (palette) PNGs, so predictions are stored as colour images.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError("mask values must be in 0..255")
    return voc_palette()[mask.astype(np.uint8)][:, :, ::-1].copy()
