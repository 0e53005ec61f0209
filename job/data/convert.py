"""List file -> sharded MindRecord (the model zoo's schema), validated first and replaced atomically.

Schema {file_name: string, data: bytes, label: bytes}: the raw encoded JPEG/PNG bytes, decoded by
the training pipeline. Every line is checked before anything is written, and all bad lines are
reported in one error, so a 10k-line list needs one fix-up round, not one per bad line.

MindRecord records the shard *base names* in each file header and in each ``.db`` index, so the
set is written under its final base names inside a temporary directory next to the destination,
then renamed into place after ``commit`` succeeds. A failed conversion leaves any existing output
untouched. The renames of the N shards + N indexes are individually atomic, not as a set.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from job.data.listfile import Pair, bad_input, check_disjoint, missing_files, parse_list
from job.errors import BadInput
from job.recipe import IGNORE_LABEL

SCHEMA = {"file_name": {"type": "string"}, "data": {"type": "bytes"}, "label": {"type": "bytes"}}
MAX_SHARDS = 1000  # MindRecord's limit on shard_num
_WRITE_CHUNK = 64  # rows per write_raw_data call: bounds memory to a few MB of encoded images


def shard_paths(dst_path: str, num_shards: int) -> list[str]:
    """The files FileWriter creates: ``dst`` itself for one shard, ``dst0 .. dst{N-1}`` otherwise."""
    if num_shards == 1:
        return [dst_path]
    return [f"{dst_path}{index}" for index in range(num_shards)]


def decode_label_checked(data: bytes) -> np.ndarray:
    """Decode a label PNG strictly: ValueError unless it is 8-bit single-channel class ids.

    The training pipeline decodes labels with IMREAD_GRAYSCALE, which silently turns a VOC
    palette PNG (SegmentationClass) into luminance values; such labels are rejected here. A
    3-channel image whose channels are all equal is accepted (its grayscale is the same ids).
    """
    label = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError("cannot be decoded")
    if label.dtype != np.uint8:
        raise ValueError(f"is {label.dtype.itemsize * 8}-bit; expected 8-bit class ids")
    if label.ndim == 3:
        colour = label[:, :, :3]
        if (colour != colour[:, :, :1]).any():
            raise ValueError(
                "is a colour image (a palette PNG such as VOC's SegmentationClass?); expected single-channel"
                " class ids (e.g. SegmentationClassRaw)"
            )
        label = np.ascontiguousarray(colour[:, :, 0])
    return label


def check_pair(
    data_root: str, pair: Pair, *, num_classes: int | None = None, ignore_label: int = IGNORE_LABEL
) -> list[str]:
    """Problem strings (``line N: ...``) for one sample; empty when the sample is usable."""
    problems = missing_files(data_root, pair)
    if problems:
        return problems
    image_path, label_path = pair.paths(data_root)
    where = f"line {pair.line}"
    try:
        image_bytes, label_bytes = _read(image_path), _read(label_path)
    except OSError as error:
        return [f"{where}: cannot read: {error.strerror or error}"]
    image = cv2.imdecode(np.frombuffer(image_bytes, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        problems.append(f"{where}: image {pair.image} cannot be decoded")
    try:
        label = decode_label_checked(label_bytes)
    except ValueError as error:
        return [*problems, f"{where}: label {pair.label} {error}"]
    if image is not None and image.shape[:2] != label.shape:
        problems.append(
            f"{where}: label size {label.shape[1]}x{label.shape[0]} differs from image size"
            f" {image.shape[1]}x{image.shape[0]}"
        )
    if num_classes is not None:
        present = np.flatnonzero(np.bincount(label.reshape(-1), minlength=256))
        bad = [int(v) for v in present if v >= num_classes and v != ignore_label]
        if bad:
            problems.append(
                f"{where}: label {pair.label} has values {bad[:8]} >= num_classes {num_classes}"
                f" (ignore label {ignore_label})"
            )
    return problems


def convert_list(
    data_root: str,
    data_lst: str,
    dst_path: str,
    num_shards: int,
    shuffle: bool,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    ignore_label: int = IGNORE_LABEL,
    overwrite: bool = True,
    workers: int | None = None,
    val_lst: str | None = None,
) -> list[str]:
    """Validate every line, then write the MindRecord shards; returns their paths (shard 0 first).

    ``shuffle`` must be a real bool (the zoo's argparse ``type=bool`` turned "False" into True);
    the shuffled order depends only on ``seed``. ``num_classes`` enables the label-value check.
    ``overwrite=False`` refuses to replace existing shards. ``workers`` threads decode for the
    validation (OpenCV releases the GIL). ``val_lst``, a validation list under the same root, must
    share no image with ``data_lst``. Raises BadInput naming every bad line.
    """
    if not isinstance(shuffle, bool):
        raise BadInput(f"shuffle must be true or false, got {shuffle!r}")
    if not 1 <= num_shards <= MAX_SHARDS:
        raise BadInput(f"num_shards must be in 1..{MAX_SHARDS}, got {num_shards}")
    if val_lst is not None:
        check_disjoint(_images(data_lst), _images(val_lst), data_lst, val_lst)
    pairs = _validated_pairs(data_root, data_lst, num_classes, ignore_label, workers)
    if shuffle:
        random.Random(seed).shuffle(pairs)
    paths = shard_paths(dst_path, num_shards)
    existing = [path for path in paths if os.path.exists(path) or os.path.exists(path + ".db")]
    if existing and not overwrite:
        raise BadInput(f"output {existing[0]} exists (overwrite is off)")
    _write_atomically(data_root, pairs, dst_path, num_shards)
    return paths


def recorded_images(data_file: str) -> list[str]:
    """The ``file_name`` column of a MindRecord set (any shard names the whole set): the image paths
    of the list it was built from, as that list wrote them."""
    from mindspore.mindrecord import FileReader  # heavy import, only when asked

    reader = FileReader(data_file, columns=["file_name"])
    try:
        return [str(row["file_name"]) for row in reader.get_next()]
    finally:
        reader.close()


def check_record_disjoint(data_file: str, val_lst: str) -> None:
    """BadInput when the training MindRecord holds an image of the validation list ``val_lst``.

    Paths are compared as both lists wrote them (relative to their data roots), so the check holds
    when training and validation data share one layout, e.g. both from ``prepare-voc``.
    """
    check_disjoint(recorded_images(data_file), _images(val_lst), data_file, val_lst)


def _images(data_lst: str) -> list[str]:
    """The image column of a list (malformed lines are reported by the full validation)."""
    return [pair.image for pair in parse_list(data_lst)[0]]


def _validated_pairs(
    data_root: str, data_lst: str, num_classes: int | None, ignore_label: int, workers: int | None
) -> list[Pair]:
    pairs, problems = parse_list(data_lst)
    threads = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        check = functools.partial(check_pair, data_root, num_classes=num_classes, ignore_label=ignore_label)
        for found in pool.map(check, pairs):
            problems.extend(found)
    if problems:
        raise bad_input(data_lst, problems)
    if not pairs:
        raise BadInput(f"data list {data_lst} has no samples")
    return pairs


def _write_atomically(data_root: str, pairs: Sequence[Pair], dst_path: str, num_shards: int) -> None:
    """Write the set under its final base names in a sibling temp dir, then rename into place."""
    from mindspore.mindrecord import FileWriter  # heavy import, only when writing

    directory, base = os.path.split(os.path.abspath(dst_path))
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        writer = FileWriter(os.path.join(staging, base), num_shards, overwrite=True)
        writer.add_schema(SCHEMA, "deeplab segmentation samples")
        writer.add_index(["file_name"])
        for start in range(0, len(pairs), _WRITE_CHUNK):
            writer.write_raw_data([_record(data_root, pair) for pair in pairs[start : start + _WRITE_CHUNK]])
        writer.commit()
        names = [os.path.basename(path) for path in shard_paths(base, num_shards)]
        # Data files first, then their indexes: a reader never finds an index without its shard.
        for name in [*names, *(name + ".db" for name in names)]:
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _record(data_root: str, pair: Pair) -> dict:
    image_path, label_path = pair.paths(data_root)
    return {"file_name": pair.image, "data": _read(image_path), "label": _read(label_path)}


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
