"""The network: parameter count from an independent formula, dilations, shapes for any input size."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from job import recipe

pytestmark = pytest.mark.mindspore


@pytest.fixture(scope="module", autouse=True)
def cpu():
    from job import device

    device.select_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)


def expected_trainable(num_classes: int, rates: int = 3) -> int:
    """Count for the architecture in FACTS section 1, written without looking at the model code:
    convs without bias (except the classifier), BN with gamma and beta (trainable)."""

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k

    def bn(c: int) -> int:
        return 2 * c

    total = conv(3, 64, 7) + bn(64)  # stem
    cin = 64
    for stage, blocks in enumerate(recipe.RESNET101_BLOCKS):
        width = 64 * 2**stage
        for block in range(blocks):
            total += conv(cin, width, 1) + bn(width) + conv(width, width, 3) + bn(width)
            total += conv(width, 4 * width, 1) + bn(4 * width)
            if block == 0:  # projection shortcut: channels change (and stride in stages 2-4)
                total += conv(cin, 4 * width, 1) + bn(4 * width)
            cin = 4 * width
    branch = recipe.ASPP_CHANNELS
    total += conv(2048, branch, 1) + bn(branch)  # 1x1 branch
    total += rates * (conv(2048, branch, 3) + bn(branch))  # atrous branches
    total += conv(2048, branch, 1) + bn(branch)  # image pooling
    total += conv(5 * branch, branch, 1) + bn(branch)  # projection after concat
    total += conv(branch, num_classes, 1) + num_classes  # classifier with bias
    return total


def trainable_count(net) -> int:
    return sum(int(np.prod(p.shape)) for p in net.trainable_params())


# Building ResNet-101 takes seconds: one network per output stride for the whole module.
@pytest.fixture(scope="module")
def s16():
    from job.model import deeplabv3

    return deeplabv3("deeplab_v3_s16", 21)


@pytest.fixture(scope="module")
def s8():
    from job.model import deeplabv3

    return deeplabv3("deeplab_v3_s8", 21, aspp_rates=(6, 12, 18))


def test_parameter_count_matches_the_architecture_and_facts(s16):
    assert expected_trainable(21) == 58_040_661  # FACTS section 1 (the formula is right)
    assert trainable_count(s16) == expected_trainable(21)
    # BN moving statistics exist but are not trained.
    assert all("moving_" not in p.name for p in s16.trainable_params())


def conv2_dilations(layer) -> list[int]:
    return [block.conv2.dilation[0] for block in layer]


def atrous_rates(net) -> list[int]:
    return [branch[0].dilation[0] for branch in list(net.aspp.branches)[1:4]]


def test_output_stride_16_dilations_and_rates(s16):
    assert s16.backbone.layer3[0].conv2.stride == (2, 2) and set(conv2_dilations(s16.backbone.layer3)) == {1}
    assert s16.backbone.layer4[0].conv2.stride == (1, 1)
    assert conv2_dilations(s16.backbone.layer4) == [2, 4, 8]  # multi-grid (1, 2, 4) x 2
    assert atrous_rates(s16) == [6, 12, 18]


def test_output_stride_8_dilations_and_configurable_rates(s8, s16):
    assert s8.backbone.layer3[0].conv2.stride == (1, 1) and set(conv2_dilations(s8.backbone.layer3)) == {2}
    assert conv2_dilations(s8.backbone.layer4) == [4, 8, 16]
    assert atrous_rates(s8) == [6, 12, 18]  # as asked for, not the OS8 default
    # Same parameter shapes at both strides: an OS16 checkpoint initialises an OS8 stage.
    assert {p.name: p.shape for p in s16.get_parameters()} == {p.name: p.shape for p in s8.get_parameters()}


def test_default_rates_follow_the_paper():
    from job.model.deeplab import resolve_rates

    assert resolve_rates(16) == (6, 12, 18)
    assert resolve_rates(8) == (12, 24, 36)  # the paper doubles them (the zoo did not)
    assert resolve_rates(8, [3, 6, 9]) == (3, 6, 9)


@pytest.mark.parametrize(("model", "height", "width"), [("s16", 65, 65), ("s8", 33, 47)])
def test_output_has_the_input_size_in_eval_at_batch_1(model, height, width, request):
    net = request.getfixturevalue(model)
    net.set_train(False)  # moving statistics: the 1x1 image-pooling map works at batch 1
    x = ms.Tensor(np.random.default_rng(0).normal(size=(1, 3, height, width)).astype(np.float32))
    out = net(x).asnumpy()
    assert out.shape == (1, 21, height, width)
    assert np.isfinite(out).all() and out.std() > 0


def test_unknown_model_name_is_rejected():
    from job.model import deeplabv3

    with pytest.raises(ValueError, match="deeplab_v3_s32"):
        deeplabv3("deeplab_v3_s32", 21)
