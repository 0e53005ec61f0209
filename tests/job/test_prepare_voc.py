"""`prepare-voc`: VOC 2012 + SBD in their published layouts (folders, .tar, .tgz) -> the zoo's layout.

Small trees with the real layouts are built here: VOC's palette PNGs, ``ImageSets/Segmentation``
split files, SBD's ``dataset/{img,cls}`` with ``.mat`` files in the ``GTcls`` struct layout
(``scipy.io.savemat``), and archives of both. No MindSpore is loaded.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import savemat
from voc_archives import (
    SBD_TRAIN,
    SBD_VAL,
    VOC_TRAIN,
    VOC_VAL,
    VOCAUG,
    gtcls_mat,
    jpeg,
    make_archives,
    make_sbd,
    make_voc,
    palette_png,
    sbd_label,
    voc_label,
    write,
)

from job.__main__ import main
from job.data.listfile import check_disjoint, shared_images
from job.data.voc import Splits, palette_png_to_index, plan_lists, prepare, sbd_mat_to_index
from job.errors import BadInput


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    return make_voc(tmp_path / "voc"), make_sbd(tmp_path / "sbd")


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file's bytes, mtime and inode: equal snapshots mean nothing was rewritten."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def read_list(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()]


def entries(names: list[str]) -> list[tuple[str, str]]:
    return [(f"JPEGImages/{n}.jpg", f"SegmentationClassGray/{n}.png") for n in names]


# -- the list rule --------------------------------------------------------------------------


def test_vocaug_is_the_union_minus_voc_val():
    lists = plan_lists(Splits(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL))
    assert lists.vocaug_train == VOCAUG
    assert lists.voc_train == VOC_TRAIN and lists.voc_val == VOC_VAL
    assert not set(lists.vocaug_train) & set(VOC_VAL)
    assert plan_lists(Splits(VOC_TRAIN, VOC_VAL)).vocaug_train is None  # no SBD, no vocaug


def test_vocaug_count_at_the_real_sizes():
    """The published split sizes with one overlap consistent with them give the published 10,582."""
    pool = [f"2008_{i:06d}" for i in range(13000)]
    sbd_train, sbd_val = pool[:8498], pool[8498:11355]  # 8,498 + 2,857, disjoint
    voc_val = pool[:1449]  # 1,449, all in SBD
    voc_train = pool[1449:2237] + pool[11355:12031]  # 1,464: 788 in SBD, 676 not
    lists = plan_lists(Splits(voc_train, voc_val, sbd_train, sbd_val))
    assert (len(lists.voc_train), len(lists.voc_val), len(lists.vocaug_train)) == (1464, 1449, 10582)
    assert lists.vocaug_train == sorted(lists.vocaug_train) and not set(lists.vocaug_train) & set(voc_val)


# -- label conversion -----------------------------------------------------------------------


def test_palette_png_gives_its_indices_not_its_colours():
    label = voc_label("a2")
    assert np.array_equal(palette_png_to_index(palette_png(label)), label)
    assert 255 in palette_png_to_index(palette_png(label))
    colour = cv2.imencode(".png", np.dstack([label] * 3) + 1)[1].tobytes()
    with pytest.raises(ValueError, match="RGB image"):
        palette_png_to_index(colour)


def test_sbd_mat_gives_gtcls_segmentation():
    label = sbd_label("s1")
    assert np.array_equal(sbd_mat_to_index(gtcls_mat(label)), label)
    inst = io.BytesIO()
    savemat(inst, {"GTinst": {"Segmentation": label}})
    with pytest.raises(ValueError, match="no GTcls"):
        sbd_mat_to_index(inst.getvalue())
    with pytest.raises(ValueError, match="MATLAB"):
        sbd_mat_to_index(b"not a mat file at all, not even close")


# -- the command, from folders and from archives --------------------------------------------


def test_folders_give_the_zoo_layout_lists_and_labels(trees, tmp_path, capsys):
    voc, sbd = trees
    out = tmp_path / "out"
    assert main(["prepare-voc", "--voc", str(voc), "--sbd", str(sbd), "--output_dir", str(out)]) == 0
    assert read_list(out / "voc_train_lst.txt") == entries(VOC_TRAIN)
    assert read_list(out / "voc_val_lst.txt") == entries(VOC_VAL)
    assert read_list(out / "vocaug_train_lst.txt") == entries(VOCAUG)
    written = sorted(p.name for p in (out / "SegmentationClassGray").iterdir())
    assert written == [f"{n}.png" for n in sorted({*VOCAUG, *VOC_VAL})]  # v1 (SBD train) only as VOC val
    for name in sorted({*VOCAUG, *VOC_VAL}):
        label = cv2.imread(str(out / "SegmentationClassGray" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        expected = voc_label(name) if name in VOC_TRAIN + VOC_VAL else sbd_label(name)  # VOC's wins
        assert label.dtype == np.uint8 and label.ndim == 2
        assert np.array_equal(label, expected), name
        assert (out / "JPEGImages" / f"{name}.jpg").read_bytes() == jpeg(name)  # copied, not re-encoded
    assert 255 in cv2.imread(str(out / "SegmentationClassGray" / "v2.png"), cv2.IMREAD_UNCHANGED)
    captured = capsys.readouterr()
    assert '"vocaug_train_lst.txt": 6' in captured.out and '"voc_val_lst.txt": 2' in captured.out
    assert (
        "vocaug_train_lst.txt: 6 images = (SBD train 4 ∪ SBD val 2 ∪ VOC train 3: 7 distinct)" in captured.err
    )
    assert "1 removed" in captured.err and "1 images from SBD img" in captured.err
    assert "5 labels from VOC SegmentationClass" in captured.err and "3 labels from SBD cls" in captured.err


def test_archives_give_the_same_bytes_as_folders(trees, tmp_path):
    voc, sbd = trees
    voc_tar, sbd_tgz = make_archives(voc, sbd, tmp_path)
    prepare(str(voc), str(sbd), str(tmp_path / "from-folders"))
    report = prepare(str(voc_tar), str(sbd_tgz), str(tmp_path / "from-archives"))
    folders = {k: v[0] for k, v in snapshot(tmp_path / "from-folders").items()}
    archives = {k: v[0] for k, v in snapshot(tmp_path / "from-archives").items()}
    assert folders == archives and len(archives) == 2 * len({*VOCAUG, *VOC_VAL}) + 3
    assert report.lists == {"voc_train_lst.txt": 3, "voc_val_lst.txt": 2, "vocaug_train_lst.txt": 6}
    assert not [p for p in (tmp_path / "from-archives").iterdir() if p.name.startswith(".")]  # scratch gone


def test_compressed_voc_and_plain_sbd_archives_work_too(trees, tmp_path):
    voc, sbd = trees
    voc_tgz, sbd_tar = tmp_path / "voc.tar.gz", tmp_path / "sbd.tar"
    with tarfile.open(voc_tgz, "w:gz") as tar:
        tar.add(voc / "VOC2012", arcname="VOC2012")
    with tarfile.open(sbd_tar, "w") as tar:
        tar.add(sbd / "dataset", arcname="dataset")
    prepare(str(voc), str(sbd), str(tmp_path / "a"))
    prepare(str(voc_tgz), str(sbd_tar), str(tmp_path / "b"))
    assert {k: v[0] for k, v in snapshot(tmp_path / "a").items()} == {
        k: v[0] for k, v in snapshot(tmp_path / "b").items()
    }


def test_the_voc2012_folder_itself_and_voc_alone(trees, tmp_path):
    voc, _ = trees
    report = prepare(str(voc / "VOC2012"), None, str(tmp_path / "out"))
    assert report.lists == {"voc_train_lst.txt": 3, "voc_val_lst.txt": 2}
    assert not (tmp_path / "out" / "vocaug_train_lst.txt").exists()


def test_a_second_run_changes_nothing(trees, tmp_path):
    voc, sbd = trees
    out = tmp_path / "out"
    first = prepare(str(voc), str(sbd), str(out))
    before, folders = snapshot(out), [p.stat().st_mtime_ns for p in (out, out / "JPEGImages")]
    second = prepare(str(voc), str(sbd), str(out))
    assert snapshot(out) == before  # same bytes, same mtimes, same inodes: nothing rewritten
    assert [p.stat().st_mtime_ns for p in (out, out / "JPEGImages")] == folders  # no file made or removed
    assert first.written == len(before) - 3 and second.written == 0 and second.unchanged == first.written


def test_a_changed_label_is_replaced_atomically(trees, tmp_path):
    voc, sbd = trees
    out = tmp_path / "out"
    prepare(str(voc), str(sbd), str(out))
    target = out / "SegmentationClassGray" / "a2.png"
    target.write_bytes(b"stale")
    inode = target.stat().st_ino
    assert prepare(str(voc), str(sbd), str(out)).written == 1
    assert np.array_equal(cv2.imread(str(target), cv2.IMREAD_UNCHANGED), voc_label("a2"))
    assert target.stat().st_ino != inode  # a new file renamed over the old one, never written in place


# -- bad input: one line, exit 2 --------------------------------------------------------------


def run_cli(capsys, voc: Path, sbd: Path | None, out: Path) -> tuple[int, str]:
    argv = ["prepare-voc", "--voc", str(voc), "--output_dir", str(out)]
    code = main([*argv, "--sbd", str(sbd)] if sbd else argv)
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("deeplab-job: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_an_image_without_a_label(trees, tmp_path, capsys):
    voc, sbd = trees
    (voc / "VOC2012" / "SegmentationClass" / "a2.png").unlink()
    code, err = run_cli(capsys, voc, sbd, tmp_path / "out")
    assert_one_line_error(code, err, "a2: image without a label", "1 of 8 samples")
    assert not (tmp_path / "out" / "voc_train_lst.txt").exists()  # no list names a bad sample


def test_a_split_name_without_an_image(trees, tmp_path, capsys):
    voc, sbd = trees
    (sbd / "dataset" / "img" / "s3.jpg").unlink()
    code, err = run_cli(capsys, voc, sbd, tmp_path / "out")
    assert_one_line_error(code, err, "s3: no image")


def test_a_label_of_another_size(trees, tmp_path, capsys):
    voc, sbd = trees
    write(sbd / "dataset" / "cls" / "s1.mat", gtcls_mat(np.zeros((5, 7), dtype=np.uint8)))
    code, err = run_cli(capsys, voc, sbd, tmp_path / "out")
    assert_one_line_error(code, err, "s1: label dataset/cls/s1.mat is 7x5, its image is", "1 of 8")


def test_a_mat_without_gtcls(trees, tmp_path, capsys):
    voc, sbd = trees
    inst = io.BytesIO()
    savemat(inst, {"GTinst": {"Segmentation": sbd_label("s2")}})
    write(sbd / "dataset" / "cls" / "s2.mat", inst.getvalue())
    code, err = run_cli(capsys, voc, sbd, tmp_path / "out")
    assert_one_line_error(code, err, "s2: label dataset/cls/s2.mat has no GTcls struct")


def test_a_missing_archive_member(trees, tmp_path, capsys):
    voc, sbd = trees
    (voc / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    voc_tar, sbd_tgz = make_archives(voc, sbd, tmp_path)
    code, err = run_cli(capsys, voc_tar, sbd_tgz, tmp_path / "out")
    assert_one_line_error(code, err, "has no member VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt")


def test_a_truncated_archive(trees, tmp_path, capsys):
    voc, sbd = trees
    voc_tar, sbd_tgz = make_archives(voc, sbd, tmp_path)
    data = sbd_tgz.read_bytes()
    sbd_tgz.write_bytes(data[: len(data) // 2])
    code, err = run_cli(capsys, voc_tar, sbd_tgz, tmp_path / "out")
    assert_one_line_error(code, err, "benchmark.tgz: the archive is truncated or damaged")


def test_a_truncated_plain_tar_member(trees, tmp_path, capsys):
    voc, sbd = trees
    voc_tar, sbd_tgz = make_archives(voc, sbd, tmp_path)
    with tarfile.open(voc_tar) as tar:
        last = max((m for m in tar if m.isfile()), key=lambda m: m.offset_data)
    with open(voc_tar, "r+b") as handle:
        handle.truncate(last.offset_data + last.size // 2)
    code, err = run_cli(capsys, voc_tar, sbd_tgz, tmp_path / "out")
    assert_one_line_error(code, err, "VOCtrainval_11-May-2012.tar", "truncated")


def test_the_wrong_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, tmp_path / "empty", None, tmp_path / "out")
    assert_one_line_error(code, err, "no ImageSets/Segmentation/train.txt in this folder")


# -- training lists never share images with validation lists ------------------------------------


def test_shared_images_compare_normalised_paths():
    assert shared_images(["./JPEGImages/a.jpg", "JPEGImages/b.jpg"], ["JPEGImages/a.jpg"]) == [
        "JPEGImages/a.jpg"
    ]
    assert shared_images(["train/0001.jpg"], ["val/0001.jpg"]) == []  # same stem, other image
    with pytest.raises(
        BadInput, match=r"shares 7 images with validation list v.txt: x0.jpg, .*x4.jpg, \.\.\."
    ):
        check_disjoint([f"x{i}.jpg" for i in range(7)], [f"x{i}.jpg" for i in range(9)], "t.txt", "v.txt")


def test_build_data_refuses_a_training_list_that_holds_validation_images(trees, tmp_path, capsys):
    voc, sbd = trees
    out = tmp_path / "out"
    prepare(str(voc), str(sbd), str(out))
    capsys.readouterr()
    leaky = tmp_path / "leaky.txt"
    leaky.write_text((out / "vocaug_train_lst.txt").read_text() + (out / "voc_val_lst.txt").read_text())
    argv = [
        "build-data",
        "--data_root",
        str(out),
        "--data_lst",
        str(leaky),
        "--dst_path",
        str(tmp_path / "mr"),
    ]
    code = main([*argv, "--val_lst", str(out / "voc_val_lst.txt"), "--num_shards", "1"])
    err = capsys.readouterr().err.strip()
    assert_one_line_error(
        code, err, "shares 2 images with validation list", "JPEGImages/v1.jpg, JPEGImages/v2.jpg"
    )
    assert not list(tmp_path.glob("mr*"))  # refused before anything was written


def test_prepared_lists_never_overlap(trees, tmp_path):
    voc, sbd = trees
    out = tmp_path / "out"
    prepare(str(voc), str(sbd), str(out))
    val = [image for image, _ in read_list(out / "voc_val_lst.txt")]
    for train in ("voc_train_lst.txt", "vocaug_train_lst.txt"):
        check_disjoint([image for image, _ in read_list(out / train)], val, train, "voc_val_lst.txt")


@pytest.mark.mindspore
def test_train_refuses_an_eval_list_its_mindrecord_overlaps(trees, tmp_path, capsys):
    """The MindRecord keeps each image's path (file_name), so train can compare it with --eval_data_lst."""
    from job.data.convert import check_record_disjoint, convert_list, recorded_images

    voc, sbd = trees
    out = tmp_path / "out"
    prepare(str(voc), str(sbd), str(out))
    leaky = tmp_path / "leaky.txt"
    leaky.write_text((out / "vocaug_train_lst.txt").read_text() + (out / "voc_val_lst.txt").read_text())
    clean = convert_list(str(out), str(out / "vocaug_train_lst.txt"), str(tmp_path / "clean.mr"), 2, False)
    dirty = convert_list(str(out), str(leaky), str(tmp_path / "dirty.mr"), 2, False)
    assert sorted(recorded_images(dirty[1])) == sorted(image for image, _ in read_list(leaky))  # every shard
    check_record_disjoint(clean[0], str(out / "voc_val_lst.txt"))  # no error
    capsys.readouterr()
    argv = ["train", "--data_file", dirty[0], "--train_dir", str(tmp_path / "ckpt"), "--device_target", "CPU"]
    code = main([*argv, "--eval_data_root", str(out), "--eval_data_lst", str(out / "voc_val_lst.txt")])
    err = capsys.readouterr().err.strip()
    assert_one_line_error(code, err, f"training list {dirty[0]} shares 2 images", "JPEGImages/v1.jpg")
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
