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

    return deeplabv3("deeplab_v3_s8", 21)  # the defaults: the model zoo's rates at OS8 too


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


def test_output_stride_8_dilations_and_default_rates(s8, s16):
    assert s8.backbone.layer3[0].conv2.stride == (1, 1) and set(conv2_dilations(s8.backbone.layer3)) == {2}
    assert conv2_dilations(s8.backbone.layer4) == [4, 8, 16]
    assert atrous_rates(s8) == [6, 12, 18]  # the model zoo's, not the paper's doubled (12, 24, 36)
    # Same parameter shapes at both strides: an OS16 checkpoint initialises an OS8 stage.
    assert {p.name: p.shape for p in s16.get_parameters()} == {p.name: p.shape for p in s8.get_parameters()}


def test_default_rates_follow_the_model_zoo_at_both_strides():
    from job.model.deeplab import resolve_rates

    assert recipe.ASPP_RATES == (6, 12, 18)  # FACTS section 1: the zoo's network behind the seed's table
    assert resolve_rates(16) == resolve_rates(8) == (6, 12, 18)
    assert resolve_rates(8, recipe.PAPER_ASPP_RATES_OS8) == (12, 24, 36)  # the paper's, on request


def test_aspp_dropout_drops_70_percent_in_training_and_nothing_in_eval(s16):
    dropout = s16.aspp.dropout
    x = ms.Tensor(np.ones((1, recipe.ASPP_CHANNELS, 16, 16), np.float32))
    dropout.set_train(True)
    try:
        y = dropout(x).asnumpy()
    finally:
        dropout.set_train(False)
    dropped = float((y == 0).mean())
    assert recipe.ASPP_DROPOUT == 0.7 and abs(dropped - 0.7) < 0.02, dropped  # p is the DROP probability
    np.testing.assert_allclose(y[y != 0], 1 / 0.3, rtol=1e-5)  # survivors are rescaled by 1 / keep
    np.testing.assert_array_equal(dropout(x).asnumpy(), x.asnumpy())  # evaluation: identity


def bilinear_align_corners(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reference written from the definition: output pixel i samples input coordinate
    i * (in - 1) / (out - 1), so the corner pixels of input and output coincide."""

    def weights(size_in: int, size_out: int) -> np.ndarray:
        matrix = np.zeros((size_out, size_in))
        for i in range(size_out):
            src = i * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
            low = min(int(np.floor(src)), size_in - 1)
            high = min(low + 1, size_in - 1)
            matrix[i, low] += 1 - (src - low)
            matrix[i, high] += src - low
        return matrix

    rows, cols = weights(image.shape[-2], height), weights(image.shape[-1], width)
    return np.einsum("ij,ncjk,lk->ncil", rows, image.astype(np.float64), cols)


def test_reference_bilinear_on_a_3x3_map():
    image = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    out = bilinear_align_corners(image, 9, 9)[0, 0]
    assert out[0, 0] == 0 and out[-1, -1] == 8 and out[4, 4] == 4  # corners and centre coincide
    np.testing.assert_allclose(out[0], np.linspace(0, 2, 9))  # linear along a row


def test_final_upsampling_aligns_corners(s16):
    """At 33 px (8k+1) the OS16 logits are 3x3; the network's output is exactly their bilinear
    upsampling with aligned corners (the model zoo's ResizeBilinear(size, True))."""
    from mindspore import ops

    assert s16.align_corners is True
    s16.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).normal(size=(1, 3, 33, 33)).astype(np.float32))
    small = s16.classifier(s16.aspp(s16.backbone(x)))
    assert small.shape == (1, 21, 3, 3)
    expected = bilinear_align_corners(small.asnumpy(), 33, 33)
    scale = np.abs(expected).max()  # untrained logits are large: compare at float32 precision
    np.testing.assert_allclose(s16(x).asnumpy(), expected, rtol=0, atol=1e-5 * scale)
    # The reference tells the two conventions apart: half-pixel centres give another map.
    half_pixel = ops.interpolate(small, size=(33, 33), mode="bilinear", align_corners=False).asnumpy()
    assert np.abs(half_pixel - expected).max() > 1e-2 * scale


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
