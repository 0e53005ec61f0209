"""ResNet-101 backbone (v1.5: stride on the 3x3 conv) with atrous last stages for DeepLabV3.

Parameter names follow torchvision's (``conv1``, ``layer1.0.conv2``, ``downsample.0`` ...) with
MindSpore's BN names (gamma/beta/moving_mean/moving_variance), so ``job.convert_torch`` is a
rename. Convolutions have no bias; padding is explicit (``pad_mode="pad"``) as in torchvision, so
converted ImageNet weights see the same geometry they were trained with.
"""

from __future__ import annotations

from mindspore import nn

from job import recipe

EXPANSION = 4


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> list[nn.Cell]:
    """Conv (no bias, torch-style symmetric padding) + BN; returned as a list for SequentialCell."""
    padding = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(
        cin,
        cout,
        kernel,
        stride=stride,
        pad_mode="pad",
        padding=padding,
        dilation=dilation,
        has_bias=False,
        weight_init="HeNormal",
    )
    return [conv, batch_norm(cout)]


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BN with torch-equivalent settings.

    MindSpore 2.10 still has the pre-2.9-announcement signature (checked): ``momentum`` is the
    weight of the OLD moving statistic (0.9 here == torch's 0.1), and ``use_batch_statistics=None``
    means batch statistics in training and moving statistics in evaluation.
    """
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)


class Bottleneck(nn.Cell):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand, plus the (projected) shortcut."""

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride=stride, dilation=dilation)
        self.conv3, self.bn3 = conv_bn(width, cout, 1)
        self.relu = nn.ReLU()
        self.has_downsample = stride != 1 or cin != cout
        self.downsample = (
            nn.SequentialCell(conv_bn(cin, cout, 1, stride=stride)) if self.has_downsample else None
        )

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.has_downsample else x
        return self.relu(out + identity)


def stage_plan(output_stride: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """(stride, base dilation, per-block unit rates) for layer1..layer4 at output stride 16 or 8.

    OS16: layer4 stride 1, dilation 2 x multi-grid (1, 2, 4). OS8: layer3 stride 1 dilation 2,
    layer4 dilation 4 x multi-grid. Kept as data so the tests can check it directly.
    """
    if output_stride == 16:
        return [(1, 1, (1,)), (2, 1, (1,)), (2, 1, (1,)), (1, 2, recipe.MULTI_GRID)]
    if output_stride == 8:
        return [(1, 1, (1,)), (2, 1, (1,)), (1, 2, (1,)), (1, 4, recipe.MULTI_GRID)]
    raise ValueError(f"output stride must be 8 or 16, not {output_stride}")


class ResNet(nn.Cell):
    """Stem (7x7/2 conv + 3x3/2 max-pool) and four bottleneck stages; returns layer4's features."""

    def __init__(self, blocks: tuple[int, ...] = recipe.RESNET101_BLOCKS, output_stride: int = 16) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 64, 7, stride=2)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        cin = 64
        layers = []
        for index, (count, (stride, dilation, grid)) in enumerate(
            zip(blocks, stage_plan(output_stride), strict=True)
        ):
            width = 64 * 2**index
            units = []
            for block in range(count):
                rate = dilation * grid[block % len(grid)]
                units.append(Bottleneck(cin, width, stride=stride if block == 0 else 1, dilation=rate))
                cin = width * EXPANSION
            layers.append(nn.SequentialCell(units))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = cin

    def construct(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def recompute_blocks(self) -> int:
        """Mark every bottleneck for recomputation, except its BatchNorm ops; returns how many blocks.

        The backward pass then recomputes a block's convolutions and ReLUs from stored tensors instead
        of keeping their outputs from the forward pass: less activation memory for a second forward
        through most of the backbone. Per block, not per stage: a stage-wide recompute would hold a
        whole stage's activations at once while it is recomputed (layer3 is 23 blocks).

        BatchNorm is kept out (its outputs stay stored): in training it updates its moving statistics
        as a side effect of the forward op, and a recomputed BatchNorm updates them a second time
        (measured, MindSpore 2.10 CPU: the moving means after one step differ ~2x), which would
        corrupt evaluation while the losses stay identical. MindSpore lets a primitive's own
        ``recompute(False)`` override its cell's.
        """
        count = 0
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                block.recompute()
                for _, cell in block.cells_and_names():
                    if isinstance(cell, nn.BatchNorm2d):
                        cell.bn_train.recompute(False)
                count += 1
        return count
