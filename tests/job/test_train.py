"""Real training on CPU through the command line: loss goes down, progress/result contracts, the
logged LR, resume after SIGKILL between checkpoints (step, LR position read from the optimizer,
momentum), SIGTERM -> checkpoint + 143, bad checkpoints/data -> exit 2.

Each MindSpore process costs ~30 s of graph compilation on 2 cores, so the runs are module fixtures
built on each other's output, never on another test's: ``trained`` (steps 1-8), ``killed`` (a copy of
it continued and SIGKILLed between two checkpoints) and ``restarted`` (a copy of that restarted and
SIGTERMed). Any test can run first, alone or in any order; no test writes into a fixture's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
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
EPOCHS = 10  # 6 images / batch 2 = 3 steps per epoch: 30 steps in the LR schedule
KILL_SAVE_STEPS = 3  # the killed run saves at step 9 and would save again at 12: it is killed at 10 or 11


@dataclass
class Run:
    """One ``python -m job train`` process and what it left: its train_dir, stdout JSON lines, stderr."""

    dir: Path
    returncode: int
    lines: list[dict]
    stderr: str

    @property
    def progress(self) -> list[dict]:
        return [line for line in self.lines if line["event"] == "progress"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, str]:
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    train_lst, val_lst = generate(str(root), num_train=6, num_val=2, size=40, num_classes=CLASSES, seed=3)
    shards = convert_list(str(root), train_lst, str(root / "train.mindrecord"), 1, True)
    return {"root": str(root), "val": val_lst, "data_file": shards[0]}


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


def run_config(dataset: dict[str, str], train_dir: Path):
    """The TrainConfig of the runs above (resume refuses another run's checkpoints)."""
    from job.config import TrainConfig

    return TrainConfig(
        data_file=dataset["data_file"], train_dir=str(train_dir), num_classes=CLASSES, crop_size=33,
        batch_size=2, train_epochs=EPOCHS, base_lr=0.01,
    )  # fmt: skip


def schedule(config) -> np.ndarray:
    """The run's LR per global step, from its real config, as ``job.train.fit`` builds it."""
    from job.schedules import learning_rates

    return learning_rates(
        config.lr_type, config.base_lr, 3 * config.train_epochs, end_lr=config.end_lr,
        decay_steps=config.lr_decay_step, decay_rate=config.lr_decay_rate,
    )  # fmt: skip


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_until(args: list[str], err_file: Path, stop_after_step: int, sig: signal.Signals) -> Run:
    """Start a training, send ``sig`` once a progress line with ``stop_after_step`` or later was read,
    and wait for the process to end. The process is killed on any failure here."""
    with open(err_file, "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[dict] = []
    try:
        while not any(x["event"] == "progress" and x["step"] >= stop_after_step for x in lines[-1:]):
            line = proc.stdout.readline()
            if not line:
                break  # ended early: the caller's assertions say how
            if line.startswith("{"):
                lines.append(json.loads(line))
        proc.send_signal(sig)
        # read() drains what readline() already buffered too (communicate() reads the raw pipe and
        # would lose lines that arrived together with the last one read).
        lines += json_lines(proc.stdout.read())
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return Run(Path(args[args.index("--train_dir") + 1]), proc.returncode, lines, err_file.read_text())


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Run:
    """Steps 1-8 of 30, a checkpoint every 4 (only the newest kept), evaluated after training."""
    train_dir = tmp_path_factory.mktemp("trained")
    args = train_args(
        dataset["data_file"], train_dir, "--train_epochs", str(EPOCHS), "--max_steps", "8", "--save_steps",
        "4", "--keep_checkpoint_max", "1", "--eval_data_root", dataset["root"], "--eval_data_lst",
        dataset["val"],
    )  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    return Run(train_dir, proc.returncode, json_lines(proc.stdout), proc.stderr)


@pytest.fixture(scope="module")
def killed(dataset, trained, tmp_path_factory) -> Run:
    """A copy of ``trained`` continued with a checkpoint every 3 steps and SIGKILLed after step 10 was
    reported: step 9 is saved, step 10 (and maybe 11) is lost, as when a node dies."""
    assert trained.returncode == 0, trained.stderr[-3000:]
    train_dir = tmp_path_factory.mktemp("killed") / "train"
    shutil.copytree(trained.dir, train_dir)
    args = train_args(
        dataset["data_file"], train_dir, "--train_epochs", str(EPOCHS), "--save_steps", str(KILL_SAVE_STEPS)
    )
    return run_until(args, train_dir.parent / "stderr.txt", 10, signal.SIGKILL)


@pytest.fixture(scope="module")
def restarted(dataset, killed, tmp_path_factory) -> Run:
    """A copy of ``killed`` restarted as the operator would, then stopped by SIGTERM after its first step."""
    train_dir = tmp_path_factory.mktemp("restarted") / "train"
    shutil.copytree(killed.dir, train_dir)
    args = train_args(dataset["data_file"], train_dir, "--train_epochs", str(EPOCHS), "--save_steps", "1000")
    return run_until(args, train_dir.parent / "stderr.txt", 0, signal.SIGTERM)


def test_training_lowers_the_loss_and_writes_checkpoints_progress_and_result(dataset, trained):
    assert trained.returncode == 0, trained.stderr[-3000:]
    progress = trained.progress
    assert [p["step"] for p in progress] == list(range(1, 9))
    assert all(set(p) == PROGRESS_KEYS for p in progress)
    assert progress[0]["steps"] == 3 * EPOCHS and progress[0]["epochs"] == EPOCHS
    losses = [p["loss"] for p in progress]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses

    train_dir = trained.dir
    result = trained.lines[-1]  # the result is the last stdout line, and the same JSON is in the file
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


def test_logged_lr_is_the_schedule_value_of_each_step(dataset, trained):
    """The optimizer applies lrs[global step before the step]; the log reads it from the optimizer."""
    assert trained.returncode == 0, trained.stderr[-3000:]
    lrs = schedule(run_config(dataset, trained.dir))
    assert len(set(lrs[:9].tolist())) == 9  # distinct values: an off-by-one would show
    assert [p["lr"] for p in trained.progress] == [float(lr) for lr in lrs[:8]]


def test_sigkill_between_checkpoints_resumes_step_lr_position_and_momentum(dataset, killed):
    from mindspore import Tensor, nn

    from job import checkpoints, train

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    reported = [p["step"] for p in killed.progress]
    assert reported[0] == 9 and reported[-1] >= 10  # continued from 8; killed after step 10 was reported
    saved = 9  # the only multiple of KILL_SAVE_STEPS reached: the kill fell between 9 and 12
    assert reported[-1] < saved + KILL_SAVE_STEPS and checkpoints.step_checkpoints(killed.dir)[0][0] == saved

    config = run_config(dataset, killed.dir)
    net = train.build_network(config, "CPU")
    lrs = schedule(config)
    optimizer = nn.Momentum(net.trainable_params(), Tensor(lrs), recipe.MOMENTUM, recipe.WEIGHT_DECAY)
    position = train.resume(config, net, optimizer)
    entries = checkpoints.read(killed.dir / f"deeplab-{saved:08d}.ckpt")
    assert position.step == saved and int(optimizer.global_step.asnumpy()[0]) == saved
    # What the optimizer applies in the next step (step saved + 1), read from the optimizer itself.
    assert float(optimizer.get_lr().asnumpy()) == float(lrs[saved]) != float(lrs[saved - 1])
    assert len(optimizer.moments) == len(net.trainable_params())
    for moment in optimizer.moments:
        assert np.array_equal(moment.asnumpy(), entries[moment.name].asnumpy()), moment.name
    moment = next(m for m in optimizer.moments if m.name == "moments.classifier.weight")
    assert np.abs(moment.asnumpy()).sum() > 0  # trained moments, not the zeros a fresh optimizer has
    weight = next(p for p in net.get_parameters() if p.name == "backbone.layer4.2.conv3.weight")
    assert np.array_equal(weight.asnumpy(), entries["backbone.layer4.2.conv3.weight"].asnumpy())


def test_restart_continues_at_saved_step_plus_one_and_sigterm_saves_and_exits_143(dataset, restarted):
    from job import checkpoints

    first = restarted.progress[0]
    assert first["step"] == 10, first  # the killed run's step 9 checkpoint + 1: not restarted, not 11
    assert first["lr"] == float(schedule(run_config(dataset, restarted.dir))[9])
    assert f"resuming from {restarted.dir / 'deeplab-00000009.ckpt'} at step 9" in restarted.stderr
    assert "epoch 4/10 step 10/30 loss" in restarted.stderr  # the human line, also when not a terminal
    assert restarted.returncode == recipe.EXIT_INTERRUPTED, restarted.stderr[-3000:]
    # the newest step reported: the first line's, or a later one's if a step finished before the signal
    last_step = restarted.progress[-1]["step"]
    newest_step, newest = checkpoints.step_checkpoints(restarted.dir)[0]
    assert newest_step == last_step >= 10  # the step finished when the signal came, saved
    assert int(checkpoints.read(newest)["global_step"].asnumpy()[0]) == newest_step


def test_progress_jsonl_keeps_every_run_of_the_train_dir(restarted):
    """The first run (steps 1-8, result), the killed one (from 8) and the restart (from 9) in one file."""
    lines = [json.loads(line) for line in (restarted.dir / "progress.jsonl").read_text().splitlines()]
    runs = list(dict.fromkeys(line["run"] for line in lines))
    assert len(runs) == 3 and all(line["attempt"] and line["time"] > 1.7e9 for line in lines)
    first, killed, last = ([line for line in lines if line["run"] == run] for run in runs)
    assert [(line["event"], line["step"]) for line in first] == [
        ("start", 0), *(("progress", step) for step in range(1, 9)), ("result", 8)
    ]  # fmt: skip
    assert 0.0 <= first[-1]["miou"] <= 1.0
    for run, start in ((killed, 8), (last, 9)):
        assert run[0]["event"] == "start" and run[0]["step"] == start  # appended, not truncated
        steps = [line["step"] for line in run[1:] if line["event"] == "progress"]
        assert steps and steps == list(range(start + 1, start + 1 + len(steps)))
        assert len(steps) == len(run) - 1  # no result: neither run finished
    assert len(killed) >= 2  # step 9 at least (the kill may cut step 10's line: stdout is written first)


def test_checkpoint_for_other_class_count_is_exit_2_and_kept(dataset, trained, tmp_path, capsys):
    from job.__main__ import main

    other = tmp_path / "other"
    other.mkdir()
    source = trained.dir / "deeplab-00000008.ckpt"
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


def test_eval_command_loads_final_checkpoint_strictly(dataset, trained, tmp_path, capsys):
    from job.__main__ import main

    common = ["eval", "--data_root", dataset["root"], "--data_lst", dataset["val"], "--crop_size", "33"]
    common += ["--device_target", "CPU", "--ckpt_path", str(trained.dir / "final.ckpt")]
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
