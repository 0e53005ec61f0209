"""torchvision ResNet-101 state_dict -> our names, checked without torch on a synthetic state_dict,
and end to end with torch and torchvision (`make test` installs them, as `make bench` does): our
converted backbone computes the same features as torchvision's resnet101.

Every tensor gets distinct random values, so a value that lands in the wrong parameter (a BN's weight
taken for its bias, a running mean for a variance) shows up as a mismatch, not as equal zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

from job.errors import BadInput

pytestmark = pytest.mark.mindspore


BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def torchvision_resnet101_state() -> dict[str, np.ndarray]:
    """torchvision's resnet101 keys and shapes, written from its layout (not from our model)."""
    state: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(101)

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        state[f"{name}.weight"] = rng.standard_normal((cout, cin, k, k), dtype=np.float32)

    def bn(name: str, c: int) -> None:
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{key}"] = rng.uniform(0.1, 2.0, c).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, blocks in enumerate((3, 4, 23, 3), start=1):
        width = 64 * 2 ** (stage - 1)
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1", width, cin, 1)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width, 3)
            bn(f"{prefix}.bn2", width)
            conv(f"{prefix}.conv3", width * 4, width, 1)
            bn(f"{prefix}.bn3", width * 4)
            if block == 0:
                conv(f"{prefix}.downsample.0", width * 4, cin, 1)
                bn(f"{prefix}.downsample.1", width * 4)
            cin = width * 4
    state["fc.weight"] = np.zeros((1000, 2048), np.float32)
    state["fc.bias"] = np.zeros((1000,), np.float32)
    return state


def our_name(torch_name: str) -> str:
    """The parameter a torchvision key must land in, spelt out independently of job.convert_torch."""
    stem, _, leaf = torch_name.rpartition(".")
    is_bn = stem.endswith(("bn1", "bn2", "bn3", "downsample.1"))
    return f"backbone.{stem}.{BN[leaf] if is_bn else leaf}"


@pytest.fixture(scope="module")
def shapes():
    from job.convert_torch import backbone_shapes

    return backbone_shapes()


def test_every_value_lands_in_its_parameter_and_conv1_becomes_bgr(shapes):
    from job.convert_torch import convert_state

    state = torchvision_resnet101_state()
    converted = convert_state(state, shapes)
    assert set(converted) == set(shapes)  # all 520 (104 convs + 104 BNs x 4, moving statistics too)
    kept = {
        key: value for key, value in state.items() if not key.startswith("fc.") and "num_batches" not in key
    }
    assert len(kept) == 520
    for key, value in kept.items():
        expected = value[:, ::-1] if key == "conv1.weight" else value
        assert np.array_equal(converted[our_name(key)], expected), key
    blue, red = converted["backbone.conv1.weight"][:, 0], converted["backbone.conv1.weight"][:, 2]
    assert np.array_equal(blue, state["conv1.weight"][:, 2]) and np.array_equal(
        red, state["conv1.weight"][:, 0]
    )
    bn = "backbone.layer1.0.downsample.1"
    assert np.array_equal(converted[f"{bn}.moving_variance"], state["layer1.0.downsample.1.running_var"])
    assert not np.array_equal(converted[f"{bn}.moving_variance"], converted[f"{bn}.moving_mean"])


