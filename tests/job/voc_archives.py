"""Small VOC 2012 and SBD trees in their published layouts, and their archives (shared test data).

VOC's palette PNGs and ``ImageSets/Segmentation`` split files, SBD's ``dataset/{img,cls}`` with ``.mat``
files in the ``GTcls`` struct layout (``scipy.io.savemat``), ``VOCtrainval_11-May-2012.tar`` and
``benchmark.tgz``: what a user downloads, at a few pixels per image.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.io import savemat

from job.palette import voc_palette

VOC_TRAIN = ["a1", "a2", "a3"]
VOC_VAL = ["v1", "v2"]
SBD_TRAIN = ["s1", "s2", "v1", "a1"]  # v1 is a VOC val image: it must not reach vocaug
SBD_VAL = ["s3", "a3"]
SBD_ONLY_IMAGE = "s3"  # VOC's JPEGImages lacks it: the image comes from SBD's img/
VOCAUG = ["a1", "a2", "a3", "s1", "s2", "s3"]  # (SBD train ∪ SBD val ∪ VOC train) − VOC val
ALL = sorted({*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL})


def size_of(name: str) -> tuple[int, int]:
    index = ALL.index(name)
    return 14 + index % 3, 20 + index  # (height, width): every image its own size


def voc_label(name: str) -> np.ndarray:
    """Background 0, a box of one class, a 255 ring around it (VOC's ignore border)."""
    height, width = size_of(name)
    label = np.zeros((height, width), dtype=np.uint8)
    label[2:-2, 3:-3] = 255
    label[3:-3, 4:-4] = ALL.index(name) % 20 + 1
    return label


def sbd_label(name: str) -> np.ndarray:
    """SBD has no ignore border; another class than VOC's, so tests see whose label won."""
    height, width = size_of(name)
    label = np.zeros((height, width), dtype=np.uint8)
    label[:, width // 2 :] = (ALL.index(name) + 7) % 20 + 1
    return label


def jpeg(name: str) -> bytes:
    rng = np.random.default_rng(ALL.index(name))
    image = rng.integers(0, 255, size=(*size_of(name), 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def palette_png(label: np.ndarray) -> bytes:
    image = Image.fromarray(label)
    image.putpalette(voc_palette().reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gtcls_mat(label: np.ndarray) -> bytes:
    """A ``cls/*.mat`` as SBD ships it: struct GTcls with Boundaries, Segmentation, CategoriesPresent."""
    buffer = io.BytesIO()
    present = np.unique(label[label > 0]).astype(np.uint8)
    boundaries = np.empty((20, 1), dtype=object)
    boundaries[:] = [[np.zeros((1, 1))] for _ in range(20)]
    savemat(
        buffer, {"GTcls": {"Boundaries": boundaries, "Segmentation": label, "CategoriesPresent": present}}
    )
    return buffer.getvalue()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_voc(root: Path) -> Path:
    """``root/VOCdevkit/VOC2012`` with JPEGImages (every name but SBD_ONLY_IMAGE), palette labels, splits."""
    base = root / "VOCdevkit" / "VOC2012"
    for name in ALL:
        if name != SBD_ONLY_IMAGE:
            write(base / "JPEGImages" / f"{name}.jpg", jpeg(name))
    for name in VOC_TRAIN + VOC_VAL:
        write(base / "SegmentationClass" / f"{name}.png", palette_png(voc_label(name)))
        write(base / "SegmentationObject" / f"{name}.png", palette_png(voc_label(name) // 2))  # ignored
    write(base / "ImageSets" / "Segmentation" / "train.txt", "".join(f"{n}\n" for n in VOC_TRAIN).encode())
    write(base / "ImageSets" / "Segmentation" / "val.txt", "".join(f"{n}\n" for n in VOC_VAL).encode())
    write(base / "ImageSets" / "Segmentation" / "trainval.txt", b"")
    return root / "VOCdevkit"


def make_sbd(root: Path) -> Path:
    """``root/benchmark_RELEASE/dataset`` with img, cls (GTcls), inst (GTinst, not read), train/val.txt."""
    base = root / "benchmark_RELEASE" / "dataset"
    for name in sorted({*SBD_TRAIN, *SBD_VAL}):
        write(base / "img" / f"{name}.jpg", jpeg(name))
        write(base / "cls" / f"{name}.mat", gtcls_mat(sbd_label(name)))
        inst = io.BytesIO()
        savemat(inst, {"GTinst": {"Segmentation": sbd_label(name)}})
        write(base / "inst" / f"{name}.mat", inst.getvalue())
    write(base / "train.txt", "".join(f"{n}\n" for n in SBD_TRAIN).encode())
    write(base / "val.txt", "".join(f"{n}\n" for n in SBD_VAL).encode())
    return root / "benchmark_RELEASE"


def make_archives(voc: Path, sbd: Path, where: Path) -> tuple[Path, Path]:
    """``VOCtrainval_11-May-2012.tar`` (plain) and ``benchmark.tgz`` (gzip), with their real top folders."""
    voc_tar, sbd_tgz = where / "VOCtrainval_11-May-2012.tar", where / "benchmark.tgz"
    with tarfile.open(voc_tar, "w") as tar:
        tar.add(voc, arcname="VOCdevkit")
    with tarfile.open(sbd_tgz, "w:gz") as tar:
        tar.add(sbd, arcname="benchmark_RELEASE")
    return voc_tar, sbd_tgz
