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


def test_pretrained_bare_backbone_names_load_with_one_coverage_line(tmp_path: Path, capsys):
    source = Backbone()  # a "ResNet" checkpoint: names without the backbone. prefix
    source.conv1.weight.set_data(ms.Tensor(np.full((4, 3, 3, 3), 0.5, np.float32)))
    path = tmp_path / "resnet.ckpt"
    ms.save_checkpoint(source, str(path))
    net = Tiny()
    report = checkpoints.load_pretrained(net, path)
    assert "backbone.conv1.weight" in report.loaded and len(report.loaded) == 5  # conv + 4 BN entries
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert np.all(value(net, "backbone.conv1.weight") == 0.5)
    assert capsys.readouterr().err == (
        f"deeplab-job: loaded {path} (ResNet-101 backbone): backbone 5/5 tensors, "
        "head not in the checkpoint (initialised at random)\n"
    )


def test_other_class_count_is_bad_input_naming_the_flag(tmp_path: Path):
    path = tmp_path / "three.ckpt"
    ms.save_checkpoint(Tiny(classes=3), str(path))
    with pytest.raises(BadInput) as error:
        checkpoints.load_pretrained(Tiny(classes=2), path)
    assert str(error.value) == (
        f"{path}: its classifier has 3 classes, this network 2 (--num_classes); "
        "--filter_weight drops the checkpoint's classifier to train a new one"
    )
    with pytest.raises(
        BadInput, match=r"three\.ckpt: its classifier has 3 classes, this network 2 \(--num_classes\)$"
    ):
        checkpoints.load_strict(Tiny(classes=2), path)
    assert path.exists()


def test_filter_weight_drops_the_classifier_and_keeps_the_rest(tmp_path: Path, capsys):
    source = Tiny(classes=3)
    path = tmp_path / "three.ckpt"
    ms.save_checkpoint(source, str(path))
    net = Tiny(classes=2)
    before = value(net, "classifier.weight")
    report = checkpoints.load_pretrained(net, path, filter_weight=True)
    assert report.dropped == ["classifier.weight", "classifier.bias"]
    assert np.array_equal(value(net, "classifier.weight"), before)
    assert np.array_equal(value(net, "backbone.conv1.weight"), value(source, "backbone.conv1.weight"))
    assert capsys.readouterr().err.endswith(
        "backbone 5/5 tensors, head loaded except the classifier (--filter_weight: initialised at random)\n"
    )


def test_train_passes_allow_partial_and_filter_weight(tmp_path: Path):
    from job.config import TrainConfig
    from job.train import resume

    source = Tiny(classes=3)
    path = tmp_path / "partial.ckpt"
    entries = [{"name": p.name, "data": p} for p in source.get_parameters() if "bn1.gamma" not in p.name]
    ms.save_checkpoint(entries, str(path))
    config = TrainConfig(data_file="unused", train_dir=str(tmp_path / "run"), ckpt_pre_trained=str(path))
    with pytest.raises(BadInput, match="its classifier has 3 classes"):
        resume(config, Tiny(classes=2), None)
    config.filter_weight = True
    with pytest.raises(
        BadInput, match=r"1 of 5 backbone tensors are not in the checkpoint: backbone\.bn1\.gamma;"
    ):
        resume(config, Tiny(classes=2), None)
    config.allow_partial = True
    net = Tiny(classes=2)
    assert resume(config, net, None).step == 0
    assert np.array_equal(value(net, "backbone.bn1.beta"), value(source, "backbone.bn1.beta"))


def test_a_pytorch_file_gets_a_hint_to_convert_it(tmp_path: Path):
    path = tmp_path / "resnet101.pth"
    path.write_bytes(b"PK\x03\x04 not a MindSpore checkpoint")
    with pytest.raises(
        BadInput, match=r"resnet101\.pth: not a readable MindSpore checkpoint .*convert-torch"
    ):
        checkpoints.read(path)


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


def test_a_large_page_cache_does_not_make_a_good_checkpoint_unreadable(tmp_path, monkeypatch):
    """MindSpore compares a .ckpt's size with MemFree; the job makes it use MemAvailable, and a real
    shortage is a retryable runtime failure, never "unreadable" (which a resume would skip)."""
    from mindspore.train import serialization

    lines = Path("/proc/meminfo").read_text().splitlines()
    meminfo = {key: int(value.split()[0]) * 1024 for key, value in (line.split(":") for line in lines)}
    assert serialization._get_available_memory() == checkpoints.available_memory()
    assert abs(checkpoints.available_memory() - meminfo["MemAvailable"]) < 256 * 2**20
    path = tmp_path / "w.ckpt"
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones((64, 64), np.float32))}], str(path))
    assert checkpoints.read(path)["w"].shape == (64, 64)
    monkeypatch.setattr(serialization, "_get_available_memory", lambda: 16)  # a real shortage
    with pytest.raises(RuntimeError, match="exceeds current available memory"):
        checkpoints.read(path)
