"""Every checkpoint naming users have puts each tensor into its own parameter (job/weights.py + loading).

One real ResNet-101 DeepLabV3 is built for the module and given distinct random values in every tensor.
A checkpoint in each naming is written from those values by renaming, with the names spelt out here
from ../shared/reference/FACTS.md section 1 (not from job/weights.py's tables). Loading it into the same
network after overwriting every parameter must give back every value: a swapped or skipped tensor fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from job import checkpoints, weights
from job.errors import BadInput

pytestmark = pytest.mark.mindspore

SCRAMBLED = -9.0
# Our name prefix -> the model zoo DeepLabV3's (deeplab_v3.py: resnet, aspp.aspp1..4 = 1x1 + rates 6/12/18,
# aspp_pooling, conv1/bn1 = projection, conv2 = classifier), saved from its training wrapper ("network.").
ZOO_DEEPLAB = [
    ("backbone.", "resnet."),
    ("aspp.branches.0.", "aspp.aspp1.aspp_conv."),
    ("aspp.branches.1.", "aspp.aspp2.aspp_conv."),
    ("aspp.branches.2.", "aspp.aspp3.aspp_conv."),
    ("aspp.branches.3.", "aspp.aspp4.aspp_conv."),
    ("aspp.branches.4.project.", "aspp.aspp_pooling.conv."),
    ("aspp.project.0.", "aspp.conv1."),
    ("aspp.project.1.", "aspp.bn1."),
    ("classifier.", "aspp.conv2."),
]
TORCH_BN = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def zoo_deeplab_name(ours: str) -> str:
    for mine, theirs in ZOO_DEEPLAB:
        if ours.startswith(mine):
            return "network." + theirs + ours[len(mine) :]
    raise AssertionError(f"no zoo name for {ours}")


def zoo_resnet_name(ours: str) -> str:
    """The zoo's ImageNet ResNet-101: bare names, shortcuts called down_sample_layer."""
    return ours.removeprefix("backbone.").replace(".downsample.", ".down_sample_layer.")


def torchvision_name(ours: str) -> str:
    name = ours.removeprefix("backbone.")
    stem, _, leaf = name.rpartition(".")
    return f"{stem}.{TORCH_BN.get(leaf, leaf)}"


@pytest.fixture(scope="module")
def net():
    from job.model import deeplabv3

    return deeplabv3("deeplab_v3_s16", 21)


@pytest.fixture(scope="module")
def original(net) -> dict[str, np.ndarray]:
    """Distinct random values for every tensor (BN statistics too: defaults 0/1 would match anything)."""
    rng = np.random.default_rng(10)
    values = {}
    for param in net.get_parameters():
        value = rng.standard_normal(tuple(param.shape), dtype=np.float32)
        values[param.name] = np.abs(value) + 0.1 if param.name.endswith("moving_variance") else value
    return values


@pytest.fixture(scope="module")
def shapes(net) -> dict[str, tuple[int, ...]]:
    return {p.name: tuple(p.shape) for p in net.get_parameters()}


@pytest.fixture(scope="module")
def backbone_names(shapes) -> list[str]:
    return [name for name in shapes if name.startswith("backbone.")]


