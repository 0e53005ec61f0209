"""Multi-NPU pods on CPU (issue #14 section 2): the launcher of a pod with MS_LOCAL_WORKER=2 starts one
training process per rank, as msrun does, and two such pods train together through the dynamic
cluster with identical weights on all four ranks. A process that dies takes its pod down with its
exit code, its sibling stopped by the launcher."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from _ms_cluster import children_of, cluster_env, processes, tiny_records, train_flags

from envtest.plane import free_port
from job import checkpoints

pytestmark = pytest.mark.mindspore
LAUNCH = [sys.executable, "-m", "job", "launch", "--grace", "5", "--"]


def pod_env(env: dict[str, str], role: str, node_rank: int | None = None) -> dict[str, str]:
    """What the operator gives a dynamicCluster pod of 2 NPUs (MindX's variables)."""
    pod = {
        **env,
        "DEEPLAB_LAUNCHER": "dynamicCluster",
        "MS_ROLE": role,
        "MS_SERVER_NUM": "0",
        "MS_LOCAL_WORKER": "2",
    }
    if node_rank is not None:
        pod["MS_NODE_RANK"] = str(node_rank)
    return pod


def start_cluster(
    group, data_file: str, train_dir: Path, *, epochs: int, max_steps: int, pods: int = 2
) -> None:
    """The scheduler pod and ``pods`` worker pods of 2 processes each (ranks 2p and 2p + 1)."""
    env = cluster_env(free_port(), workers=2 * pods)
    command = [*LAUNCH, "train", *train_flags(data_file, train_dir, epochs=epochs, max_steps=max_steps)]
    group.start("sched", command, pod_env(env, "MS_SCHED"))
    for pod in range(pods):
        group.start(f"pod{pod}", command, pod_env(env, "MS_WORKER", pod))


def test_two_pods_of_two_processes_train_with_identical_weights(tmp_path: Path):
    data_file = tiny_records(tmp_path / "data")  # 8 images: 2 per rank, one batch
    train_dir = tmp_path / "train"  # shared by every rank, as a volume would be: rank 0 alone writes
    with processes(tmp_path) as group:
        start_cluster(group, data_file, train_dir, epochs=2, max_steps=2)
        codes = {name: group.wait(name, timeout=600) for name in ("pod0", "pod1", "sched")}
        assert codes == {"pod0": 0, "pod1": 0, "sched": 0}, {n: group.err(n)[-2000:] for n in codes}
        finished = [
            x for pod in ("pod0", "pod1") for x in group.json_lines(pod) if x["event"] == "rank-finished"
        ]
        results = [x for pod in ("pod0", "pod1") for x in group.json_lines(pod) if x["event"] == "result"]
        errors = {pod: group.err(pod) for pod in ("pod0", "pod1")}

    # Pod p ran ranks 2p and 2p + 1 (msrun's numbering), all of a 4-rank group, all at step 2.
    by_pod = {pod: sorted(x["rank"] for x in group.json_lines(pod) if x["event"] == "rank-finished")
              for pod in ("pod0", "pod1")}  # fmt: skip
    assert by_pod == {"pod0": [0, 1], "pod1": [2, 3]}
    assert {(x["size"], x["step"]) for x in finished} == {(4, 2)}
    assert all("starting 2 processes" in err for err in errors.values())
    # Data parallelism kept the weights identical on every rank.
    for other in finished[1:]:
        assert other["param_l2"] == pytest.approx(finished[0]["param_l2"], rel=1e-6)
        assert other["param_sum"] == pytest.approx(finished[0]["param_sum"], rel=1e-6, abs=1e-3)
    # One result (rank 0's), and rank 0's checkpoints of step 2.
    assert len(results) == 1 and results[0]["steps"] == 2
    assert json.loads((train_dir / "result.json").read_text())["steps"] == 2
    assert [step for step, _ in checkpoints.step_checkpoints(train_dir)] == [2]
    assert (train_dir / checkpoints.FINAL_NAME).is_file()


def test_a_dead_process_stops_its_pod_with_its_exit_code(tmp_path: Path):
    """One pod of two processes is enough: what is checked happens inside that pod (a second pod only
    doubled the processes compiling on the test machine's 2 cores)."""
    data_file = tiny_records(tmp_path / "data")
    train_dir = tmp_path / "train"
    with processes(tmp_path) as group:
        start_cluster(group, data_file, train_dir, epochs=200, max_steps=400, pods=1)
        deadline = time.monotonic() + 300
        while (
            not (train_dir / "progress.jsonl").is_file()
            or '"progress"' not in (train_dir / "progress.jsonl").read_text()
        ):  # every rank is in the training loop
            assert time.monotonic() < deadline and group.procs["pod0"].poll() is None, group.err("pod0")[
                -2000:
            ]
            time.sleep(0.2)
        launcher = group.procs["pod0"]
        children = children_of(launcher.pid)
        assert len(children) == 2
        killed = time.monotonic()
        os.kill(children[1], signal.SIGKILL)
        code = launcher.wait(timeout=60)
        took = time.monotonic() - killed
        sibling_alive = Path(f"/proc/{children[0]}").exists() and "zombie" not in _state(children[0])
        err = group.err("pod0")

    assert code == 137, err[-2000:]  # 128 + SIGKILL, as the kubelet would report the process
    assert not sibling_alive
    assert took < 40  # SIGTERM, then SIGKILL after the 5 s grace if it sat in a collective
    assert f"process {children[1]} exited 137; stopping the other 1" in err


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"
