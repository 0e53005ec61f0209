"""Two-rank data-parallel training on CPU through MindSpore's dynamic cluster (FACTS section 3):
one scheduler + two workers; parameters stay identical across ranks, only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envtest.plane import free_port

pytestmark = pytest.mark.mindspore
WORKER = Path(__file__).with_name("_dist_worker.py")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("dist-data")
    train_lst, val_lst = generate(str(root), num_train=8, num_val=3, size=40, num_classes=3, seed=5)
    return convert_list(str(root), train_lst, str(root / "train.mindrecord"), 1, True)[0], str(root), val_lst


def test_two_ranks_stay_identical_and_only_rank_0_writes(data_file, tmp_path: Path):
    """Two ranks train in step and evaluate the stage together (each scores its share of the list)."""
    data_file, eval_root, eval_lst = data_file
    port = str(free_port())
    base = {
        **os.environ,
        "MS_SCHED_HOST": "127.0.0.1",
        "MS_SCHED_PORT": port,
        "MS_WORKER_NUM": "2",
        "MS_TOPO_TIMEOUT": "60",
    }
    processes: list[subprocess.Popen] = []
    logs = []
    try:
        sched_log = open(tmp_path / "sched.log", "w")  # noqa: SIM115 - closed in finally
        logs.append(sched_log)
        scheduler = [sys.executable, "-c", "from mindspore.communication import init; init()"]
        processes.append(
            subprocess.Popen(
                scheduler,
                env={**base, "MS_ROLE": "MS_SCHED"},
                cwd=tmp_path,
                stdout=sched_log,
                stderr=subprocess.STDOUT,
            )
        )
        for rank in range(2):
            train_dir = tmp_path / f"train{rank}"
            args = [
                sys.executable,
                str(WORKER),
                str(tmp_path / f"rank{rank}.npz"),
                "--",
                "--data_file",
                data_file,
                "--train_dir",
                str(train_dir),
                "--batch_size",
                "2",
                "--crop_size",
                "33",
                "--num_classes",
                "3",
                "--device_target",
                "CPU",
                "--train_epochs",
                "5",
                "--max_steps",
                "3",
                "--log_steps",
                "1",
                "--base_lr",
                "0.05",
                "--is_distributed",
                "--eval_data_root",
                eval_root,
                "--eval_data_lst",
                eval_lst,
                "--result_file",
                str(train_dir / "result.json"),
            ]
            env = {**base, "MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(rank)}
            processes.append(
                subprocess.Popen(
                    args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        outputs = [proc.communicate(timeout=600) for proc in processes[1:]]
        processes[0].wait(timeout=60)
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    for proc, (_, err) in zip(processes[1:], outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]

    rank0 = np.load(tmp_path / "rank0.npz")
    rank1 = np.load(tmp_path / "rank1.npz")
    assert set(rank0.files) == set(rank1.files) and len(rank0.files) > 300
    for name in rank0.files:
        np.testing.assert_allclose(rank0[name], rank1[name], rtol=1e-5, atol=1e-6, err_msg=name)

    # Rank 0 printed progress (4 images per global step) and wrote checkpoints; rank 1 stayed silent.
    progress = [
        json.loads(line) for line in outputs[0][0].splitlines() if line.startswith('{"event":"progress"')
    ]
    assert [p["step"] for p in progress] == [1, 2, 3]
    assert progress[0]["steps"] == 10  # 8 images over 2 shards, batch 2: 2 steps per epoch
    assert (tmp_path / "train0" / "final.ckpt").is_file() and (
        tmp_path / "train0" / "deeplab-00000003.ckpt"
    ).is_file()
    assert not (tmp_path / "train1").exists() or not os.listdir(tmp_path / "train1")
    result = json.loads((tmp_path / "train0" / "result.json").read_text())
    assert 0.0 <= result["miou"] <= 1.0, "the stage's evaluation, scored by both ranks, reached rank 0"
    assert "progress" not in outputs[1][0]
