"""torchvision ResNet-101 state_dict -> our names, checked without torch on a synthetic state_dict,
and, where torch and torchvision are installed (the bench's), end to end: our converted backbone
computes the same features as torchvision's resnet101.

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
