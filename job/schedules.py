"""Per-step learning-rate schedules (cos, poly, exp) as numpy arrays.

The optimizer indexes the array with its own ``global_step``, so restoring that counter on resume
restores the LR position too.
"""

from __future__ import annotations

import math

import numpy as np

from job import recipe


def cosine(base_lr: float, total_steps: int) -> np.ndarray:
    """``base * 0.5 * (1 + cos(pi * i / D))``."""
    steps = np.arange(total_steps, dtype=np.float64)
    return base_lr * 0.5 * (1.0 + np.cos(math.pi * np.minimum(steps, total_steps) / total_steps))


def poly(
    base_lr: float, total_steps: int, end_lr: float = 0.0, power: float = recipe.POLY_POWER
) -> np.ndarray:
    """``(base - end) * (1 - i / D) ** power + end``."""
    steps = np.arange(total_steps, dtype=np.float64)
    return (base_lr - end_lr) * (1.0 - np.minimum(steps, total_steps) / total_steps) ** power + end_lr


def exponential(base_lr: float, total_steps: int, decay_steps: int, decay_rate: float) -> np.ndarray:
    """Staircase: ``base * rate ** (i // decay_steps)``."""
    steps = np.arange(total_steps)
    return base_lr * decay_rate ** (steps // decay_steps).astype(np.float64)


def learning_rates(
    lr_type: str,
    base_lr: float,
    total_steps: int,
    *,
    end_lr: float = 0.0,
    decay_steps: int = 1,
    decay_rate: float = 0.1,
) -> np.ndarray:
    """The LR of every step 0..total_steps-1 as float32 (what the optimizer takes)."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if lr_type == "cos":
        lrs = cosine(base_lr, total_steps)
    elif lr_type == "poly":
        lrs = poly(base_lr, total_steps, end_lr)
    elif lr_type == "exp":
        lrs = exponential(base_lr, total_steps, decay_steps, decay_rate)
    else:
        raise ValueError(f"unknown lr_type {lr_type!r}")
    return lrs.astype(np.float32)
