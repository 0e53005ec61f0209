"""PASCAL VOC 2012 + SBD -> the zoo's layout: ``JPEGImages/``, ``SegmentationClassGray/``, three lists.

Inputs are the VOC 2012 devkit (folder or ``VOCtrainval_11-May-2012.tar``) and, optionally, SBD's
``benchmark_RELEASE`` (folder or ``benchmark.tgz``), read through ``job.data.sources``. Lists:

- ``voc_train_lst.txt`` / ``voc_val_lst.txt``: ``ImageSets/Segmentation/{train,val}.txt`` (1,464 / 1,449);
- ``vocaug_train_lst.txt``: (SBD train ∪ SBD val ∪ VOC train) − VOC val (10,582), the "train_aug" set.

Labels become 8-bit index PNGs (what ``build-data`` and the pipeline read): a VOC palette PNG is read
as its palette *indices* with Pillow (OpenCV would expand it to colours), 255 (the ignore border)
kept; SBD's ``cls/<name>.mat`` gives ``GTcls.Segmentation`` through ``scipy.io``. Where both exist
VOC's label wins: it is the benchmark's own annotation and has the 255 border SBD lacks. Images are
copied byte for byte (no re-encoding), from VOC's ``JPEGImages`` or else SBD's ``img``.

Every output file is written to a temporary name and renamed; a file whose bytes would not change is
left alone (not rewritten, mtime kept), so a second run changes nothing. The lists are written last,
and only when every sample was good: a list never names a missing or bad file.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from job.data.sources import Source, open_source
from job.errors import BadInput

VOC_MARKER = "ImageSets/Segmentation/train.txt"
SBD_MARKER = "dataset/train.txt"
IMAGES, LABELS = "JPEGImages", "SegmentationClassGray"
VOC_TRAIN_LST, VOC_VAL_LST, VOCAUG_TRAIN_LST = "voc_train_lst.txt", "voc_val_lst.txt", "vocaug_train_lst.txt"
MAX_SHOWN = 5  # problems named in the one-line error

_VOC_KEEP = re.compile(
    r"(^|/)(ImageSets/Segmentation/(train|val)\.txt|SegmentationClass/[^/]+\.png|JPEGImages/[^/]+\.jpg)$"
)
_SBD_KEEP = re.compile(r"(^|/)dataset/((train|val)\.txt|cls/[^/]+\.mat|img/([^/]+)\.jpg)$")


# -- the list rule (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    """The names in the published split files; SBD's are None when SBD is not given."""

    voc_train: list[str]
    voc_val: list[str]
    sbd_train: list[str] | None = None
    sbd_val: list[str] | None = None


@dataclass(frozen=True)
class Lists:
    """The names of the three output lists (``vocaug_train`` is None without SBD)."""

    voc_train: list[str]
    voc_val: list[str]
    vocaug_train: list[str] | None

    def all_names(self) -> list[str]:
        return sorted({*self.voc_train, *self.voc_val, *(self.vocaug_train or [])})


def plan_lists(splits: Splits) -> Lists:
    """VOC's lists as published; vocaug = (SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted by name."""
    vocaug = None
    if splits.sbd_train is not None and splits.sbd_val is not None:
        union = {*splits.sbd_train, *splits.sbd_val, *splits.voc_train}
        vocaug = sorted(union - set(splits.voc_val))
    return Lists(splits.voc_train, splits.voc_val, vocaug)


def parse_names(data: bytes, where: str) -> list[str]:
    """A split file: one image name per line; blank lines skipped, duplicates dropped (first kept)."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BadInput(f"{where}: not UTF-8 text") from exc
    names: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) > 1:
            raise BadInput(f"{where}: line {number}: expected one image name, got {len(fields)} fields")
        if fields:
            names.setdefault(fields[0], None)
    if not names:
        raise BadInput(f"{where}: no image names")
    return list(names)


def list_text(names: Iterable[str]) -> str:
    """The zoo's list format: ``JPEGImages/<name>.jpg SegmentationClassGray/<name>.png`` per line."""
    return "".join(f"{IMAGES}/{name}.jpg {LABELS}/{name}.png\n" for name in names)


# -- label conversion (pure: bytes in, index array out) ---------------------------------------


