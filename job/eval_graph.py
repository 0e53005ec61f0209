"""The compiled half of evaluation: network, softmax over classes, flip-back, channels last.

On a device the network is fast and the host is not: the old host side (a numpy softmax over the
padded canvas, a flipped copy, a transposed crop) cost ~1.8 s per image at 5 scales + flip on one
core, ~40x the rest of the protocol. ``ProbabilityGraph`` does those steps where the network runs,
in one graph per canvas side (MindSpore compiles a Cell once per input shape and keeps it). The
output is channels-last (N, side, side, C), so the host's crop is a view and OpenCV resizes every
class channel of it in one call without a copy.

Crop and the resize back stay on the host: their sizes depend on each image's size, and a graph
per image size would recompile for most images of a real data set.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class ProbabilityGraph(nn.Cell):
    """(N, 3, S, S) normalised canvases -> (N, S, S, C) class probabilities (flip: summed with the
    re-flipped probabilities of the mirrored canvases, as the zoo's eval does)."""

    def __init__(self, net: nn.Cell, flip: bool) -> None:
        super().__init__(auto_prefix=False)  # the network's parameter names stay its own
        self.net = net
        self.flip = flip

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        probs = ops.softmax(self.net(x).astype(ms.float32), axis=1)  # fp32 also after Ascend's O2 (fp16)
        if self.flip:
            mirrored = self.net(ops.flip(x, (3,))).astype(ms.float32)
            probs = probs + ops.flip(ops.softmax(mirrored, axis=1), (3,))
        return ops.transpose(probs, (0, 2, 3, 1))


_last: tuple[nn.Cell | None, dict[bool, ProbabilityGraph]] = (None, {})


def probability_graph(net: nn.Cell, flip: bool) -> ProbabilityGraph:
    """``net``'s ``ProbabilityGraph`` (per flip setting), the same one while ``net`` is the last
    network evaluated.

    MindSpore keys compiled graphs by Cell instance: a new wrapper per evaluation would compile
    every canvas size again (~20 s per size for DeepLabV3 on a CPU), e.g. for a benchmark's timed
    pass after its warm-up. Only the last network is remembered (a wrapper holds its network, so a
    cache of every network ever evaluated would keep them all alive).
    """
    global _last
    cached, graphs = _last
    if cached is not net:
        graphs = {}
        _last = (net, graphs)
    if flip not in graphs:
        graphs[flip] = ProbabilityGraph(net, flip)
    return graphs[flip]
