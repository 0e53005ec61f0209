"""DeepLabV3 = ResNet-101 (atrous) + ASPP + 1x1 classifier, upsampled to the input size."""

from __future__ import annotations

from mindspore import nn, ops

from job import recipe
from job.model.aspp import ASPP
from job.model.resnet import ResNet


def resolve_rates(output_stride: int, aspp_rates=None) -> tuple[int, ...]:
    """Given rates, else the model zoo's (6, 12, 18) at either stride (the seed's table used them).

    ``output_stride`` is kept in the signature: the paper's rule depends on it (it doubles the rates at
    OS8), and callers state the stride they build for.
    """
    if output_stride not in recipe.MODELS.values():
        raise ValueError(f"output stride must be 8 or 16, not {output_stride}")
    return tuple(aspp_rates) if aspp_rates else recipe.ASPP_RATES


class DeepLabV3(nn.Cell):
    """Logits (N, classes, H, W) at the input's own size, for any H and W."""

    def __init__(
        self,
        num_classes: int,
        output_stride: int = 16,
        aspp_rates: tuple[int, ...] | None = None,
        aspp_dropout: float = recipe.ASPP_DROPOUT,
        align_corners: bool = recipe.ALIGN_CORNERS,
    ):
        super().__init__()
        rates = resolve_rates(output_stride, aspp_rates)
        self.backbone = ResNet(recipe.RESNET101_BLOCKS, output_stride)
        self.aspp = ASPP(self.backbone.out_channels, rates, dropout=aspp_dropout)
        self.classifier = nn.Conv2d(
            recipe.ASPP_CHANNELS, num_classes, 1, has_bias=True, weight_init="HeNormal"
        )
        self.output_stride = output_stride
        self.aspp_rates = rates
        self.aspp_dropout = aspp_dropout
        self.num_classes = num_classes
        self.align_corners = bool(align_corners)  # a Python constant: GRAPH mode folds it in

    def construct(self, x):
        size = x.shape[2:]
        logits = self.classifier(self.aspp(self.backbone(x)))
        return ops.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)


def deeplabv3(
    model_name: str = "deeplab_v3_s16",
    num_classes: int = recipe.NUM_CLASSES,
    aspp_rates=None,
    aspp_dropout: float = recipe.ASPP_DROPOUT,
    align_corners: bool = recipe.ALIGN_CORNERS,
) -> DeepLabV3:
    """Build by the recipe's model name (``deeplab_v3_s16`` / ``deeplab_v3_s8``)."""
    if model_name not in recipe.MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(recipe.MODELS)}")
    return DeepLabV3(num_classes, recipe.MODELS[model_name], aspp_rates, aspp_dropout, align_corners)
