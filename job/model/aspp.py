"""Atrous Spatial Pyramid Pooling (DeepLabV3, section 3.3)."""

from __future__ import annotations

from mindspore import nn, ops

from job import recipe
from job.model.resnet import batch_norm


def conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.SequentialCell:
    padding = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(
        cin,
        cout,
        kernel,
        pad_mode="pad",
        padding=padding,
        dilation=dilation,
        has_bias=False,
        weight_init="HeNormal",
    )
    return nn.SequentialCell([conv, batch_norm(cout), nn.ReLU()])


class ImagePooling(nn.Cell):
    """Image-level features: global mean -> 1x1 conv + BN + ReLU -> back to the feature size.

    A global mean (not a fixed AvgPool kernel as in the model zoo) works for any, also non-square,
    feature map. At batch 1 in training the BN sees a single value per channel; in evaluation it uses
    moving statistics, so batch 1 is fine there.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.project = conv_bn_relu(cin, cout, 1)

    def construct(self, x):
        size = x.shape[2:]
        pooled = self.project(x.mean(axis=(2, 3), keep_dims=True))
        return ops.interpolate(pooled, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Cell):
    """1x1 branch + one 3x3 atrous branch per rate + image pooling, concat, 1x1 projection, dropout.

    ``dropout`` is the probability of DROPPING a value (MindSpore 2.x ``nn.Dropout(p=...)``), applied
    in training only; evaluation passes the projection through unchanged.
    """

    def __init__(
        self,
        cin: int,
        rates: tuple[int, ...],
        channels: int = recipe.ASPP_CHANNELS,
        dropout: float = recipe.ASPP_DROPOUT,
    ) -> None:
        super().__init__()
        branches = [conv_bn_relu(cin, channels, 1)]
        branches += [conv_bn_relu(cin, channels, 3, dilation=rate) for rate in rates]
        branches.append(ImagePooling(cin, channels))
        self.branches = nn.CellList(branches)
        self.project = conv_bn_relu(channels * len(branches), channels, 1)
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, x):
        outputs = ()
        for branch in self.branches:
            outputs = (*outputs, branch(x))
        return self.dropout(self.project(ops.cat(outputs, axis=1)))
