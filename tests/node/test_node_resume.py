"""A worker pod deleted mid-stage on the real node, then the training deleted (issue #12 section 4).

One stage of 2 CPU workers through MindSpore's dynamic cluster (a scheduler pod; the workers reach it
through the training's ClusterIP Service), on the session's smoke data: 33 px crops, 8 steps an epoch,
a progress line every step and no periodic checkpoint (``saveSteps`` above the stage's steps), so the
only step checkpoint before the end can be the one SIGTERM makes.

1. Once rank 0 has logged step 3, its pod is deleted (``kubectl delete pod``, as an admin or a drain
   would). The kubelet sends SIGTERM; the job's sync stop has every rank agree on the step to stop
   after, rank 0 saves that step and exits 143 (its last status, caught by a watch as it goes).
2. The operator counts a disruption (not a failure: ``backoffLimit`` is 0) and starts attempt 2 once
   attempt 1's scheduler pod is gone (the Service would send new workers to it too). It resumes: its
   start record in progress.jsonl is the saved step, its first progress line the next step, and
   status.progress.step never goes back (towards 0); the stage then succeeds.
3. ``kubectl delete dlt``: every child goes (pods, ConfigMaps, Services owned by the training), and
   after the kubelet's termination the node's containerd holds no container, sandbox or task of any
   of the training's pods.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from kubelet import apply, wait_for
from nodehelp import (
    NAMESPACE,
    PodRecorder,
    cpu_training,
    delete_and_check_nothing_is_left,
    finished_status,
    terminated,
)

from controller import names

pytestmark = [pytest.mark.node, pytest.mark.full_node]  # the 3.4 GB worker image

STEPS_PER_EPOCH = 8  # cpu-smoke-data.yaml's 32 images / (batch 2 x 2 workers)
EPOCHS = 3  # 24 steps: SIGTERM lands well before the end, however fast the steps
DELETE_AT = 3  # rank 0's pod is deleted once it has logged this step
STEP_CHECKPOINT = re.compile(r"^deeplab-(\d{8})\.ckpt$")  # job/checkpoints.py's step names


def records(train_dir: Path) -> list[dict]:
    """progress.jsonl: rank 0's start and progress records, each with its attempt id."""
    path = train_dir / "progress.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def steps(log: list[dict], event: str, attempt=lambda attempt: True) -> list[int]:
    """The steps of ``event`` records whose attempt id passes ``attempt``, in the file's order."""
    return [r["step"] for r in log if r.get("event") == event and attempt(r.get("attempt"))]


def step_checkpoints(train_dir: Path) -> list[int]:
    found = [STEP_CHECKPOINT.match(p.name) for p in train_dir.iterdir()] if train_dir.is_dir() else []
    return sorted(int(m.group(1)) for m in found if m)


def delete_rank0_mid_stage(node_kubectl, pods: PodRecorder, train_dir: Path) -> int:
    """Delete rank 0's pod once it has logged step DELETE_AT; return the step its SIGTERM saved."""
    logged = lambda: max(steps(records(train_dir), "progress"), default=0)  # noqa: E731
    wait_for(f"rank 0 to log step {DELETE_AT}", lambda: logged() >= DELETE_AT, 900, 0.5)
    rank0 = {names.LABEL_ATTEMPT: "1", names.LABEL_RANK: "0", names.LABEL_ROLE: names.ROLE_WORKER}
    [victim] = pods.matching(rank0)
    node_kubectl("delete", "pod", victim["metadata"]["name"], "-n", NAMESPACE, "--wait=false")
    uid = victim["metadata"]["uid"]
    wait_for("the deleted pod to go", lambda: uid in pods.deleted, 120, 0.5)
    last = terminated(pods.pods[uid])
    assert last.get("exitCode") == 143, last  # SIGTERM handled: the job's own exit, not SIGKILL's 137
    saved = step_checkpoints(train_dir)
    assert len(saved) == 1 and DELETE_AT <= saved[0] < STEPS_PER_EPOCH * EPOCHS, saved
    return saved[0]


def follow_to_the_end(node_kubectl, name: str) -> tuple[dict, list[tuple[int, int]]]:
    """The final status, and (status.attempt, status.progress.step) as seen every second until then."""
    samples: list[tuple[int, int]] = []

    def sample(status: dict) -> None:
        step = (status.get("progress") or {}).get("step")
        if status.get("attempt") is not None and step is not None:
            samples.append((status["attempt"], step))

    return finished_status(node_kubectl, name, sample), samples


@pytest.mark.timeout(2400)  # cold: the worker image's build and import in setup; the training ~6 min
def test_deleted_worker_saves_on_sigterm_next_attempt_resumes_and_deletion_leaves_nothing(
    operator, node, node_kubectl, node_admin, worker_image, smoke_data
):
    name = f"resume-{uuid.uuid4().hex[:6]}"
    train_dir = smoke_data / "checkpoints" / name / "s16"
    with PodRecorder(node_admin, NAMESPACE, name) as pods:
        apply(node_kubectl, cpu_training(name, worker_image, smoke_data, epochs=EPOCHS))
        try:
            saved_step = delete_rank0_mid_stage(node_kubectl, pods, train_dir)
            status, samples = follow_to_the_end(node_kubectl, name)
            stage = status["stages"][0]
            assert (stage["attempts"], stage["failures"], stage["disruptions"]) == (2, 0, 1), stage
            assert stage["checkpoint"] == f"/checkpoints/{name}/s16/final.ckpt"

            second, log = status["attemptId"], records(train_dir)
            first_attempt = steps(log, "progress", lambda attempt: attempt != second)
            assert max(first_attempt) == saved_step  # rank 0 saved the last step it took
            starts = steps(log, "start", lambda attempt: attempt == second)
            resumed = steps(log, "progress", lambda attempt: attempt == second)
            assert starts == [saved_step] and resumed[0] == saved_step + 1, (starts, resumed)
            assert resumed[-1] == STEPS_PER_EPOCH * EPOCHS
            # status.progress keeps attempt 1's last line read until attempt 2 logs: it never goes back
            shown = [step for _, step in samples]
            assert shown == sorted(shown) and max(s for a, s in samples if a == 2) > saved_step, samples

            delete_and_check_nothing_is_left(node, node_kubectl, pods, name)
        except BaseException:
            print(f"the training's pods, last seen:\n{pods.report()}")
            raise
        finally:
            node_kubectl("delete", "dlt", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=false")
