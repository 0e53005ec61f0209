"""torchvision ResNet-101 state_dict -> our names, checked without torch on a synthetic state_dict."""

from __future__ import annotations

import numpy as np
import pytest

from job.errors import BadInput

pytestmark = pytest.mark.mindspore


def torchvision_resnet101_state() -> dict[str, np.ndarray]:
    """torchvision's resnet101 keys and shapes, written from its layout (not from our model)."""
    state: dict[str, np.ndarray] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        state[f"{name}.weight"] = np.zeros((cout, cin, k, k), np.float32)

    def bn(name: str, c: int) -> None:
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{key}"] = np.full((c,), 0.5, np.float32)
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


@pytest.fixture(scope="module")
def shapes():
    from job.convert_torch import backbone_shapes

    return backbone_shapes()


def test_every_backbone_parameter_is_mapped_once(shapes):
    from job.convert_torch import convert_state

    state = torchvision_resnet101_state()
    converted = convert_state(state, shapes)
    assert set(converted) == set(shapes)  # all 314 (conv + BN incl. moving statistics) covered
    assert converted["backbone.layer3.22.bn3.moving_variance"].shape == (1024,)
    assert converted["backbone.layer1.0.downsample.1.gamma"][0] == 0.5
    assert not any("fc" in name or "num_batches" in name for name in converted)


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
