"""Helpers of the multi-process MindSpore tests: a free port, tiny training data, train flags, and
processes that are always stopped (by PID) and whose output is kept in files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def tiny_records(root: Path, images: int = 8) -> str:
    """A MindRecord file of ``images`` 40 px synthetic images with 3 classes."""
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    train_lst, _ = generate(str(root), num_train=images, num_val=0, size=40, num_classes=3, seed=5)
    return convert_list(str(root), train_lst, str(root / "train.mindrecord"), 1, True)[0]


def train_flags(data_file: str, train_dir: Path, *, epochs: int, max_steps: int) -> list[str]:
    """The smallest distributed training: 33 px crops, batch 2, a progress line every step."""
    return [
        "--data_file", data_file, "--train_dir", str(train_dir), "--batch_size", "2", "--crop_size", "33",
        "--num_classes", "3", "--device_target", "CPU", "--train_epochs", str(epochs),
        "--max_steps", str(max_steps), "--log_steps", "1", "--base_lr", "0.05", "--is_distributed",
        "--result_file", str(train_dir / "result.json"),
    ]  # fmt: skip


def cluster_env(port: int, workers: int, host: str = "127.0.0.1") -> dict[str, str]:
    """This environment without any rank variables of the caller's, plus the dynamic cluster's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "DEEPLAB_", "RANK_"))}
    env.update(MS_SCHED_HOST=host, MS_SCHED_PORT=str(port), MS_WORKER_NUM=str(workers), MS_TOPO_TIMEOUT="90")
    return env


class Processes:
    """Started processes with stdout/stderr in files under ``root``; ``stop_all`` kills what is left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}

    def start(
        self, name: str, command: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen:
        with open(self.root / f"{name}.out", "w") as out, open(self.root / f"{name}.err", "w") as err:
            proc = subprocess.Popen(command, env=env, cwd=cwd or self.root, stdout=out, stderr=err)
        self.procs[name] = proc
        return proc

    def wait(self, name: str, timeout: float) -> int:
        return self.procs[name].wait(timeout=timeout)

    def out(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text()

    def err(self, name: str) -> str:
        return (self.root / f"{name}.err").read_text()

    def json_lines(self, name: str) -> list[dict]:
        return [json.loads(line) for line in self.out(name).splitlines() if line.startswith("{")]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:  # a launcher's children sit in their own sessions: their group ids are their PIDs
                    for child in children_of(proc.pid):
                        os.killpg(child, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.kill()
                proc.wait()


def children_of(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@contextmanager
def processes(root: Path) -> Iterator[Processes]:
    group = Processes(root)
    try:
        yield group
    finally:
        group.stop_all()


def stop_step(stderr: str) -> int | None:
    """The step a SIGTERM stopped training after, from the job's one-line message."""
    match = re.search(r"stopped by SIGTERM.* after step (\d+)", stderr)
    return int(match.group(1)) if match else None


def scheduler_command() -> list[str]:
    return [sys.executable, "-m", "job.distributed"]
