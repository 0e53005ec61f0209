"""Stages that cannot be mixed up, on a real (tiny) training: every checkpoint records its run, and a
train_dir holding another run's step checkpoints or final.ckpt is exit 2 naming what differs.

One real training (2 steps) is made once for the module; every test copies its train_dir into its
own directory before running ``train`` over it, so no test depends on another's output or order.
The refusals happen before the graph is compiled, so they cost a network build, not a training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from job import recipe

pytestmark = pytest.mark.mindspore

CLASSES = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A synthetic set and a train_dir of one finished 2-step run (step checkpoints 1, 2 and final)."""
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("identity-data")
    train_lst, _ = generate(str(root), num_train=4, num_val=1, size=40, num_classes=CLASSES, seed=5)
    data_file = convert_list(str(root), train_lst, str(root / "train.mindrecord"), 1, True)[0]
    train_dir = tmp_path_factory.mktemp("identity-train")
    args = [sys.executable, "-m", "job", "train", *run_args(data_file, train_dir)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"data_file": data_file, "train_dir": train_dir}


def run_args(data_file: str, train_dir: Path, *extra: str) -> list[str]:
    """The tiny run: 4 images, batch 2 -> 2 steps per epoch, 3 epochs, stopped after step 2."""
    return [
        "--data_file", data_file, "--train_dir", str(train_dir), "--batch_size", "2", "--crop_size", "33",
        "--num_classes", str(CLASSES), "--device_target", "CPU", "--train_epochs", "3", "--max_steps", "2",
        "--save_steps", "1", "--base_lr", "0.01", "--min_scale", "1", "--max_scale", "1",
        "--num_parallel_workers", "1", "--result_file", str(train_dir / "result.json"), *extra,
    ]  # fmt: skip


def copy_of(train_dir: Path, target: Path, *names: str) -> Path:
    """``target`` holding ``names`` (default: every checkpoint) from ``train_dir``."""
    target.mkdir()
    for name in names or [n for n in os.listdir(train_dir) if n.endswith(".ckpt")]:
        shutil.copy(train_dir / name, target / name)
    return target


def train(data_file: str, train_dir: Path, *extra: str, capsys) -> tuple[int, list[str]]:
    from job.__main__ import main

    code = main(["train", *run_args(data_file, train_dir, *extra)])
    return code, capsys.readouterr().err.strip().splitlines()


def test_every_checkpoint_records_the_run_that_wrote_it(trained):
    from job import checkpoints

    train_dir = trained["train_dir"]
    names = sorted(n for n in os.listdir(train_dir) if n.endswith(".ckpt"))
    assert names == ["deeplab-00000001.ckpt", "deeplab-00000002.ckpt", "final.ckpt"]
    runs = [json.loads(checkpoints.read_meta(train_dir / name)["run"]) for name in names]
    assert runs[0] == runs[1] == runs[2]
    run = runs[0]
    assert run["model"] == "deeplab_v3_s16" and run["num_classes"] == CLASSES
    assert run["data_file"] == os.path.abspath(trained["data_file"])
    assert (run["train_epochs"], run["batch_size"], run["group_size"], run["crop_size"]) == (3, 2, 1, 33)
    assert (run["lr_type"], run["base_lr"]) == ("cos", 0.01)
    assert {"aspp_rates", "aspp_dropout", "align_corners"} <= set(run)


def test_another_run_in_the_same_train_dir_is_exit_2_naming_the_keys(trained, tmp_path, capsys):
    train_dir = copy_of(trained["train_dir"], tmp_path / "chained")
    before = {name: (train_dir / name).read_bytes() for name in os.listdir(train_dir)}
    code, err = train(
        trained["data_file"], train_dir, "--train_epochs", "8", "--model", "deeplab_v3_s8", capsys=capsys
    )
    assert code == recipe.EXIT_BAD_INPUT
    assert err[-1].startswith(f"deeplab-job: error: train_dir {train_dir} holds checkpoints of another run")
    assert "model: deeplab_v3_s16 != deeplab_v3_s8" in err[-1] and "train_epochs: 3 != 8" in err[-1]
    assert err[-1].endswith("use a new --train_dir per stage")
    assert {name: (train_dir / name).read_bytes() for name in os.listdir(train_dir)} == before  # untouched


def test_a_final_checkpoint_of_another_run_is_refused_too(trained, tmp_path, capsys):
    train_dir = copy_of(trained["train_dir"], tmp_path / "finished", "final.ckpt")  # no step checkpoint
    code, err = train(trained["data_file"], train_dir, "--base_lr", "0.02", capsys=capsys)
    assert code == recipe.EXIT_BAD_INPUT
    assert "holds checkpoints of another run (final.ckpt vs this run: base_lr: 0.01 != 0.02)" in err[-1]
    assert sorted(os.listdir(train_dir)) == ["final.ckpt"]


def test_the_same_run_resumes_and_says_it_does_not_load_ckpt_pre_trained(trained, tmp_path, capsys):
    train_dir = copy_of(trained["train_dir"], tmp_path / "again")
    pretrained = trained["train_dir"] / "final.ckpt"
    # loss_scale and save_steps are not part of the identity: changing them still resumes.
    extra = ("--ckpt_pre_trained", str(pretrained), "--loss_scale", "1024", "--save_steps", "5")
    code, err = train(trained["data_file"], train_dir, *extra, capsys=capsys)
    assert code == 0, err[-5:]
    resumed = f"deeplab-job: resuming from {train_dir / 'deeplab-00000002.ckpt'} at step 2"
    assert f"{resumed}; --ckpt_pre_trained {pretrained} not loaded" in err
    assert sum(str(pretrained) in line for line in err) == 1  # one line, and no load report
    result = json.loads((train_dir / "result.json").read_text())
    assert result["steps"] == 2


def test_a_checkpoint_from_before_identities_resumes_with_one_warning(trained, tmp_path, capsys):
    import mindspore as ms

    from job import checkpoints

    train_dir = tmp_path / "legacy"
    train_dir.mkdir()
    for name in ("deeplab-00000002.ckpt", "final.ckpt"):  # rewritten as the previous job wrote them
        entries = checkpoints.read(trained["train_dir"] / name)
        kept = [{"name": k, "data": v} for k, v in entries.items() if not k.startswith("meta_")]
        legacy_meta = {"meta_model": "deeplab_v3_s16", "meta_num_classes": CLASSES}
        ms.save_checkpoint(kept, str(train_dir / name), append_dict=legacy_meta)
    code, err = train(trained["data_file"], train_dir, capsys=capsys)
    assert code == 0, err[-5:]
    warnings = [line for line in err if "written by an older job" in line]
    assert len(warnings) == 1 and warnings[0].startswith("deeplab-job: warning: ")
    assert "train_epochs" in warnings[0] and "data_file" in warnings[0]
    assert any(line.startswith("deeplab-job: resuming from") and "at step 2" in line for line in err), err
    code, err = train(trained["data_file"], tmp_path / "legacy", "--num_classes", "4", capsys=capsys)
    assert code == recipe.EXIT_BAD_INPUT and "num_classes: 3 != 4" in err[-1]
