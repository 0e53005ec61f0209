"""The loss against an independent numpy reference (softmax CE, ignore_label, mean over valid pixels)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from job.losses import SoftmaxCrossEntropy

pytestmark = pytest.mark.mindspore


def reference(logits: np.ndarray, labels: np.ndarray, ignore: int) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    losses = []
    n, _, h, w = logits.shape
    for b in range(n):
        for y in range(h):
            for x in range(w):
                if labels[b, y, x] != ignore:
                    losses.append(-log_probs[b, labels[b, y, x], y, x])
    return float(np.mean(losses)) if losses else 0.0


@pytest.fixture(scope="module", autouse=True)
def cpu():
    from job import device

    device.select_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)


def test_matches_reference_with_ignored_pixels():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(2, 5, 6, 7)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 6, 7)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255
    got = SoftmaxCrossEntropy(255)(ms.Tensor(logits), ms.Tensor(labels)).asnumpy()
    assert got == pytest.approx(reference(logits, labels, 255), rel=1e-5)


def test_ignored_pixels_do_not_change_the_loss():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=(1, 4, 4)).astype(np.int32)
    loss = SoftmaxCrossEntropy(255)
    before = loss(ms.Tensor(logits), ms.Tensor(labels)).asnumpy()
    labels2, logits2 = labels.copy(), logits.copy()
    labels2[0, 0, :] = 255
    logits2[0, :, 0, :] = 100.0  # wildly wrong logits on the now-ignored pixels
    after = loss(ms.Tensor(logits2), ms.Tensor(labels2)).asnumpy()
    assert after == pytest.approx(reference(logits, np.where(labels2 == 255, 255, labels), 255), rel=1e-5)
    assert after != pytest.approx(before)


def test_all_ignored_gives_zero_not_nan():
    logits = np.zeros((1, 2, 3, 3), np.float32)
    labels = np.full((1, 3, 3), 255, np.int32)
    assert SoftmaxCrossEntropy(255)(ms.Tensor(logits), ms.Tensor(labels)).asnumpy() == 0.0
