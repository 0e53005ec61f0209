"""Real training on CPU through the command line: loss goes down, progress/result contracts, resume
(step, LR position, optimizer state), SIGTERM -> checkpoint + 143, bad checkpoints/data -> exit 2.

One synthetic set and one training directory are shared by the module: each MindSpore process costs
~30 s of graph compilation on 2 cores, so the tests build on each other's output (in file order).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from job import recipe

pytestmark = pytest.mark.mindspore

PROGRESS_KEYS = {
    "event",
    "epoch",
    "epochs",
    "step",
    "steps",
    "loss",
    "lr",
    "images_per_second",
    "eta_seconds",
    "time",
}
CLASSES = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, str]:
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    train_lst, val_lst = generate(str(root), num_train=6, num_val=2, size=40, num_classes=CLASSES, seed=3)
    shards = convert_list(str(root), train_lst, str(root / "train.mindrecord"), 1, True)
    return {"root": str(root), "val": val_lst, "data_file": shards[0]}


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


def train_args(data_file: str, train_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "job",
        "train",
        "--data_file",
        data_file,
        "--train_dir",
        str(train_dir),
        "--batch_size",
        "2",
        "--crop_size",
        "33",
        "--num_classes",
        str(CLASSES),
        "--device_target",
        "CPU",
        "--base_lr",
        "0.01",
        "--min_scale",
        "1",
        "--max_scale",
        "1",
        "--log_steps",
        "1",
        "--result_file",
        str(train_dir / "result.json"),
        *extra,
    ]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_training_lowers_the_loss_and_writes_checkpoints_progress_and_result(dataset, train_dir):
    args = train_args(
        dataset["data_file"],
        train_dir,
        "--train_epochs",
        "10",
        "--max_steps",
        "8",
        "--save_steps",
        "4",
        "--keep_checkpoint_max",
        "1",
        "--eval_data_root",
        dataset["root"],
        "--eval_data_lst",
        dataset["val"],
    )
    proc = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = json_lines(proc.stdout)
    progress = [line for line in lines if line["event"] == "progress"]
    assert [p["step"] for p in progress] == list(range(1, 9))
    assert all(set(p) == PROGRESS_KEYS for p in progress)
    assert progress[0]["steps"] == 30 and progress[0]["epochs"] == 10  # 6 images / batch 2 = 3 steps/epoch
    losses = [p["loss"] for p in progress]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses

    result = lines[-1]  # the result is the last stdout line, and the same JSON is in the file
    assert result == json.loads((train_dir / "result.json").read_text())
    assert result["event"] == "result" and result["steps"] == 8 and result["epochs"] == 3
    assert result["checkpoint"] == str(train_dir / "final.ckpt")
    assert 0.0 <= result["miou"] <= 1.0  # evaluated after training
    assert len((train_dir / "result.json").read_bytes()) < 4096
    assert sorted(os.listdir(train_dir)) == [
        "deeplab-00000008.ckpt",
        "final.ckpt",
        "progress.jsonl",
        "result.json",
    ]  # keep max 1


def test_resume_restores_step_lr_position_and_momentum(dataset, train_dir):
    import mindspore as ms
    from mindspore import nn

    from job import checkpoints, train
    from job.config import TrainConfig

    config = TrainConfig(  # the same run as the first test's (resume refuses another run's checkpoints)
        data_file=dataset["data_file"], train_dir=str(train_dir), num_classes=CLASSES, crop_size=33,
        batch_size=2, train_epochs=10, base_lr=0.01,
    )  # fmt: skip
    net = train.build_network(config, "CPU")
    lrs = np.linspace(0.1, 0.0, 30, dtype=np.float32)
    optimizer = nn.Momentum(net.trainable_params(), ms.Tensor(lrs), recipe.MOMENTUM, recipe.WEIGHT_DECAY)
    position = train.resume(config, net, optimizer)
    saved = checkpoints.read(train_dir / "deeplab-00000008.ckpt")
    assert position.step == 8
    assert int(optimizer.global_step.asnumpy()[0]) == 8  # the optimizer indexes its LR array with this
    moment = next(m for m in optimizer.moments if m.name == "moments.classifier.weight")
    assert np.abs(moment.asnumpy()).sum() > 0
    assert np.array_equal(moment.asnumpy(), saved["moments.classifier.weight"].asnumpy())
    weight = next(p for p in net.get_parameters() if p.name == "backbone.layer4.2.conv3.weight")
    assert np.array_equal(weight.asnumpy(), saved["backbone.layer4.2.conv3.weight"].asnumpy())


def test_restart_continues_and_sigterm_saves_and_exits_143(dataset, train_dir):
    args = train_args(dataset["data_file"], train_dir, "--train_epochs", "10", "--save_steps", "1000")
    err_file = train_dir.parent / "sigterm-stderr.txt"
    with open(err_file, "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        # read() drains what readline() already buffered too (communicate() reads the raw pipe and
        # would lose lines that arrived together with the first one).
        stdout = proc.stdout.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err_file.read_text()
    assert first["event"] == "progress" and first["step"] == 9, first  # continued, not restarted
    assert "epoch 3/10 step 9/30 loss" in stderr  # the human line, also when stderr is not a terminal
    assert proc.returncode == recipe.EXIT_INTERRUPTED, stderr[-3000:]
    # the newest step reported: the first line's, or a later one's if a step finished before the signal
    last_step = [first, *json_lines(stdout)][-1]["step"]
    from job import checkpoints

    newest_step, newest = checkpoints.step_checkpoints(train_dir)[0]
    assert newest_step == last_step >= 9  # the step finished when the signal came, saved
    assert int(checkpoints.read(newest)["global_step"].asnumpy()[0]) == newest_step


def test_progress_jsonl_keeps_every_run_of_the_train_dir(train_dir):
    """The first test's run (steps 1-8, result) and the interrupted restart's (from 8) in one file."""
    lines = [json.loads(line) for line in (train_dir / "progress.jsonl").read_text().splitlines()]
    runs = list(dict.fromkeys(line["run"] for line in lines))
    assert len(runs) == 2 and all(line["attempt"] and line["time"] > 1.7e9 for line in lines)
    first, second = ([line for line in lines if line["run"] == run] for run in runs)
    assert [(line["event"], line["step"]) for line in first] == [
        ("start", 0), *(("progress", step) for step in range(1, 9)), ("result", 8)
    ]  # fmt: skip
    assert 0.0 <= first[-1]["miou"] <= 1.0
    assert second[0]["event"] == "start" and second[0]["step"] == 8  # appended, not truncated
    steps = [line["step"] for line in second[1:] if line["event"] == "progress"]
    assert steps and steps == list(range(9, 9 + len(steps))) and len(steps) == len(second) - 1  # no result


def test_checkpoint_for_other_class_count_is_exit_2_and_kept(dataset, train_dir, tmp_path, capsys):
    from job.__main__ import main

    other = tmp_path / "other"
    other.mkdir()
    source = train_dir / "deeplab-00000008.ckpt"
    shutil.copy(source, other / source.name)
    code = main(train_args(dataset["data_file"], other, "--num_classes", "5")[3:])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == recipe.EXIT_BAD_INPUT
    assert (
        err[-1].startswith("deeplab-job: error: ")
        and "deeplab-00000008.ckpt" in err[-1]
        and "num_classes" in err[-1]
    )
    assert sorted(os.listdir(other)) == ["deeplab-00000008.ckpt"]  # nothing deleted, nothing written


def test_empty_dataset_is_exit_2(dataset, tmp_path, capsys):
    from job.__main__ import main

    code = main(train_args(dataset["data_file"], tmp_path, "--batch_size", "16")[3:])  # 6 images < one batch
    err = capsys.readouterr().err.strip().splitlines()
    assert code == recipe.EXIT_BAD_INPUT
    assert "no full batch" in err[-1] and dataset["data_file"] in err[-1]


def test_eval_command_loads_final_checkpoint_strictly(dataset, train_dir, tmp_path, capsys):
    from job.__main__ import main

    common = ["eval", "--data_root", dataset["root"], "--data_lst", dataset["val"], "--crop_size", "33"]
    common += ["--device_target", "CPU", "--ckpt_path", str(train_dir / "final.ckpt")]
    out_json = tmp_path / "metrics.json"
    code = main([*common, "--num_classes", str(CLASSES), "--output_json", str(out_json), "--flip"])
    assert code == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["images"] == 2 and len(metrics["iou"]) == CLASSES and 0.0 <= metrics["miou"] <= 1.0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == metrics
    code = main([*common, "--num_classes", "4"])  # a checkpoint for 3 classes
    assert code == recipe.EXIT_BAD_INPUT
    assert "final.ckpt" in capsys.readouterr().err.strip().splitlines()[-1]


def test_build_data_command_writes_shards(dataset, tmp_path, capsys):
    from job.__main__ import main

    train_lst = str(Path(dataset["root"]) / "train.txt")
    dst = tmp_path / "out.mindrecord"
    args = [
        "--data_root",
        dataset["root"],
        "--data_lst",
        train_lst,
        "--dst_path",
        str(dst),
        "--num_shards",
        "2",
    ]
    code = main(["build-data", *args, "--shuffle", "false"])
    assert code == 0
    shards = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shards"]
    assert len(shards) == 2 and all(Path(shard).is_file() for shard in shards)


def test_build_data_refuses_labels_beyond_num_classes(dataset, tmp_path, capsys):
    from job.__main__ import main

    train_lst = str(Path(dataset["root"]) / "train.txt")
    dst = tmp_path / "out.mindrecord"
    args = ["build-data", "--data_root", dataset["root"], "--data_lst", train_lst, "--dst_path", str(dst)]
    code = main([*args, "--num_shards", "1", "--num_classes", "2"])  # the set has 3 classes
    assert code == recipe.EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and train_lst in error[0] and ">= num_classes" in error[0]
    assert not dst.exists()