def test_keep_rgb_leaves_conv1_as_torchvision_has_it(shapes):
    from job.convert_torch import convert_state

    state = torchvision_resnet101_state()
    converted = convert_state(state, shapes, keep_rgb=True)
    assert np.array_equal(converted["backbone.conv1.weight"], state["conv1.weight"])
    assert np.array_equal(converted["backbone.layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])


def test_cli_passes_keep_rgb_and_records_the_channel_order(monkeypatch, tmp_path):
    from job import __main__, checkpoints, convert_torch

    calls = []
    monkeypatch.setattr(convert_torch, "convert_file", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert __main__.main(["convert-torch", "r101.pth", "r101.ckpt", "--keep_rgb"]) == 0
    assert __main__.main(["convert-torch", "r101.pth", "r101.ckpt"]) == 0
    assert [kwargs for _, kwargs in calls] == [{"keep_rgb": True}, {"keep_rgb": False}]
    small = {"backbone.conv1.weight": np.ones((2, 3, 1, 1), np.float32)}
    convert_torch.save(small, str(tmp_path / "rgb.ckpt"), keep_rgb=True)
    meta = checkpoints.meta_of(checkpoints.read(tmp_path / "rgb.ckpt"))
    assert meta == {"source": "torchvision-resnet101", "channels": "RGB"}


def test_wrong_shape_missing_key_and_foreign_key_are_bad_input(shapes):
    from job.convert_torch import convert_state

    state = torchvision_resnet101_state()
    state["layer2.0.conv2.weight"] = np.zeros((128, 128, 1, 1), np.float32)
    with pytest.raises(BadInput, match=r"layer2\.0\.conv2\.weight: shape"):
        convert_state(state, shapes)
    state = torchvision_resnet101_state()
    del state["layer4.2.bn3.running_var"]
    with pytest.raises(BadInput, match="lacks 1"):
        convert_state(state, shapes)
    state = torchvision_resnet101_state()
    state["aux_classifier.0.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(BadInput, match="aux_classifier"):
        convert_state(state, shapes)


def test_missing_torch_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from job.convert_torch import load_torch_state

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(BadInput, match="needs PyTorch"):
        load_torch_state(str(tmp_path / "r101.pth"))


# DeepLabV3 at output stride 16: layer4 keeps stride 1 with dilation 2 x multi-grid (1, 2, 4).
LAYER4_RATES = (2, 4, 8)
# BN ranges: each field its own, so a swap changes the output (see test_converted_backbone_...).
BN_RANGES = {"weight": (0.5, 1.5), "bias": (-0.5, 0.5), "running_mean": (0.0, 0.4), "running_var": (0.5, 2.0)}
# Of the largest feature value. Measured 1.3e-6 (layer3) and 1.0e-6 (output): float32 (2^-24 ~ 6e-8 per
# rounding) through 104 convolutions of up to 4,608 products, summed in another order by each framework.
# A misplaced tensor is off by O(1).
RELATIVE_TOLERANCE = 1e-4


def randomized_torchvision_resnet101(torch, torchvision, seed: int):
    """torchvision's resnet101 in eval mode with our OS16 geometry and distinct random values everywhere.

    ``replace_stride_with_dilation`` gives layer4 stride 1, but torchvision dilates its three blocks
    (1, 2, 2); DeepLabV3's multi-grid uses (2, 4, 8). Dilation and padding are conv attributes, not
    weights, so they are set on the three 3x3 convs; layer1-3 are torchvision's, untouched.
    Conv weights are He-scaled so activations stay finite through 101 layers.
    """
    model = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=[False, False, True])
    for block, rate in zip(model.layer4, LAYER4_RATES, strict=True):
        block.conv2.dilation = block.conv2.padding = (rate, rate)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            leaf = name.rpartition(".")[2]
            if leaf == "num_batches_tracked":
                continue
            if tensor.ndim > 1:  # conv (and fc) weights
                scale = (2 / tensor[0].numel()) ** 0.5
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
            else:
                low, high = BN_RANGES[leaf] if "bn" in name or "downsample" in name else (-1.0, 1.0)
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


def torchvision_features(torch, model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(layer3, layer4) of torchvision's forward, without its pooling and fc."""
    with torch.no_grad():
        x = torch.from_numpy(image)
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        layer3 = model.layer3(model.layer2(model.layer1(x)))
        return layer3.numpy(), model.layer4(layer3).numpy()


def our_features(backbone, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(layer3, the backbone's own output) of our ResNet in inference mode (moving statistics)."""
    import mindspore as ms

    x = ms.Tensor(image)
    stem = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    layer3 = backbone.layer3(backbone.layer2(backbone.layer1(stem)))
    return layer3.asnumpy(), backbone(x).asnumpy()


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(max |ours - theirs|, that divided by max |theirs|): one scale for the whole feature map."""
    worst = float(np.abs(ours - theirs).max())
    return worst, worst / float(np.abs(theirs).max())


def test_converted_backbone_computes_torchvision_features(tmp_path, capsys, request):
    """The file ``python -m job convert-torch`` writes (its ``main``, in this process), loaded as
    training loads a pretrained backbone, gives torchvision's features for the same image: at layer3
    (both networks exactly torchvision's layout) and at the backbone's output (layer4 at our OS16
    dilations, set on torchvision's convs). The differences are printed outside capture.

    Swapping gamma/beta or mean/variance fails: the fields have disjoint ranges (gamma 0.5-1.5,
    beta -0.5-0.5, mean 0-0.4, variance 0.5-2), so every normalisation changes by O(1) and the
    features by far more than float32 rounding (checked once by swapping each pair in BN_NAMES:
    layer3 off by 100 % of its largest value, and overflow to inf). conv1 is flipped RGB -> BGR on
    conversion, so our network gets the image with its channels reversed (an unflipped conv1 fails too).
    Without torch/torchvision this is skipped saying so, and fails under CI=true (tests/planes.py).
    """
    from planes import show, unavailable

    try:
        import torch
        import torchvision
    except ImportError as error:
        unavailable(f"torch/torchvision not installed ({error}): `make test` or `make bench` installs them")
    import mindspore as ms

    from job import __main__, checkpoints, device, weights
    from job.model import deeplabv3

    model = randomized_torchvision_resnet101(torch, torchvision, seed=16)
    source, destination = tmp_path / "resnet101.pth", tmp_path / "resnet101.ckpt"
    torch.save(model.state_dict(), source)
    assert __main__.main(["convert-torch", str(source), str(destination)]) == 0
    assert "wrote 520 backbone parameters" in capsys.readouterr().out

    device.select_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = deeplabv3("deeplab_v3_s16", 21)
    report = checkpoints.load_pretrained(net, destination)
    assert [name for name in report.missing if weights.is_backbone(name)] == []
    net.set_train(False)

    image = np.random.default_rng(16).standard_normal((1, 3, 65, 65), dtype=np.float32)
    theirs = torchvision_features(torch, model, image)
    ours = our_features(net.backbone, np.ascontiguousarray(image[:, ::-1]))
    for where, mine, reference in zip(("layer3", "backbone output"), ours, theirs, strict=True):
        assert mine.shape == reference.shape, where
        worst, relative = relative_difference(mine, reference)
        show(
            request,
            f"{where} {reference.shape}: max |ours - torchvision| {worst:.3g}, relative {relative:.2e}",
        )
        assert relative < RELATIVE_TOLERANCE, f"{where}: {worst:.3g} ({relative:.2e} of the largest value)"