def save(path: Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    entries = [{"name": name, "data": ms.Tensor(array)} for name, array in arrays.items()]
    ms.save_checkpoint(entries, str(path), append_dict=meta)
    return path


def scramble(net) -> None:
    for param in net.get_parameters():
        param.set_data(ms.Tensor(np.full(tuple(param.shape), SCRAMBLED, np.float32)))


def differing(net, expected: dict[str, np.ndarray], names) -> list[str]:
    current = {p.name: p for p in net.get_parameters()}
    return [name for name in names if not np.array_equal(current[name].asnumpy(), expected[name])]


def is_scrambled(net, names) -> bool:
    current = {p.name: p for p in net.get_parameters()}
    return all(np.all(current[name].asnumpy() == SCRAMBLED) for name in names)


# -- pure: detection and the zoo's names --------------------------------------------------------------


def test_detection_by_the_whole_set_of_names():
    assert weights.detect(["conv1.weight", "layer1.0.down_sample_layer.0.weight"], "f") is weights.ZOO_RESNET
    assert (
        weights.detect(["conv1.weight", "end_point.bias", "layer1.0.conv1.weight"], "f") is weights.ZOO_RESNET
    )
    assert weights.detect(["conv1.weight", "layer1.0.downsample.0.weight"], "f") is weights.RESNET
    assert (
        weights.detect(["network.resnet.conv1.weight", "network.aspp.conv2.bias"], "f") is weights.ZOO_DEEPLAB
    )
    assert weights.detect(["resnet.conv1.weight", "aspp.conv2.bias"], "f") is weights.ZOO_DEEPLAB
    assert weights.detect(["backbone.conv1.weight", "moments.backbone.conv1.weight"], "f") is weights.OURS
    meta = {"source": "torchvision-resnet101", "channels": "BGR"}
    assert weights.title(weights.OURS, meta) == "torchvision ResNet-101 via convert-torch, conv1 in BGR order"


def test_unknown_and_pytorch_names_are_bad_input_saying_what_to_do():
    with pytest.raises(
        BadInput, match=r"^x\.ckpt: PyTorch parameter names \(bn1\.running_mean\).*convert-torch"
    ):
        weights.detect(["conv1.weight", "bn1.running_mean"], "x.ckpt")
    with pytest.raises(BadInput, match=r"^y\.ckpt: no known parameter naming .*: a, b, c \(\+1 more\)$"):
        weights.detect(["d", "c", "b", "a"], "y.ckpt")


def test_zoo_names_without_the_wrapper_and_optimizer_state():
    rename = weights.ZOO_DEEPLAB.rename
    assert rename("aspp.aspp_pooling.conv.1.moving_mean") == "aspp.branches.4.project.1.moving_mean"
    assert rename("resnet.layer2.0.down_sample_layer.1.beta") == "backbone.layer2.0.downsample.1.beta"
    assert rename("moments.network.resnet.conv1.weight") is None
    assert rename("global_step") is None and rename("learning_rate") is None
    assert weights.ZOO_RESNET.rename("end_point.weight") is None


# -- each naming, loaded into the real network ------------------------------------------------------------


def test_model_zoo_imagenet_resnet_fills_the_whole_backbone(net, original, backbone_names, tmp_path, capsys):
    arrays = {zoo_resnet_name(name): original[name] for name in backbone_names}
    assert sum(".down_sample_layer." in name for name in arrays) == 20  # the tensors issue #10 found random
    arrays["end_point.weight"] = np.ones((1000, 2048), np.float32)
    arrays["end_point.bias"] = np.ones((1000,), np.float32)
    arrays["moments.conv1.weight"] = np.ones((64, 3, 7, 7), np.float32)
    path = save(tmp_path / "resnet101_zoo.ckpt", arrays)
    scramble(net)
    report = checkpoints.load_pretrained(net, path)
    assert differing(net, original, backbone_names) == []
    head = [p.name for p in net.get_parameters() if not p.name.startswith("backbone.")]
    assert is_scrambled(net, head)
    assert set(report.unused) == {"end_point.weight", "end_point.bias", "moments.conv1.weight"}
    line = (
        f"deeplab-job: loaded {path} (model zoo ImageNet ResNet-101): backbone 520/520 tensors, "
        "head not in the checkpoint (initialised at random)"
    )
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_backbone_tensor_left_random_is_exit_2_unless_allow_partial(
    net, original, backbone_names, tmp_path, capsys
):
    """The shortcuts under a name nobody maps: the exact situation of issue #10."""
    arrays = {
        zoo_resnet_name(n).replace("down_sample_layer", "shortcut"): original[n] for n in backbone_names
    }
    arrays["end_point.bias"] = np.ones((1000,), np.float32)
    path = save(tmp_path / "renamed.ckpt", arrays)
    scramble(net)
    with pytest.raises(BadInput) as error:
        checkpoints.load_pretrained(net, path)
    assert str(error.value) == (
        f"{path} (model zoo ImageNet ResNet-101): 20 of 520 backbone tensors are not in the checkpoint: "
        "backbone.layer1.0.downsample.0.weight, backbone.layer1.0.downsample.1.moving_mean, "
        "backbone.layer1.0.downsample.1.moving_variance (+17 more); "
        "--allow_partial trains with them at random initialisation"
    )
    assert is_scrambled(net, backbone_names)  # nothing loaded before the refusal
    report = checkpoints.load_pretrained(net, path, allow_partial=True)
    absent = [name for name in backbone_names if ".downsample." in name]
    assert report.missing[:20] == absent and is_scrambled(net, absent)
    assert differing(net, original, [name for name in backbone_names if name not in absent]) == []
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"deeplab-job: loaded {path} (model zoo ImageNet ResNet-101): backbone 500/520 tensors "
        "(20 left at random initialisation: --allow_partial), "
        "head not in the checkpoint (initialised at random)"
    )