def palette_png_to_index(data: bytes) -> np.ndarray:
    """A VOC ``SegmentationClass`` PNG -> (H, W) uint8 class ids (255 kept). ValueError when it is not one.

    Pillow returns a palette image's indices; a grayscale PNG is taken as ids already.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(f"is a {image.mode} image; expected a palette (P) or 8-bit grayscale PNG")
            return np.array(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot be decoded as PNG: {exc}") from exc


def sbd_mat_to_index(data: bytes) -> np.ndarray:
    """SBD's ``cls/<name>.mat`` -> (H, W) uint8 class ids from ``GTcls.Segmentation``; else ValueError."""
    from scipy.io import loadmat

    try:
        mat = loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... for a bad file
        raise ValueError(f"cannot be read as a MATLAB file: {exc}") from exc
    gt = mat.get("GTcls")
    if gt is None:
        raise ValueError("has no GTcls struct (an inst/ file instead of cls/?)")
    segmentation = getattr(gt, "Segmentation", None)
    if segmentation is None:
        raise ValueError("GTcls has no Segmentation field")
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2 or segmentation.dtype.kind not in "iu":
        raise ValueError(
            f"GTcls.Segmentation is {segmentation.dtype} {segmentation.shape}; expected 2-D integers"
        )
    if segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255):
        raise ValueError("GTcls.Segmentation has values outside 0..255")
    return segmentation.astype(np.uint8)


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the image header (no full decode). ValueError when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot be decoded: {exc}") from exc
    return height, width


def encode_index_png(label: np.ndarray) -> bytes:
    """8-bit single-channel PNG, the format ``build-data`` accepts (same bytes for the same array)."""
    import cv2

    ok, encoded = cv2.imencode(".png", label)
    if not ok:
        raise ValueError("cannot be encoded as PNG")
    return encoded.tobytes()


# -- where each sample comes from --------------------------------------------------------------


@dataclass
class Inputs:
    voc: Source
    sbd: Source | None

    def image(self, name: str) -> tuple[str, Source, str] | None:
        """(origin, source, path) of the image: VOC's JPEGImages first, then SBD's img."""
        if self.voc.exists(f"JPEGImages/{name}.jpg"):
            return "VOC JPEGImages", self.voc, f"JPEGImages/{name}.jpg"
        if self.sbd is not None and self.sbd.exists(f"dataset/img/{name}.jpg"):
            return "SBD img", self.sbd, f"dataset/img/{name}.jpg"
        return None

    def label(self, name: str) -> tuple[str, Source, str] | None:
        """(origin, source, path) of the label: VOC's SegmentationClass (255 border) first, then SBD."""
        if self.voc.exists(f"SegmentationClass/{name}.png"):
            return "VOC SegmentationClass", self.voc, f"SegmentationClass/{name}.png"
        if self.sbd is not None and self.sbd.exists(f"dataset/cls/{name}.mat"):
            return "SBD cls", self.sbd, f"dataset/cls/{name}.mat"
        return None


def convert_sample(inputs: Inputs, name: str) -> tuple[bytes, bytes, str, str]:
    """(image bytes, label PNG bytes, image origin, label origin); ValueError naming what is wrong."""
    image = inputs.image(name)
    label = inputs.label(name)
    if image is None:
        raise ValueError(f"{name}: no image (JPEGImages/{name}.jpg)")
    if label is None:
        raise ValueError(f"{name}: image without a label (SegmentationClass/{name}.png or cls/{name}.mat)")
    image_origin, image_source, image_path = image
    label_origin, label_source, label_path = label
    image_bytes = image_source.read(image_path)
    try:
        height, width = image_size(image_bytes)
    except ValueError as exc:
        raise ValueError(f"{name}: image {image_path} {exc}") from exc
    convert = palette_png_to_index if label_origin.startswith("VOC") else sbd_mat_to_index
    try:
        index = convert(label_source.read(label_path))
    except ValueError as exc:
        raise ValueError(f"{name}: label {label_path} {exc}") from exc
    if index.shape != (height, width):
        raise ValueError(
            f"{name}: label {label_path} is {index.shape[1]}x{index.shape[0]}, its image is {width}x{height}"
        )
    return image_bytes, encode_index_png(index), image_origin, label_origin


# -- writing ---------------------------------------------------------------------------------


def write_if_changed(path: str, data: bytes) -> bool:
    """Atomically replace ``path`` with ``data`` unless it holds exactly these bytes; True if written."""
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


@dataclass
class Report:
    """What a run did: counts per list, per origin, files written and left alone."""

    lists: dict[str, int] = field(default_factory=dict)
    origins: dict[str, int] = field(default_factory=dict)
    written: int = 0
    unchanged: int = 0


def _say(message: str) -> None:
    print(f"deeplab-job: prepare-voc: {message}", file=sys.stderr, flush=True)


