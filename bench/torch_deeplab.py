"""The job's DeepLabV3 (job/model/) written in PyTorch: the peer for the training-speed comparison.

Same architecture, layer for layer: ResNet-101 v1.5 (stride on the 3x3 conv), output stride 16
(layer3 stride 2, layer4 stride 1 with dilation 2 x multi-grid (1, 2, 4)), ASPP with a 1x1 branch,
three 3x3 atrous branches (6, 12, 18) and image pooling by a global mean, all 256 channels, a 1x1
projection, dropout 0.1, a 1x1 classifier with bias (no extra 3x3 head conv) and a bilinear
upsample to the input size. Convolutions have no bias except the classifier; BN eps 1e-5 and
momentum 0.1 (MindSpore's 0.9). 58,040,661 trainable parameters for 21 classes, like the job's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = (3, 4, 23, 3)
MULTI_GRID = (1, 2, 4)
ASPP_RATES = (6, 12, 18)
CHANNELS = 256
EXPANSION = 4


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)]


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, dilation: int) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride, dilation)
        self.conv3, self.bn3 = conv_bn(width, cout, 1)
        self.downsample = (
            nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


def stage_plan_os16() -> list[tuple[int, int, tuple[int, ...]]]:
    """job.model.resnet.stage_plan(16): (stride, base dilation, unit rates) per stage."""
    return [(1, 1, (1,)), (2, 1, (1,)), (2, 1, (1,)), (1, 2, MULTI_GRID)]


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 64, 7, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, layers = 64, []
        for index, (count, (stride, dilation, grid)) in enumerate(
            zip(BLOCKS, stage_plan_os16(), strict=True)
        ):
            width, units = 64 * 2**index, []
            for block in range(count):
                rate = dilation * grid[block % len(grid)]
                units.append(Bottleneck(cin, width, stride if block == 0 else 1, rate))
                cin = width * EXPANSION
            layers.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout, kernel, dilation=dilation), nn.ReLU())


class ImagePooling(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.project = conv_bn_relu(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(x.mean(dim=(2, 3), keepdim=True))
        return F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        branches = [conv_bn_relu(cin, CHANNELS, 1)]
        branches += [conv_bn_relu(cin, CHANNELS, 3, rate) for rate in ASPP_RATES]
        branches.append(ImagePooling(cin, CHANNELS))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(CHANNELS * len(branches), CHANNELS, 1)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


class DeepLabV3(nn.Module):
    def __init__(self, num_classes: int = 21) -> None:
        super().__init__()
        self.backbone = ResNet()
        self.aspp = ASPP(self.backbone.out_channels)
        self.classifier = nn.Conv2d(CHANNELS, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.aspp(self.backbone(x)))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
