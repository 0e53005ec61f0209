"""torchvision ResNet-101 ``state_dict`` -> MindSpore checkpoint with this project's parameter names.

``convert_state`` works on any mapping of name -> array (testable without torch); loading the torch
file is a thin shell, and torch is imported only there (it is not a dependency of the job).

torchvision's ImageNet weights were trained on RGB input, while this pipeline decodes BGR (OpenCV) and
normalises in BGR order, as the model zoo's DeepLabV3 does. So conv1's input channels are reversed on
conversion: each filter meets the colour it learnt on. ``keep_rgb`` leaves them as they are (to compare
with a run that did not flip). The choice is recorded in the checkpoint (``meta_channels``) and shown
when the file is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from job import weights
from job.errors import BadInput

BN_NAMES = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
# conv1 / bn1 / layerN.i.{conv,bn}k / layerN.i.downsample.{0,1}; "fc." and num_batches_tracked are dropped.
_CONV = re.compile(r"^(conv1|layer\d\.\d+\.conv\d|layer\d\.\d+\.downsample\.0)\.weight$")
_BN = re.compile(
    r"^(bn1|layer\d\.\d+\.bn\d|layer\d\.\d+\.downsample\.1)\.(weight|bias|running_mean|running_var)$"
)
SKIPPED = re.compile(r"^fc\.|\.num_batches_tracked$")
FIRST_CONV = "backbone.conv1.weight"  # (64, 3, 7, 7): axis 1 is the input colour channel


def rename(torch_name: str) -> str | None:
    """Our name for a torchvision ResNet key; None for keys we drop (fc, num_batches_tracked)."""
    if SKIPPED.search(torch_name):
        return None
    if _CONV.match(torch_name):
        return f"backbone.{torch_name}"
    if match := _BN.match(torch_name):
        return f"backbone.{match.group(1)}.{BN_NAMES[match.group(2)]}"
    raise BadInput(f"unexpected key {torch_name!r}: not a torchvision ResNet state_dict")


def convert_state(
    state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], *, keep_rgb: bool = False
) -> dict[str, np.ndarray]:
    """Rename, check shapes against ``expected`` (our backbone parameter name -> shape) and, unless
    ``keep_rgb``, reverse conv1's input channels (RGB -> BGR, see the module's docstring).

    Every backbone parameter must be covered exactly once: a partial conversion would silently
    leave random layers behind the "pretrained" label.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = rename(key)
        if name is None:
            continue
        array = np.asarray(value, dtype=np.float32)
        if name not in expected:
            raise BadInput(f"{key}: no parameter {name} in the network (not ResNet-101?)")
        if tuple(array.shape) != tuple(expected[name]):
            raise BadInput(f"{key}: shape {array.shape} does not match {name} {tuple(expected[name])}")
        out[name] = array
    missing = sorted(set(expected) - set(out))
    if missing:
        raise BadInput(f"state_dict lacks {len(missing)} ResNet-101 parameters (e.g. {missing[0]})")
    return out if keep_rgb else rgb_to_bgr(out)


def rgb_to_bgr(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights for BGR input: conv1's input channels reversed, everything else unchanged."""
    out = dict(arrays)
    out[FIRST_CONV] = np.ascontiguousarray(out[FIRST_CONV][:, ::-1])
    return out


def backbone_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of our ResNet-101 backbone (builds it once; needs MindSpore)."""
    from job.model import deeplabv3

    net = deeplabv3("deeplab_v3_s16", 21)
    return {p.name: tuple(p.shape) for p in net.get_parameters() if p.name.startswith("backbone.")}


def load_torch_state(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise BadInput("convert-torch needs PyTorch: pip install torch (CPU build is enough)") from exc
    if not Path(path).is_file():
        raise BadInput(f"{path}: file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def save(arrays: Mapping[str, np.ndarray], destination: str, *, keep_rgb: bool = False) -> None:
    import mindspore as ms

    from job import checkpoints

    entries = [{"name": name, "data": ms.Tensor(array)} for name, array in arrays.items()]
    meta = {"source": weights.TORCHVISION_SOURCE, "channels": "RGB" if keep_rgb else "BGR"}
    checkpoints.save_atomic(entries, destination, meta)


def convert_file(source: str, destination: str, *, keep_rgb: bool = False) -> None:
    arrays = convert_state(load_torch_state(source), backbone_shapes(), keep_rgb=keep_rgb)
    save(arrays, destination, keep_rgb=keep_rgb)
    order = "kept in RGB order (--keep_rgb)" if keep_rgb else "reversed RGB -> BGR"
    print(f"wrote {len(arrays)} backbone parameters to {destination}; conv1 input channels {order}")
