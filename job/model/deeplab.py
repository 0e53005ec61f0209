"""DeepLabV3 = ResNet-101 (atrous) + ASPP + 1x1 classifier, upsampled to the input size."""

from __future__ import annotations

from mindspore import nn, ops

from job import recipe
from job.model.aspp import ASPP
from job.model.resnet import ResNet


def resolve_rates(output_stride: int, aspp_rates=None) -> tuple[int, ...]:
    """Given rates, else the paper's for the stride: (6, 12, 18) at OS16, doubled at OS8."""
    return tuple(aspp_rates) if aspp_rates else recipe.ASPP_RATES[output_stride]


class DeepLabV3(nn.Cell):
    """Logits (N, classes, H, W) at the input's own size, for any H and W."""

    def __init__(self, num_classes: int, output_stride: int = 16, aspp_rates: tuple[int, ...] | None = None):
        super().__init__()
        rates = resolve_rates(output_stride, aspp_rates)
        self.backbone = ResNet(recipe.RESNET101_BLOCKS, output_stride)
        self.aspp = ASPP(self.backbone.out_channels, rates)
        self.classifier = nn.Conv2d(
            recipe.ASPP_CHANNELS, num_classes, 1, has_bias=True, weight_init="HeNormal"
        )
        self.output_stride = output_stride
        self.aspp_rates = rates
        self.num_classes = num_classes

    def construct(self, x):
        size = x.shape[2:]
        logits = self.classifier(self.aspp(self.backbone(x)))
        return ops.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def deeplabv3(
    model_name: str = "deeplab_v3_s16", num_classes: int = recipe.NUM_CLASSES, aspp_rates=None
) -> DeepLabV3:
    """Build by the recipe's model name (``deeplab_v3_s16`` / ``deeplab_v3_s8``)."""
    if model_name not in recipe.MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(recipe.MODELS)}")
    return DeepLabV3(num_classes, recipe.MODELS[model_name], aspp_rates)
