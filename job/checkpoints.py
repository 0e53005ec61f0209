"""Checkpoints: atomic writes, keep-max, resume from the newest valid one, non-strict pretrained load.

Step checkpoints are ``<train_dir>/deeplab-<global_step:08d>.ckpt`` and carry the network, the
optimizer's momentum accumulators, its ``global_step`` (which is also the LR position) and a few
``meta_*`` entries (model name, class count, epoch). ``final.ckpt`` carries the network and metadata.
A file is written under a temporary name, fsync'ed and renamed, so a crash can never leave a
truncated file under a name that resume would pick.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mindspore as ms
from mindspore import nn

from job.errors import BadInput

STEP_PATTERN = re.compile(r"^deeplab-(\d{8})\.ckpt$")
FINAL_NAME = "final.ckpt"
META_PREFIX = "meta_"
# Prefixes other DeepLab/ResNet checkpoints put before names that are otherwise ours.
FOREIGN_PREFIXES = ("network.", "net.", "model.", "_backbone.", "resnet.")


def step_path(train_dir: str | Path, step: int) -> Path:
    return Path(train_dir) / f"deeplab-{step:08d}.ckpt"


def step_checkpoints(train_dir: str | Path) -> list[tuple[int, Path]]:
    """(global step, path) of the step checkpoints in ``train_dir``, newest first."""
    directory = Path(train_dir)
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), directory / name)
        for name in os.listdir(directory)
        if (m := STEP_PATTERN.match(name))
    ]
    return sorted(found, reverse=True)


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(entries: list[dict[str, Any]], path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``entries`` ([{"name", "data"}]) plus ``meta`` to ``path`` via tmp + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # save_checkpoint appends ".ckpt" to names without it, so the temporary name ends in .ckpt;
    # the leading dot keeps it out of STEP_PATTERN.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        ms.save_checkpoint(entries, str(tmp), append_dict={META_PREFIX + k: v for k, v in meta.items()})
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_path(path.parent, directory=True)
    return path


def prune(train_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step checkpoints; returns what was deleted."""
    removed = []
    for _, path in step_checkpoints(train_dir)[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def read(path: str | Path) -> dict[str, Any]:
    """Every entry of a checkpoint (Parameters and meta values); BadInput if unreadable."""
    if not Path(path).is_file():
        raise BadInput(f"{path}: checkpoint not found")
    try:
        return ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as exc:
        raise BadInput(f"{path}: not a readable MindSpore checkpoint ({str(exc).splitlines()[0]})") from exc


def meta_of(entries: dict[str, Any]) -> dict[str, Any]:
    """The ``meta_*`` entries as plain Python values."""
    meta = {}
    for key, value in entries.items():
        if key.startswith(META_PREFIX):
            meta[key[len(META_PREFIX) :]] = value if isinstance(value, str) else value.asnumpy().item()
    return meta


@dataclass
class LoadReport:
    """What a non-strict load did: printed for the user, checked by tests."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # network parameters the file did not have
    unused: list[str] = field(default_factory=list)  # file entries that matched nothing

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"loaded {len(self.loaded)} parameters from {self.path}; {len(self.missing)} missing, "
            f"{len(self.unused)} unused in the file"
        ]
        if self.missing:
            shown = ", ".join(self.missing[:limit]) + (" ..." if len(self.missing) > limit else "")
            lines.append(f"  missing (left at initialisation): {shown}")
        return "\n".join(lines)


def _canonical(name: str, ours: dict[str, Any]) -> str | None:
    """Map a file entry name to one of our parameter names, or None."""
    candidates = [name]
    for prefix in FOREIGN_PREFIXES:
        if name.startswith(prefix):
            candidates.append(name[len(prefix) :])
    for candidate in list(candidates):
        candidates.append("backbone." + candidate)  # a bare ResNet checkpoint
    return next((c for c in candidates if c in ours), None)


def check_shapes(path: str | Path, net: nn.Cell, entries: dict[str, Any]) -> None:
    """BadInput naming the file if any entry has the wrong shape for ``net`` (other model/classes)."""
    ours = {p.name: p for p in net.get_parameters()}
    for name, value in entries.items():
        target = ours.get(name)
        if target is not None and hasattr(value, "shape") and tuple(value.shape) != tuple(target.shape):
            raise BadInput(
                f"{path}: checkpoint does not fit this network: {name} has shape {tuple(value.shape)}, "
                f"expected {tuple(target.shape)} (different model or num_classes?)"
            )


def load_pretrained(net: nn.Cell, path: str | Path) -> LoadReport:
    """Non-strict load of a ResNet-101 ImageNet or a full DeepLab checkpoint; prints the report."""
    entries = read(path)
    ours = {p.name: p for p in net.get_parameters()}
    mapped: dict[str, Any] = {}
    report = LoadReport(str(path))
    for name, value in entries.items():
        if not isinstance(value, ms.Parameter) or name.startswith(META_PREFIX):
            continue
        target = _canonical(name, ours)
        if target is None or target in mapped:
            report.unused.append(name)
            continue
        mapped[target] = ms.Parameter(value.data, name=target)
    check_shapes(path, net, mapped)
    ms.load_param_into_net(net, mapped, strict_load=False)
    report.loaded = sorted(mapped)
    report.missing = [name for name in ours if name not in mapped]
    print(report.summary(), file=sys.stderr)
    return report


def load_strict(net: nn.Cell, path: str | Path) -> dict[str, Any]:
    """Load every network parameter from ``path`` (evaluation); BadInput if any is absent or wrong."""
    entries = read(path)
    check_shapes(path, net, entries)
    missing = [p.name for p in net.get_parameters() if p.name not in entries]
    if missing:
        raise BadInput(f"{path}: checkpoint lacks {len(missing)} network parameters (e.g. {missing[0]})")
    ms.load_param_into_net(net, {p.name: entries[p.name] for p in net.get_parameters()}, strict_load=True)
    return meta_of(entries)
