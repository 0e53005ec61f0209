"""All ranks stop after the same step when only one of them gets SIGTERM (issue #14 section 4).

Two ranks train through MindSpore's dynamic cluster on CPU; rank 1 alone is sent SIGTERM. The ranks
agree on the stop after every step, so both exit 143 after the same step, and rank 0's checkpoint is
of that step; neither waits in a collective for the other.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from _ms_cluster import (
    cluster_env,
    processes,
    scheduler_command,
    stop_step,
    tiny_records,
    train_flags,
)

from envtest.plane import free_port
from job import checkpoints

pytestmark = pytest.mark.mindspore


def newest_progress_step(train_dir: Path) -> int:
    log = train_dir / "progress.jsonl"
    if not log.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if '"progress"' in line]
    return max(steps, default=0)


@pytest.mark.parametrize("signalled", [["rank1"], ["sched", "rank0", "rank1"]], ids=["one-rank", "every-pod"])
def test_sigterm_stops_every_rank_after_the_same_step(tmp_path: Path, signalled: list[str]):
    """SIGTERM to one rank (its pod evicted), or to every pod at once (the training deleted: the
    scheduler too, which must not take the cluster down before the ranks have saved)."""
    data_file = tiny_records(tmp_path / "data")
    env = cluster_env(free_port(), workers=2)
    dirs = [tmp_path / f"train{rank}" for rank in range(2)]
    with processes(tmp_path) as group:
        group.start("sched", scheduler_command(), {**env, "MS_ROLE": "MS_SCHED"})
        for rank, train_dir in enumerate(dirs):
            flags = train_flags(str(data_file), train_dir, epochs=100, max_steps=200)
            command = [sys.executable, "-m", "job", "train", *flags]
            group.start(f"rank{rank}", command, {**env, "MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(rank)})
        deadline = time.monotonic() + 300
        while newest_progress_step(dirs[0]) < 2:  # both ranks are in the loop: the first steps are done
            assert time.monotonic() < deadline, group.err("rank0")[-3000:]
            assert group.procs["rank0"].poll() is None, group.err("rank0")[-3000:]
            time.sleep(0.2)
        signalled_at = newest_progress_step(dirs[0])
        for name in signalled:
            group.procs[name].send_signal(signal.SIGTERM)
        codes = [group.wait(f"rank{rank}", timeout=120) for rank in range(2)]
        sched_code = group.wait("sched", timeout=60)
        errors = [group.err(f"rank{rank}") for rank in range(2)]

    assert codes == [143, 143], [e[-2000:] for e in errors]
    # The scheduler served until both ranks had left, even when it had SIGTERM too.
    assert sched_code == 0 and not any("Failed to unregister" in e for e in errors)
    steps = [stop_step(e) for e in errors]
    assert steps[0] is not None and steps[0] == steps[1], steps
    assert signalled_at <= steps[0] <= signalled_at + 3, (signalled_at, steps)  # the next step or so
    assert ("to another rank" in errors[0]) == ("rank0" not in signalled)
    assert "to another rank" not in errors[1]
    # Rank 0 saved exactly the agreed step (save_steps is far away); rank 1 wrote nothing.
    assert [step for step, _ in checkpoints.step_checkpoints(dirs[0])] == [steps[0]]
    assert checkpoints.read_meta(checkpoints.step_path(dirs[0], steps[0]))["step"] == steps[0]
    assert not dirs[1].exists() or not list(dirs[1].glob("*.ckpt"))
