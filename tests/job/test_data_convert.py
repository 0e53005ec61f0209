"""List file -> MindRecord: round trip, sharding, all-bad-lines reporting, atomic replacement, shuffle."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from job.data import convert
from job.data.convert import convert_list, shard_paths
from job.errors import BadInput

pytestmark = pytest.mark.mindspore


def read_records(path: str, **kwargs) -> list[tuple[str, bytes, bytes]]:
    import mindspore.dataset as ds

    dataset = ds.MindDataset(path, columns_list=["file_name", "data", "label"], shuffle=False, **kwargs)
    return [
        (str(name), np.asarray(data).tobytes(), np.asarray(label).tobytes())
        for name, data, label in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
    ]


def list_entries(list_file: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in list_file.read_text().splitlines()]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_round_trip_bytes_and_sharding(synthetic_set, tmp_path) -> None:
    root, train, _ = synthetic_set
    paths = convert_list(str(root), str(train), str(tmp_path / "set.mindrecord"), 3, False)
    assert paths == [str(tmp_path / f"set.mindrecord{i}") for i in range(3)]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [*map(os.path.basename, paths), *(f"set.mindrecord{i}.db" for i in range(3))]
    )
    expected = {
        img: ((root / img).read_bytes(), (root / lbl).read_bytes()) for img, lbl in list_entries(train)
    }
    records = read_records(paths[0])
    assert {name: (data, label) for name, data, label in records} == expected  # raw bytes, every sample once
    assert len(records) == len(expected)
    # Reader-side sharding (what data-parallel ranks use) splits the records between readers.
    halves = [read_records(paths[0], num_shards=2, shard_id=rank) for rank in (0, 1)]
    assert {r[0] for r in halves[0]} | {r[0] for r in halves[1]} == set(expected)
    assert not {r[0] for r in halves[0]} & {r[0] for r in halves[1]}


def test_single_shard_is_the_destination_itself(synthetic_set, tmp_path) -> None:
    root, _, val = synthetic_set
    dst = tmp_path / "sub" / "val.mindrecord"  # the directory is created
    assert convert_list(str(root), str(val), str(dst), 1, False) == [str(dst)]
    assert dst.is_file() and Path(f"{dst}.db").is_file()
    assert [r[0] for r in read_records(str(dst))] == [img for img, _ in list_entries(val)]  # list order kept


def write_bad_dataset(root: Path) -> Path:
    """A list with one good line and one bad line of every kind, and a blank line."""
    image = np.full((20, 30, 3), 120, dtype=np.uint8)
    cv2.imwrite(str(root / "good.jpg"), image)
    cv2.imwrite(str(root / "good.png"), np.zeros((20, 30), np.uint8))
    cv2.imwrite(str(root / "small.png"), np.zeros((10, 30), np.uint8))
    cv2.imwrite(str(root / "bad_values.png"), np.array([[0, 7, 255]] * 20, np.uint8).repeat(10, axis=1))
    cv2.imwrite(
        str(root / "colour.png"),
        np.dstack([np.zeros((20, 30), np.uint8)] * 2 + [np.ones((20, 30), np.uint8)]),
    )
    (root / "garbage.jpg").write_bytes(b"this is not a jpeg")
    lines = [
        "good.jpg good.png",  # 1
        "missing.jpg good.png",  # 2
        "garbage.jpg good.png",  # 3
        "good.jpg small.png",  # 4
        "good.jpg bad_values.png",  # 5
        "",  # 6: blank lines are fine
        "good.jpg good.png extra",  # 7
        "good.jpg colour.png",  # 8
        "good.jpg missing.png",  # 9
    ]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def test_every_bad_line_reported_at_once_and_old_output_untouched(synthetic_set, tmp_path) -> None:
    root, train, _ = synthetic_set
    out = tmp_path / "out"
    out.mkdir()
    convert_list(str(root), str(train), str(out / "set"), 2, False)
    before = snapshot(out)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(BadInput) as caught:
        convert_list(str(data), str(write_bad_dataset(data)), str(out / "set"), 2, True, num_classes=4)
    message = str(caught.value)
    assert "\n" not in message and "7 problems" in message
    for expected in (
        "line 2: image missing.jpg not found",
        "line 3: image garbage.jpg cannot be decoded",
        "line 4: label size 30x10 differs from image size 30x20",
        "line 5: label bad_values.png has values [7] >= num_classes 4",
        "line 7: expected 'image_path label_path'",
        "line 8: label colour.png is a colour image",
        "line 9: label missing.png not found",
    ):
        assert expected in message
    assert "line 1:" not in message and "line 6:" not in message
    assert message.index("line 2:") < message.index("line 9:")  # ordered by line
    assert snapshot(out) == before  # nothing written, nothing deleted, no staging left behind


def test_label_values_unchecked_without_num_classes(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((4, 4), 9, np.uint8))
    (tmp_path / "l.txt").write_text("a.jpg a.png\n")
    assert convert_list(str(tmp_path), str(tmp_path / "l.txt"), str(tmp_path / "o"), 1, False)
    with pytest.raises(BadInput, match="values \\[9\\]"):
        convert_list(str(tmp_path), str(tmp_path / "l.txt"), str(tmp_path / "o"), 1, False, num_classes=9)


def test_failure_while_writing_keeps_the_previous_set(synthetic_set, tmp_path, monkeypatch) -> None:
    root, train, _ = synthetic_set
    convert_list(str(root), str(train), str(tmp_path / "set"), 1, False)
    before = snapshot(tmp_path)
    calls = []

    def failing_record(data_root, pair):
        calls.append(pair)
        raise OSError("disk full")

    monkeypatch.setattr(convert, "_record", failing_record)
    with pytest.raises(OSError, match="disk full"):
        convert_list(str(root), str(train), str(tmp_path / "set"), 1, False)
    assert calls and snapshot(tmp_path) == before


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_list_is_bad_input(tmp_path, content) -> None:
    (tmp_path / "empty.txt").write_text(content)
    with pytest.raises(BadInput, match="no samples"):
        convert_list(str(tmp_path), str(tmp_path / "empty.txt"), str(tmp_path / "o"), 1, False)
    assert not (tmp_path / "o").exists()


def test_missing_list_and_bad_arguments(tmp_path) -> None:
    with pytest.raises(BadInput, match="cannot read data list"):
        convert_list(str(tmp_path), str(tmp_path / "nope.txt"), str(tmp_path / "o"), 1, False)
    with pytest.raises(BadInput, match="num_shards"):
        convert_list(str(tmp_path), str(tmp_path / "nope.txt"), str(tmp_path / "o"), 0, False)


@pytest.mark.parametrize("value", ["False", "false", 0, 1, None])
def test_shuffle_must_be_a_real_bool(tmp_path, value) -> None:
    with pytest.raises(BadInput, match="shuffle must be true or false"):
        convert_list(str(tmp_path), str(tmp_path / "l.txt"), str(tmp_path / "o"), 1, value)


def test_shuffle_is_seeded(synthetic_set, tmp_path) -> None:
    root, train, _ = synthetic_set
    listed = [img for img, _ in list_entries(train)]

    def order(name: str, shuffle: bool, seed: int) -> list[str]:
        path = convert_list(str(root), str(train), str(tmp_path / name), 1, shuffle, seed=seed)[0]
        return [r[0] for r in read_records(path)]

    assert order("plain", False, 0) == listed
    first, again, other = order("a", True, 1), order("b", True, 1), order("c", True, 2)
    assert first == again and sorted(first) == sorted(listed)
    assert first != listed or other != listed  # 6! orders: two seeds both giving the identity is ~0
    assert first != other


def test_overwrite_off_refuses_existing_output(synthetic_set, tmp_path) -> None:
    root, _, val = synthetic_set
    convert_list(str(root), str(val), str(tmp_path / "set"), 1, False)
    with pytest.raises(BadInput, match="exists"):
        convert_list(str(root), str(val), str(tmp_path / "set"), 1, False, overwrite=False)
    assert shard_paths("x", 1) == ["x"] and shard_paths("x", 2) == ["x0", "x1"]
