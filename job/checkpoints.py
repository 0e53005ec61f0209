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

from job import weights
from job.errors import BadInput

STEP_PATTERN = re.compile(r"^deeplab-(\d{8})\.ckpt$")
FINAL_NAME = "final.ckpt"
META_PREFIX = "meta_"


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


def available_memory() -> int | None:
    """MemAvailable in bytes: free memory plus the page cache the kernel can reclaim.

    MindSpore 2.10's load_checkpoint refuses a .ckpt larger than sysconf(SC_AVPHYS_PAGES), which is
    MemFree: on a machine whose page cache is large (etcd, datasets, earlier checkpoints) a valid
    230 MB checkpoint then "exceeds current available memory" with gigabytes available, and a resume
    would skip it as unreadable and start again from step 0 (seen here under load)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _measure_memory_as_the_kernel_does() -> None:
    from mindspore.train import serialization

    if hasattr(serialization, "_get_available_memory"):
        serialization._get_available_memory = available_memory


_measure_memory_as_the_kernel_does()


def read(path: str | Path) -> dict[str, Any]:
    """Every entry of a checkpoint (Parameters and meta values); BadInput if unreadable.

    Too little memory to parse it is a runtime failure (worth a retry), never "unreadable": a resume
    must not skip a good checkpoint."""
    if not Path(path).is_file():
        raise BadInput(f"{path}: checkpoint not found")
    try:
        return ms.load_checkpoint(str(path))
    except MemoryError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        if "exceeds current available memory" in str(exc) or "not enough memory" in str(exc):
            raise RuntimeError(f"{path}: {str(exc).splitlines()[0]}") from exc
        hint = "; convert PyTorch weights with `python -m job convert-torch`" if _is_torch_file(path) else ""
        raise BadInput(
            f"{path}: not a readable MindSpore checkpoint ({str(exc).splitlines()[0]}){hint}"
        ) from exc


def _is_torch_file(path: str | Path) -> bool:
    return Path(path).suffix in (".pth", ".pt")


def meta_of(entries: dict[str, Any]) -> dict[str, Any]:
    """The ``meta_*`` entries as plain Python values."""
    meta = {}
    for key, value in entries.items():
        if key.startswith(META_PREFIX):
            meta[key[len(META_PREFIX) :]] = value if isinstance(value, str) else value.asnumpy().item()
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the ``meta_*`` entries (what the network must be built as, before its weights load);
    BadInput if unreadable. A file without them (older, or a model zoo checkpoint) gives {}."""
    if not Path(path).is_file():
        raise BadInput(f"{path}: checkpoint not found")
    names: list[str] = []

    def is_meta(name: str) -> bool:
        names.append(name)
        return name.startswith(META_PREFIX)

    try:
        entries = ms.load_checkpoint(str(path), choice_func=is_meta)
    except (ValueError, RuntimeError, OSError) as exc:
        if names and not any(name.startswith(META_PREFIX) for name in names):
            return {}  # parsed, but MindSpore refuses an empty selection
        raise BadInput(f"{path}: not a readable MindSpore checkpoint ({str(exc).splitlines()[0]})") from exc
    return meta_of(entries)


@dataclass
class LoadReport:
    """What a load did, by our parameter names: printed as one coverage line, checked by tests."""

    path: str
    source: str  # the detected naming in words (job/weights.py)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # network parameters left at initialisation
    unused: list[str] = field(default_factory=list)  # file entries without a slot (optimizer state...)
    dropped: list[str] = field(default_factory=list)  # had a slot, left out on purpose (--filter_weight)

    def summary(self) -> str:
        """One line: backbone tensors loaded / expected, and whether the head was loaded."""
        loaded = [name for name in self.loaded if weights.is_backbone(name)]
        missing = [name for name in self.missing if weights.is_backbone(name)]
        expected = len(loaded) + len(missing)
        text = f"loaded {self.path} ({self.source}): backbone {len(loaded)}/{expected} tensors"
        if missing:
            text += f" ({len(missing)} left at random initialisation: --allow_partial)"
        return f"{text}, {self._head()}"

    def _head(self) -> str:
        loaded = [name for name in self.loaded if not weights.is_backbone(name)]
        missing = [name for name in self.missing if not weights.is_backbone(name)]
        if not missing:
            return "head loaded"
        if self.dropped and set(missing) == set(self.dropped):
            return "head loaded except the classifier (--filter_weight: initialised at random)"
        if not loaded:
            return "head not in the checkpoint (initialised at random)"
        return f"head {len(loaded)}/{len(loaded) + len(missing)} tensors (the rest initialised at random)"


