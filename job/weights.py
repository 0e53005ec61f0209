"""Checkpoint namings: who wrote a checkpoint, told from its parameter names, and our name for each entry.

Users arrive with checkpoints written by other code: the MindSpore model zoo's ImageNet ResNet-101 (the
file its DeepLabV3 README links: shortcuts ``layerL.0.down_sample_layer.{0,1}``, classifier
``end_point``), the zoo's DeepLabV3 checkpoints (``network.resnet.*``, ``network.aspp.*``), torchvision's
ResNet-101 after ``convert-torch`` (which writes our names) and this project's own. Guessing per entry
(strip a prefix and hope) is what left the zoo backbone's 20 shortcut tensors at random initialisation
with one line on stderr. Here the naming is detected once from all the names, and each naming maps by an
explicit table, so an entry either has a known slot or is unused.

Names in, names out: no MindSpore and no I/O (``job.checkpoints`` reads, checks and loads).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from job.errors import BadInput

BACKBONE = "backbone."
CLASSIFIER = ("classifier.weight", "classifier.bias")
# A training wrapper's attribute in front of the network's names (the zoo's BuildTrainNetwork: ``network.``).
WRAPPERS = ("network.", "net.", "model.")
SHOWN = 3  # names quoted in an error before "+N more"

_BN = r"\.(?:gamma|beta|moving_mean|moving_variance)"  # MindSpore's BN parameters
# A ResNet-101 parameter in torchvision's layout with MindSpore's BN names (ours without "backbone.").
_RESNET = re.compile(
    rf"^(?:conv1\.weight|bn1{_BN}|layer[1-4]\.\d+\.(?:conv[1-3]\.weight|bn[1-3]{_BN}|"
    rf"downsample\.0\.weight|downsample\.1{_BN}))$"
)
# The zoo's ASPP (aspp1 is its 1x1 branch, aspp2-4 the rates 6/12/18) -> ours. Our image-pooling branch
# comes after the 1x1 branch and the three rates: index 4 (the zoo always has three rates, ours too).
_ZOO_HEAD = [
    *((re.compile(rf"^aspp\.aspp{i + 1}\.aspp_conv\.([01])\."), rf"aspp.branches.{i}.\1.") for i in range(4)),
    (re.compile(r"^aspp\.aspp_pooling\.conv\.([01])\."), r"aspp.branches.4.project.\1."),
    (re.compile(r"^aspp\.conv1\."), "aspp.project.0."),
    (re.compile(r"^aspp\.bn1\."), "aspp.project.1."),
    (re.compile(r"^aspp\.conv2\."), "classifier."),
]
_TORCH_ENDINGS = (".running_mean", ".running_var", ".num_batches_tracked")


@dataclass(frozen=True)
class Naming:
    """One way of naming DeepLabV3/ResNet-101 parameters; ``rename`` gives ours or None (no slot)."""

    key: str
    title: str  # shown in the coverage line
    rename: Callable[[str], str | None]


def _unwrap(name: str) -> str:
    return next((name[len(p) :] for p in WRAPPERS if name.startswith(p)), name)


def _ours(name: str) -> str | None:
    """Our own names (optimizer ``moments.*``, ``global_step`` and the like have no slot)."""
    name = _unwrap(name)
    return name if name.startswith((BACKBONE, "aspp.", "classifier.")) else None


def _resnet(name: str) -> str | None:
    """A bare ResNet-101 name; the zoo's ``down_sample_layer`` is our ``downsample``; no ``end_point``."""
    name = _unwrap(name).replace(".down_sample_layer.", ".downsample.")
    return BACKBONE + name if _RESNET.match(name) else None


def _zoo_deeplab(name: str) -> str | None:
    """The zoo's DeepLabV3: ``resnet.*`` is our backbone, ``aspp.*`` our ASPP and classifier."""
    name = _unwrap(name)
    if name.startswith("resnet."):
        return _resnet(name[len("resnet.") :])
    for pattern, replacement in _ZOO_HEAD:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return None


OURS = Naming("deeplab", "this project's DeepLabV3", _ours)
ZOO_DEEPLAB = Naming("zoo-deeplab", "model zoo DeepLabV3", _zoo_deeplab)
ZOO_RESNET = Naming("zoo-resnet", "model zoo ImageNet ResNet-101", _resnet)
RESNET = Naming("resnet", "ResNet-101 backbone", _resnet)
TORCHVISION_SOURCE = "torchvision-resnet101"  # convert-torch's meta "source"


def listing(names: list[str]) -> str:
    """The first few names and how many more: an error line stays one line."""
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def detect(names: Iterable[str], source: str) -> Naming:
    """The naming of a checkpoint's parameter names; BadInput naming ``source`` if none fits.

    Decided by all names together, never per entry: a zoo DeepLabV3 and a bare ResNet share
    ``conv1.weight``-like tails, and only the whole file says which prefix is the backbone.
    """
    names = sorted(names)
    bare = [_unwrap(name) for name in names]
    if any(name.startswith((BACKBONE, "aspp.branches.", "classifier.")) for name in bare):
        return OURS
    if any(name.startswith(("resnet.", "aspp.aspp")) for name in bare):
        return ZOO_DEEPLAB
    torch = [name for name in names if name.endswith(_TORCH_ENDINGS)]
    if torch:
        raise BadInput(
            f"{source}: PyTorch parameter names ({listing(torch)}); "
            "convert torchvision weights with `python -m job convert-torch SOURCE.pth DEST.ckpt`"
        )
    if any(_resnet(name) for name in bare):
        zoo = any(".down_sample_layer." in name or name.startswith("end_point.") for name in bare)
        return ZOO_RESNET if zoo else RESNET
    raise BadInput(
        f"{source}: no known parameter naming (this project's, the model zoo's ResNet-101 or DeepLabV3, "
        f"torchvision through convert-torch); its entries: {listing(names)}"
    )


def title(naming: Naming, meta: Mapping[str, Any]) -> str:
    """What the user loaded, in words: a converted torchvision file carries our names plus its source."""
    if naming is OURS and meta.get("source") == TORCHVISION_SOURCE:
        order = meta.get("channels", "BGR")
        return f"torchvision ResNet-101 via convert-torch, conv1 in {order} order"
    return naming.title


def to_ours(names: Iterable[str], naming: Naming, known: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """({our name: file name}, unused file names) for the names that fit a parameter in ``known``.

    A second file entry for the same parameter (``downsample`` next to ``down_sample_layer``) is unused:
    the first one in sorted order wins, so the result never depends on the file's entry order.
    """
    known = set(known)
    mapping: dict[str, str] = {}
    unused: list[str] = []
    for name in sorted(names):
        target = naming.rename(name)
        if target is None or target not in known or target in mapping:
            unused.append(name)
        else:
            mapping[target] = name
    return mapping, unused


def is_backbone(name: str) -> bool:
    return name.startswith(BACKBONE)
