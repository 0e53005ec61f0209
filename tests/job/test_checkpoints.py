"""Checkpoint files: atomic writes, keep-max, newest-first listing, pretrained/strict loading, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from job import checkpoints
from job.errors import BadInput

pytestmark = pytest.mark.mindspore


class Backbone(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, has_bias=False)
        self.bn1 = nn.BatchNorm2d(4)


class Tiny(nn.Cell):
    """A stand-in with the same naming scheme as DeepLabV3 (backbone.* + classifier)."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.classifier = nn.Conv2d(4, classes, 1, has_bias=True)


def entries(net: nn.Cell) -> list[dict]:
    return [{"name": p.name, "data": p} for p in net.get_parameters()]


def value(net: nn.Cell, name: str) -> np.ndarray:
    return next(p for p in net.get_parameters() if p.name == name).asnumpy()


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path):
    path = checkpoints.save_atomic(
        entries(Tiny()), tmp_path / "deeplab-00000005.ckpt", {"model": "m", "step": 5}
    )
    assert os.listdir(tmp_path) == ["deeplab-00000005.ckpt"]
    meta = checkpoints.meta_of(checkpoints.read(path))
    assert meta == {"model": "m", "step": 5}


def test_crash_before_rename_never_leaves_a_file_under_the_final_name(tmp_path: Path, monkeypatch):
    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        checkpoints.save_atomic(entries(Tiny()), tmp_path / "deeplab-00000009.ckpt", {})
    assert os.listdir(tmp_path) == []


def test_listing_is_newest_first_and_prune_keeps_max(tmp_path: Path):
    net = Tiny()
    for step in (10, 30, 20):
        checkpoints.save_atomic(entries(net), checkpoints.step_path(tmp_path, step), {"step": step})
    (tmp_path / ".tmp-1-deeplab-00000040.ckpt").write_bytes(b"partial")  # a crashed write
    (tmp_path / "final.ckpt").write_bytes(b"x")
    assert [step for step, _ in checkpoints.step_checkpoints(tmp_path)] == [30, 20, 10]
    removed = checkpoints.prune(tmp_path, 2)
    assert [p.name for p in removed] == ["deeplab-00000010.ckpt"]
    assert sorted(os.listdir(tmp_path)) == [
        ".tmp-1-deeplab-00000040.ckpt",
        "deeplab-00000020.ckpt",
        "deeplab-00000030.ckpt",
        "final.ckpt",
    ]


def test_pretrained_bare_backbone_names_load_with_report(tmp_path: Path):
    source = Backbone()  # a "ResNet" checkpoint: names without the backbone. prefix
    source.conv1.weight.set_data(ms.Tensor(np.full((4, 3, 3, 3), 0.5, np.float32)))
    path = tmp_path / "resnet.ckpt"
    ms.save_checkpoint(source, str(path))
    net = Tiny()
    report = checkpoints.load_pretrained(net, path)
    assert "backbone.conv1.weight" in report.loaded and len(report.loaded) == 5  # conv + 4 BN entries
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert np.all(value(net, "backbone.conv1.weight") == 0.5)
    assert "2 missing" in report.summary() and "classifier.weight" in report.summary()


def test_other_class_count_is_bad_input_naming_the_file(tmp_path: Path):
    path = tmp_path / "three.ckpt"
    ms.save_checkpoint(Tiny(classes=3), str(path))
    with pytest.raises(BadInput, match=r"three\.ckpt.*classifier\.weight.*\(3, 4, 1, 1\)"):
        checkpoints.load_pretrained(Tiny(classes=2), path)
    with pytest.raises(BadInput, match=r"three\.ckpt"):
        checkpoints.load_strict(Tiny(classes=2), path)
    assert path.exists()


def test_strict_load_needs_every_parameter(tmp_path: Path):
    path = tmp_path / "backbone-only.ckpt"
    ms.save_checkpoint(Backbone(), str(path))
    with pytest.raises(BadInput, match="lacks"):
        checkpoints.load_strict(Tiny(), path)
    full = tmp_path / "full.ckpt"
    source = Tiny()
    ms.save_checkpoint(source, str(full))
    net = Tiny()
    checkpoints.load_strict(net, full)
    assert np.array_equal(value(net, "classifier.weight"), value(source, "classifier.weight"))


def test_truncated_or_missing_file_is_bad_input(tmp_path: Path):
    good = tmp_path / "good.ckpt"
    ms.save_checkpoint(Tiny(), str(good))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(BadInput, match=r"truncated\.ckpt: not a readable"):
        checkpoints.read(truncated)
    with pytest.raises(BadInput, match="not found"):
        checkpoints.read(tmp_path / "absent.ckpt")
