"""Read a data set as published: an unpacked folder, a plain tar read in place, or a compressed tar.

PASCAL VOC ships as an uncompressed tar (2 GB) and SBD as a gzip tar (1.4 GB). A plain tar is indexed
(headers only) and its members read on demand, so nothing is unpacked. A compressed tar has no random
access: it is read in ONE streaming pass that copies only the members a caller asks for (a predicate on
the member name) into a scratch folder, which is then read like an unpacked folder. Every source is
addressed by paths relative to its *base*, the folder that holds a marker file (e.g.
``ImageSets/Segmentation/train.txt``), so ``VOCdevkit/``, ``VOCdevkit/VOC2012/`` and the tar all work.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

from job.errors import BadInput

_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


class Source(Protocol):
    """Files relative to the data set's base folder."""

    where: str  # the path the user gave, for messages

    def exists(self, rel: str) -> bool: ...

    def read(self, rel: str) -> bytes: ...


def find_base(names: Iterable[str], marker: str) -> str | None:
    """The shortest prefix ``p`` such that ``p + marker`` is among ``names`` ('' when at the top)."""
    bases = [name[: -len(marker)] for name in names if name == marker or name.endswith("/" + marker)]
    return min(bases, key=len) if bases else None


class FolderSource:
    """An unpacked data set: the base is the given folder or one of its subfolders holding the marker."""

    def __init__(self, path: str, marker: str, where: str | None = None) -> None:
        self.where = where or path
        bases = [rel for rel in _folders(path, depth=2) if os.path.isfile(os.path.join(path, rel, marker))]
        if not bases:
            raise BadInput(f"{self.where}: no {marker} in this folder or below it (wrong folder?)")
        found = min(bases, key=lambda rel: (rel.count(os.sep), rel))
        self.base = os.path.join(path, found)

    def exists(self, rel: str) -> bool:
        return os.path.isfile(os.path.join(self.base, rel))

    def read(self, rel: str) -> bytes:
        try:
            with open(os.path.join(self.base, rel), "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise BadInput(f"{self.where}: cannot read {rel}: {exc.strerror or exc}") from exc


def _folders(path: str, depth: int) -> list[str]:
    """``path``'s subfolders up to ``depth`` levels down, relative, '.' first (no file is listed)."""
    found, frontier = ["."], ["."]
    for _ in range(depth):
        frontier = [
            os.path.join(rel, entry.name)
            for rel in frontier
            for entry in os.scandir(os.path.join(path, rel))
            if entry.is_dir() and not entry.name.startswith(".")
        ]
        found += sorted(frontier)
    return found


class TarSource:
    """An uncompressed tar read in place: the headers are indexed once, members are read on demand."""

    def __init__(self, path: str, marker: str) -> None:
        self.where = path
        try:
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115 (kept open: members are read on demand)
            self._members = {info.name.removeprefix("./"): info for info in self._tar if info.isfile()}
        except _READ_ERRORS as exc:
            raise BadInput(f"{path}: cannot read the archive (truncated or damaged?): {exc}") from exc
        base = find_base(self._members, marker)
        if base is None:
            raise BadInput(f"{path}: the archive has no {marker} (is it the right archive?)")
        self.base = base

    def exists(self, rel: str) -> bool:
        return self.base + rel in self._members

    def read(self, rel: str) -> bytes:
        info = self._members.get(self.base + rel)
        if info is None:
            raise BadInput(f"{self.where}: the archive has no member {self.base + rel}")
        try:
            handle = self._tar.extractfile(info)
            data = handle.read() if handle else b""
        except _READ_ERRORS as exc:
            raise BadInput(f"{self.where}: member {info.name} is truncated or damaged: {exc}") from exc
        if len(data) != info.size:
            got = f"{len(data)} of {info.size} bytes"
            raise BadInput(f"{self.where}: member {info.name} is truncated ({got})")
        return data

    def close(self) -> None:
        self._tar.close()


def stream_to_folder(path: str, keep: Callable[[str], bool], scratch: str) -> None:
    """One pass over a (compressed) tar: copy the members whose name ``keep`` accepts under ``scratch``."""
    name = "?"
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if not info.isfile() or not keep(name) or not _safe(name):
                    continue
                target = os.path.join(scratch, *name.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                handle = tar.extractfile(info)
                with open(target, "wb") as out:
                    shutil.copyfileobj(handle, out)
                if os.path.getsize(target) != info.size:
                    raise EOFError(f"{os.path.getsize(target)} of {info.size} bytes")
    except _READ_ERRORS as exc:
        raise BadInput(f"{path}: the archive is truncated or damaged (at member {name}): {exc}") from exc


def _safe(name: str) -> bool:
    """Member names that stay inside the scratch folder (no absolute paths, no '..')."""
    return not name.startswith("/") and ".." not in name.split("/")


def is_compressed(path: str) -> bool:
    """gzip, bzip2 or xz magic bytes: such a tar has no random access and is streamed."""
    with open(path, "rb") as handle:
        head = handle.read(6)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


def open_source(path: str, marker: str, keep: Callable[[str], bool], scratch: str) -> Source:
    """A folder, a plain tar (read in place) or a compressed tar (streamed once into ``scratch``)."""
    if os.path.isdir(path):
        return FolderSource(path, marker)
    if not os.path.isfile(path):
        raise BadInput(f"{path}: no such file or folder")
    try:
        compressed = is_compressed(path)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not compressed:
        return TarSource(path, marker)
    os.makedirs(scratch, exist_ok=True)
    stream_to_folder(path, keep, scratch)
    return FolderSource(scratch, marker, where=path)