def _say(line: str) -> None:
    print(f"deeplab-job: {line}", file=sys.stderr, flush=True)


def _in_our_names(
    path: str | Path, net: nn.Cell, entries: dict[str, Any]
) -> tuple[str, dict[str, Any], list[str]]:
    """(what the file is, {our name: its Parameter}, unused file entries), whatever its naming."""
    params = {
        name: value
        for name, value in entries.items()
        if isinstance(value, ms.Parameter) and not name.startswith(META_PREFIX)
    }
    naming = weights.detect(params, str(path))
    mapping, unused = weights.to_ours(params, naming, (p.name for p in net.get_parameters()))
    source = weights.title(naming, meta_of(entries))
    return source, {ours: params[theirs] for ours, theirs in mapping.items()}, unused


def _check_classes(path: str | Path, net: nn.Cell, mapped: dict[str, Any], hint: str) -> None:
    """A classifier for another class count is the one mismatch users cause on purpose: say so."""
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    theirs = mapped.get(weights.CLASSIFIER[0])
    target = ours.get(weights.CLASSIFIER[0])
    if theirs is not None and target is not None and theirs.shape[0] != target[0]:
        raise BadInput(
            f"{path}: its classifier has {theirs.shape[0]} classes, this network {target[0]} "
            f"(--num_classes){hint}"
        )


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


def _load(net: nn.Cell, mapped: dict[str, Any], strict: bool) -> None:
    params = {name: ms.Parameter(value.data, name=name) for name, value in mapped.items()}
    ms.load_param_into_net(net, params, strict_load=strict)


def load_pretrained(
    net: nn.Cell, path: str | Path, *, allow_partial: bool = False, filter_weight: bool = False
) -> LoadReport:
    """Start training from a checkpoint in any known naming (job/weights.py); one coverage line on stderr.

    The head may be absent (an ImageNet backbone starts the recipe's first stage) and is then left at
    random. A backbone tensor the file lacks is BadInput unless ``allow_partial``: a partly random
    backbone trains without complaint and converges worse, and nothing later would say why.
    ``filter_weight`` (the model zoo's flag) drops the file's classifier, as the zoo does, so weights
    for another class count can start a new task; without it such a classifier is BadInput naming it.
    """
    entries = read(path)
    source, mapped, unused = _in_our_names(path, net, entries)
    report = LoadReport(str(path), source, unused=unused)
    if filter_weight:
        report.dropped = [name for name in weights.CLASSIFIER if mapped.pop(name, None) is not None]
    _check_classes(
        path, net, mapped, "; --filter_weight drops the checkpoint's classifier to train a new one"
    )
    check_shapes(path, net, mapped)
    names = [p.name for p in net.get_parameters()]
    report.loaded = [name for name in names if name in mapped]
    report.missing = [name for name in names if name not in mapped]
    absent = [name for name in report.missing if weights.is_backbone(name)]
    if absent and not allow_partial:
        expected = sum(weights.is_backbone(name) for name in names)
        raise BadInput(
            f"{path} ({source}): {len(absent)} of {expected} backbone tensors are not in the checkpoint: "
            f"{weights.listing(absent)}; --allow_partial trains with them at random initialisation"
        )
    _load(net, mapped, strict=False)
    _say(report.summary())
    return report


def load_strict(net: nn.Cell, path: str | Path) -> dict[str, Any]:
    """Load every network parameter from ``path`` in any known naming (evaluation); BadInput if one is
    absent or of another shape. Prints the coverage line; returns the checkpoint's ``meta_*`` values."""
    entries = read(path)
    source, mapped, _ = _in_our_names(path, net, entries)
    _check_classes(path, net, mapped, "")
    check_shapes(path, net, mapped)
    names = [p.name for p in net.get_parameters()]
    missing = [name for name in names if name not in mapped]
    if missing:
        raise BadInput(
            f"{path} ({source}): lacks {len(missing)} of {len(names)} network parameters: "
            f"{weights.listing(missing)}; this needs a whole DeepLabV3 checkpoint"
        )
    _load(net, mapped, strict=True)
    _say(LoadReport(str(path), source, loaded=names).summary())
    return meta_of(entries)
