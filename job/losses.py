"""Softmax cross-entropy over pixels, ignoring ``ignore_label``, averaged over valid pixels."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class SoftmaxCrossEntropy(nn.Cell):
    """Mean over the valid pixels of ``-log softmax(logits)[label]``.

    Written out instead of ``nn.CrossEntropyLoss(ignore_index=...)`` for one reason: a batch whose
    pixels are all ignored gives 0 here (the denominator is at least 1) instead of NaN, which would
    poison the weights. The logits are cast to float32 so the loss stays fp32 under mixed precision.
    """

    def __init__(self, ignore_label: int) -> None:
        super().__init__()
        self.ignore_label = ignore_label

    def construct(self, logits, labels):
        logits = logits.astype(ms.float32)
        valid = labels != self.ignore_label
        safe = ops.where(valid, labels, ops.zeros_like(labels)).astype(ms.int32)
        log_probs = ops.log_softmax(logits, axis=1)
        picked = ops.gather_elements(log_probs, 1, safe.expand_dims(1)).squeeze(1)
        mask = valid.astype(ms.float32)
        return -(picked * mask).sum() / ops.maximum(mask.sum(), ops.ones((), ms.float32))