def _read_splits(inputs: Inputs) -> Splits:
    def names(source: Source, rel: str) -> list[str]:
        return parse_names(source.read(rel), f"{source.where}: {rel}")

    voc_train = names(inputs.voc, "ImageSets/Segmentation/train.txt")
    voc_val = names(inputs.voc, "ImageSets/Segmentation/val.txt")
    if inputs.sbd is None:
        return Splits(voc_train, voc_val)
    return Splits(
        voc_train, voc_val, names(inputs.sbd, "dataset/train.txt"), names(inputs.sbd, "dataset/val.txt")
    )


def _problem_error(problems: list[str], total: int) -> BadInput:
    shown = "; ".join(problems[:MAX_SHOWN])
    more = f"; ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return BadInput(f"{len(problems)} of {total} samples are bad: {shown}{more}")


def _convert_all(inputs: Inputs, names: list[str], output_dir: str, report: Report) -> None:
    """Convert and write every sample; raise one BadInput naming the bad ones (after the good are written)."""
    for folder in (IMAGES, LABELS):
        os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
    problems = []
    for name in names:
        try:
            image, label, image_origin, label_origin = convert_sample(inputs, name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        for origin in (f"images from {image_origin}", f"labels from {label_origin}"):
            report.origins[origin] = report.origins.get(origin, 0) + 1
        for rel, data in ((f"{IMAGES}/{name}.jpg", image), (f"{LABELS}/{name}.png", label)):
            if write_if_changed(os.path.join(output_dir, rel), data):
                report.written += 1
            else:
                report.unchanged += 1
    if problems:
        raise _problem_error(problems, len(names))


def _sbd_keep(voc: Source) -> Callable[[str], bool]:
    """Members of a streamed SBD archive worth keeping: splits, cls/*.mat, and images VOC lacks."""

    def keep(name: str) -> bool:
        match = _SBD_KEEP.search(name)
        return bool(match) and (match[4] is None or not voc.exists(f"JPEGImages/{match[4]}.jpg"))

    return keep


def prepare(voc_path: str, sbd_path: str | None, output_dir: str) -> Report:
    """Read VOC (+ SBD), write images, index labels and the lists under ``output_dir``; print the counts."""
    os.makedirs(output_dir, exist_ok=True)
    # Compressed archives only; made on demand, so a run over folders or plain tars touches nothing else.
    scratch = os.path.join(output_dir, f".prepare-voc.{os.getpid()}.tmp")
    try:
        voc = open_source(
            voc_path, VOC_MARKER, lambda n: bool(_VOC_KEEP.search(n)), os.path.join(scratch, "voc")
        )
        sbd = None
        if sbd_path is not None:
            sbd = open_source(sbd_path, SBD_MARKER, _sbd_keep(voc), os.path.join(scratch, "sbd"))
        inputs = Inputs(voc, sbd)
        splits = _read_splits(inputs)
        lists = plan_lists(splits)
        report = Report()
        _convert_all(inputs, lists.all_names(), output_dir, report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    outputs = [(VOC_TRAIN_LST, lists.voc_train), (VOC_VAL_LST, lists.voc_val)]
    if lists.vocaug_train is not None:
        outputs.append((VOCAUG_TRAIN_LST, lists.vocaug_train))
    for filename, names in outputs:
        write_if_changed(os.path.join(output_dir, filename), list_text(names).encode())
        report.lists[filename] = len(names)
    _describe(splits, lists, report, voc_path, sbd_path)
    return report


def _describe(splits: Splits, lists: Lists, report: Report, voc_path: str, sbd_path: str | None) -> None:
    """One line per list saying where it came from, then the origins of the files."""
    _say(
        f"{VOC_TRAIN_LST}: {len(lists.voc_train)} images = VOC ImageSets/Segmentation/train.txt ({voc_path})"
    )
    _say(f"{VOC_VAL_LST}: {len(lists.voc_val)} images = VOC ImageSets/Segmentation/val.txt")
    if lists.vocaug_train is None or splits.sbd_train is None or splits.sbd_val is None:
        _say(f"{VOCAUG_TRAIN_LST}: not written (no --sbd)")
    else:
        union = len({*splits.sbd_train, *splits.sbd_val, *splits.voc_train})
        _say(
            f"{VOCAUG_TRAIN_LST}: {len(lists.vocaug_train)} images = (SBD train {len(splits.sbd_train)}"
            f" ∪ SBD val {len(splits.sbd_val)} ∪ VOC train {len(splits.voc_train)}: {union} distinct)"
            f" − VOC val {len(splits.voc_val)} ({union - len(lists.vocaug_train)} removed; SBD: {sbd_path})"
        )
    origins = ", ".join(f"{count} {origin}" for origin, count in sorted(report.origins.items()))
    _say(f"{origins}; {report.written} files written, {report.unchanged} already up to date")