def test_model_zoo_deeplab_checkpoint_loads_every_tensor_for_training_and_evaluation(
    net, original, shapes, tmp_path, capsys
):
    arrays = {zoo_deeplab_name(name): original[name] for name in shapes}
    arrays["moments.network.aspp.conv2.weight"] = np.ones((21, 256, 1, 1), np.float32)
    arrays["global_step"] = np.array([3000], np.int32)
    path = save(tmp_path / "deeplabv3_s8_zoo.ckpt", arrays)
    scramble(net)
    checkpoints.load_pretrained(net, path)
    assert differing(net, original, shapes) == []
    scramble(net)
    assert checkpoints.load_strict(net, path) == {}
    assert differing(net, original, shapes) == []
    line = f"deeplab-job: loaded {path} (model zoo DeepLabV3): backbone 520/520 tensors, head loaded"
    assert capsys.readouterr().err.splitlines() == [line, line]

    scramble(net)
    report = checkpoints.load_pretrained(net, path, filter_weight=True)
    assert report.dropped == ["classifier.weight", "classifier.bias"]
    assert is_scrambled(net, weights.CLASSIFIER)
    assert differing(net, original, [name for name in shapes if name not in weights.CLASSIFIER]) == []
    assert capsys.readouterr().err.endswith(
        "backbone 520/520 tensors, "
        "head loaded except the classifier (--filter_weight: initialised at random)\n"
    )


def test_torchvision_weights_through_convert_torch(net, original, backbone_names, shapes, tmp_path, capsys):
    """torchvision's conv1 sees RGB: our BGR filter's channel 0 (blue) is its channel 2."""
    from job import convert_torch

    state = {torchvision_name(name): original[name] for name in backbone_names}
    state["conv1.weight"] = original["backbone.conv1.weight"][:, ::-1].copy()
    state["bn1.num_batches_tracked"] = np.array(5)
    state["fc.weight"] = np.ones((1000, 2048), np.float32)
    arrays = convert_torch.convert_state(state, {n: shapes[n] for n in backbone_names})
    path = tmp_path / "resnet101_tv.ckpt"
    convert_torch.save(arrays, str(path))
    scramble(net)
    checkpoints.load_pretrained(net, path)
    assert differing(net, original, backbone_names) == []
    assert capsys.readouterr().err.splitlines() == [
        f"deeplab-job: loaded {path} (torchvision ResNet-101 via convert-torch, conv1 in BGR order): "
        "backbone 520/520 tensors, head not in the checkpoint (initialised at random)"
    ]


def test_this_projects_checkpoint_with_optimizer_state(net, original, shapes, tmp_path, capsys):
    arrays = dict(original)
    arrays["moments.classifier.weight"] = np.ones((21, 256, 1, 1), np.float32)
    arrays["global_step"] = np.array([7], np.int32)
    path = save(tmp_path / "deeplab-00000007.ckpt", arrays, {"meta_model": "deeplab_v3_s16", "meta_step": 7})
    scramble(net)
    report = checkpoints.load_pretrained(net, path)
    assert differing(net, original, shapes) == [] and report.missing == []
    scramble(net)
    assert checkpoints.load_strict(net, path) == {"model": "deeplab_v3_s16", "step": 7}
    assert differing(net, original, shapes) == []
    line = f"deeplab-job: loaded {path} (this project's DeepLabV3): backbone 520/520 tensors, head loaded"
    assert capsys.readouterr().err.splitlines() == [line, line]


def test_evaluation_refuses_a_backbone_only_checkpoint(net, original, backbone_names, tmp_path):
    path = save(tmp_path / "backbone.ckpt", {name: original[name] for name in backbone_names[:5]})
    with pytest.raises(BadInput) as error:
        checkpoints.load_strict(net, path)
    assert re.fullmatch(
        rf"{re.escape(str(path))} \(this project's DeepLabV3\): lacks 547 of 552 network parameters: "
        r"backbone\.layer1\.0\.conv1\.weight, .* \(\+544 more\); this needs a whole DeepLabV3 checkpoint",
        str(error.value),
    )
