"""A real (tiny) training across two operator attempts resumes where the first one's checkpoint left it.

The controller's own pod specs are run as local processes by the kubelet player of
test_operator_pods.py (command and env exactly as specified, the cluster network played on this
machine). Attempt 1's worker is SIGKILLed after its first checkpoint, as when its node dies; attempt 2
is built by the controller for the same stage (same train dir, new attempt id) and must continue from
that checkpoint: its first logged step is the saved step + 1, and it finishes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import test_operator_pods
import yaml
from test_operator_pods import CLUSTER_IP, SAMPLE, SCHED_POD_IP, PodRunner

from controller import names, resources
from controller.api import Training
from job import checkpoints

pytestmark = pytest.mark.mindspore
service_network = test_operator_pods.service_network  # the fixture: the cluster network played
data_dir = test_operator_pods.data_dir  # the fixture: the smoke MindRecord set
SAVE_STEPS = 2
MAX_STEPS = 5  # 8 images / batch 2 = 4 steps per epoch, 2 epochs; attempt 2 stops at step 5


def training(port: int) -> Training:
    """The CPU sample cut to one worker and one stage, tiny: a checkpoint every SAVE_STEPS steps."""
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["spec"].update(workers=1, npuResource="", launcher="dynamicCluster", schedulerPort=port)
    stage = obj["spec"]["stages"][0]
    stage.update(
        cropSize=33, epochs=2, dataFile="smoke.mindrecord", logSteps=1, saveSteps=SAVE_STEPS,
        extraArgs=["--max_steps", str(MAX_STEPS)], numClasses=21, batchSize=2,
    )  # fmt: skip
    obj["spec"]["stages"] = [stage]
    obj["metadata"].update(namespace="default", uid="0f0e0d0c-0000-4000-8000-000000000016")
    return Training.from_obj(obj)


def stage_name(t: Training) -> str:
    return t.spec.stages[0].name


def start_attempt(t: Training, attempt: int, kubelet: PodRunner) -> dict[str, subprocess.Popen]:
    """Every pod of the stage's attempt, as the controller builds it, started by the kubelet player."""
    pods = resources.desired_pods(t, 0, attempt, resources.PodContext(sched_ip=CLUSTER_IP))
    scheduler = names.scheduler_name(t.name, t.uid, stage_name(t), attempt)
    kubelet.pod_ips[scheduler] = SCHED_POD_IP
    roles = {name: pod["metadata"]["labels"][names.LABEL_ROLE] for name, pod in pods.items()}
    assert sorted(roles.values()) == [names.ROLE_SCHEDULER, names.ROLE_WORKER]
    envs = {name: kubelet.env(pod) for name, pod in pods.items()}
    assert {env["DEEPLAB_ATTEMPT"] for env in envs.values()} == {
        f"0f0e0d0c.{t.spec.stages[0].name}.{attempt}"
    }
    started = {}
    for name, pod in pods.items():
        started[roles[name]] = kubelet.start(pod)
    return started


def drain_until(processes: dict[str, subprocess.Popen], done, timeout: float) -> None:
    """Keep reading the pods' pipes (so no process blocks on a full pipe) until ``done()`` or timeout.
    Retrying ``communicate`` after its timeout loses no output (subprocess documents it)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout} s")
        for proc in processes.values():
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.communicate(timeout=0.2)
        if all(proc.poll() is not None for proc in processes.values()) and not done():
            raise AssertionError("every process of the attempt ended before it was done")


def stop(processes: dict[str, subprocess.Popen], sig: signal.Signals) -> dict[str, tuple[str, str]]:
    """Send ``sig`` to the processes still running and collect every output (kill on any failure)."""
    outputs = {}
    try:
        for role, proc in processes.items():
            if proc.poll() is None:
                proc.send_signal(sig)
            outputs[role] = proc.communicate(timeout=120)
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def progress_steps(stdout: str) -> list[int]:
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    return [x["step"] for x in lines if x["event"] == "progress"]


def test_second_attempt_resumes_from_the_first_attempts_checkpoint(
    data_dir: Path, tmp_path: Path, service_network: int
):
    t = training(service_network)
    stage = t.spec.stages[0].name
    kubelet = PodRunner(tmp_path, {"/data": data_dir, "/checkpoints": tmp_path / "checkpoints"}, {})
    train_dir = Path(kubelet.path(f"/checkpoints/{t.name}/{stage}"))
    saved = SAVE_STEPS

    first = start_attempt(t, 1, kubelet)
    try:
        drain_until(first, lambda: checkpoints.step_checkpoints(train_dir), timeout=600)
    finally:
        outputs = stop(first, signal.SIGKILL)  # the node died: no SIGTERM, no last checkpoint
    assert first["worker"].returncode == -signal.SIGKILL, outputs["worker"][1][-3000:]
    steps = progress_steps(outputs["worker"][0])
    assert steps[0] == 1 and steps[-1] < 2 * SAVE_STEPS  # killed between the first and second save
    assert [step for step, _ in checkpoints.step_checkpoints(train_dir)] == [saved]

    second = start_attempt(t, 2, kubelet)
    try:
        drain_until(second, lambda: second["worker"].poll() is not None, timeout=600)
    finally:
        outputs = stop(second, signal.SIGTERM)
    worker_out, worker_err = outputs["worker"]
    assert second["worker"].returncode == 0, worker_err[-3000:]
    assert f"resuming from {train_dir / f'deeplab-{saved:08d}.ckpt'} at step {saved}" in worker_err
    assert progress_steps(worker_out) == list(range(saved + 1, MAX_STEPS + 1))  # first: saved + 1
    worker = names.worker_name(t.name, t.uid, stage, 2, 0)
    result = json.loads((tmp_path / worker / "termination-log").read_text())
    assert result["event"] == "result" and result["steps"] == MAX_STEPS
    assert Path(result["checkpoint"]) == train_dir / "final.ckpt" and (train_dir / "final.ckpt").is_file()

    # progress.jsonl, written by both attempts into the same train dir, tells them apart.
    log = [json.loads(x) for x in (train_dir / "progress.jsonl").read_text().splitlines()]
    by_attempt = {}
    for line in log:
        by_attempt.setdefault(line["attempt"], []).append((line["event"], line["step"]))
    assert list(by_attempt) == [f"0f0e0d0c.{stage}.1", f"0f0e0d0c.{stage}.2"]
    assert by_attempt[f"0f0e0d0c.{stage}.1"][0] == ("start", 0)
    assert by_attempt[f"0f0e0d0c.{stage}.2"] == [
        ("start", saved), *(("progress", s) for s in range(saved + 1, MAX_STEPS + 1)), ("result", MAX_STEPS)
    ]  # fmt: skip
