"""``python -m job eval --is_distributed`` on two local ranks (MindSpore's dynamic cluster on CPU, one
scheduler and two workers, as tests/job/test_distributed.py starts them) gives exactly the
single-process result: each rank scores a shard, the confusion matrices are summed, rank 0 reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from envtest.plane import free_port
from job.model import NetSettings

pytestmark = pytest.mark.mindspore

CLASSES = 3
SETTINGS = NetSettings("deeplab_v3_s16", CLASSES, (2, 4, 6), 0.1, False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    """A random-weight checkpoint in the project's format and a 5-image labelled set (odd: uneven shards)."""
    import mindspore as ms

    from job import checkpoints, device
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("dist-eval")
    _, val = generate(str(root), num_train=1, num_val=5, size=40, num_classes=CLASSES, seed=9)
    device.select_device("CPU")
    ms.set_seed(4)
    net = SETTINGS.build()
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    ckpt = checkpoints.save_atomic(entries, root / "final.ckpt", SETTINGS.meta())
    return {"root": str(root), "val": val, "ckpt": str(ckpt)}


def eval_args(setup: dict[str, str], out: Path) -> list[str]:
    return [
        sys.executable, "-m", "job", "eval", "--data_root", setup["root"], "--data_lst", setup["val"],
        "--ckpt_path", setup["ckpt"], "--crop_size", "33", "--scales", "1.0", "--flip",
        "--device_target", "CPU", "--output_json", str(out / "metrics.json"),
        "--save_predictions", str(out / "png"),
    ]  # fmt: skip


def run_two_ranks(args: list[str], cwd: Path) -> list[tuple[int, str, str]]:
    """Scheduler + 2 workers; (exit code, stdout, stderr) of each worker. Every process is ended."""
    base = {
        **os.environ,
        "MS_SCHED_HOST": "127.0.0.1",
        "MS_SCHED_PORT": str(free_port()),
        "MS_WORKER_NUM": "2",
    }
    base["MS_TOPO_TIMEOUT"] = "60"
    processes: list[subprocess.Popen] = []
    try:
        with open(cwd / "sched.log", "w") as sched_log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "job.distributed"],
                    env={**base, "MS_ROLE": "MS_SCHED"},
                    cwd=cwd,
                    stdout=sched_log,
                    stderr=subprocess.STDOUT,
                )
            )
            for rank in range(2):
                env = {**base, "MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(rank)}
                processes.append(
                    subprocess.Popen(
                        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    )
                )
            outputs = [proc.communicate(timeout=400) for proc in processes[1:]]
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [(proc.returncode, out, err) for proc, (out, err) in zip(processes[1:], outputs, strict=True)]


def test_two_ranks_give_the_single_process_result(setup, tmp_path: Path) -> None:
    single, dist = tmp_path / "single", tmp_path / "dist"
    single.mkdir()
    dist.mkdir()
    proc = subprocess.run(eval_args(setup, single), cwd=single, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads((single / "metrics.json").read_text())

    args = [*eval_args(setup, dist), "--is_distributed"]
    (code0, out0, err0), (code1, out1, err1) = run_two_ranks(args, dist)
    assert code0 == 0, err0[-3000:]
    assert code1 == 0, err1[-3000:]
    got = json.loads((dist / "metrics.json").read_text())
    assert got["images"] == expected["images"] == 5
    assert got["miou"] == expected["miou"] and got["iou"] == expected["iou"]
    assert any(value is not None and value > 0 for value in got["iou"])
    assert json.loads(out0.strip().splitlines()[-1])["miou"] == got["miou"]  # rank 0 reports
    assert '"event"' not in out1  # rank 1 stays silent
    # Each rank saved its own shard's predictions; together they are the single process's.
    names = sorted(p.name for p in (single / "png").iterdir())
    assert len(names) == 5 and sorted(p.name for p in (dist / "png").iterdir()) == names
    for name in names:
        np.testing.assert_array_equal(
            cv2.imread(str(dist / "png" / name)), cv2.imread(str(single / "png" / name))
        )
