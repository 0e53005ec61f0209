"""manifests/samples/cpu-smoke.yaml for real: its data Job, then 2 stages x 2 CPU workers through MindSpore's
dynamic cluster (a scheduler pod, workers reaching it through the training's ClusterIP Service), on the node.

The samples are applied as a user would, with only what differs on a test machine changed: the locally
built worker image and a directory of the test's own under the allowed hostPath prefix.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
import yaml
from nodehelp import SMOKE_PREFIX, localise

pytestmark = [pytest.mark.node, pytest.mark.full_node]  # the 3.4 GB worker image, ~25 min

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"
LABEL = "deeplab.io/training"


@pytest.fixture
def smoke_dir():
    base = SMOKE_PREFIX / f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _get(node_kubectl, *args: str) -> dict:
    got = node_kubectl("get", *args, "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else {}


# Cold, the worker image's build and import (setup) take up to 15 minutes on 2 shared cores, the training 8.
@pytest.mark.timeout(2700)
def test_cpu_smoke_sample_runs_two_stages_on_real_pods(operator, node_kubectl, worker_image, smoke_dir):
    job = localise(yaml.safe_load((SAMPLES / "cpu-smoke-data.yaml").read_text()), worker_image, smoke_dir)
    assert node_kubectl("apply", "-f", "-", stdin=json.dumps(job)).returncode == 0
    done = node_kubectl(
        "wait", "--for=condition=Complete", "job/deeplab-smoke-data", "--timeout=600s", timeout=620
    )
    assert done.returncode == 0, node_kubectl("logs", "job/deeplab-smoke-data").stdout
    assert (smoke_dir / "data" / "smoke.mindrecord0").is_file()
    assert (smoke_dir / "checkpoints").stat().st_uid == 1000

    training = localise(yaml.safe_load((SAMPLES / "cpu-smoke.yaml").read_text()), worker_image, smoke_dir)
    training["metadata"]["namespace"] = "default"
    applied = node_kubectl("apply", "-f", "-", stdin=json.dumps(training))
    assert applied.returncode == 0, applied.stderr
    deadline = time.monotonic() + 1500
    status: dict = {}
    init_mounts: list = []  # stage 2's view of stage 1's checkpoint, seen while it runs
    while time.monotonic() < deadline:
        status = _get(node_kubectl, "dlt", "deeplab-smoke").get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        stage2 = _get(node_kubectl, "pods", "-l", f"{LABEL}=deeplab-smoke,deeplab.io/stage=s8-smoke").get(
            "items"
        )
        for pod in stage2 or []:
            init_mounts += [
                m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/init"
            ]
        time.sleep(5)
    events = node_kubectl("get", "events", "--sort-by=.lastTimestamp").stdout[-4000:]
    assert status.get("phase") == "Succeeded", (status, events)
    stages = status["stages"]
    assert [s["name"] for s in stages] == ["s16-smoke", "s8-smoke"]
    for stage in stages:  # rank 0's termination message reached the status
        assert stage["phase"] == "Succeeded" and stage["checkpoint"] and stage["loss"] is not None, stage
    assert stages[1]["miou"] is not None  # the second stage evaluates
    assert stages[0]["checkpoint"] == "/checkpoints/deeplab-smoke/s16-smoke/final.ckpt"
    assert (smoke_dir / "checkpoints" / "deeplab-smoke" / "s16-smoke" / "final.ckpt").is_file()
    assert init_mounts and all(
        m["readOnly"] and m["subPath"] == "deeplab-smoke/s16-smoke" for m in init_mounts
    )
    row = node_kubectl("get", "dlt", "deeplab-smoke").stdout.splitlines()
    assert row[0].split()[:5] == ["NAME", "STAGE", "PHASE", "EPOCH", "LOSS"] and "Succeeded" in row[1]

    deleted = node_kubectl("delete", "dlt", "deeplab-smoke", "--timeout=120s", timeout=150)
    assert deleted.returncode == 0, deleted.stderr
    node_kubectl("delete", "job", "deeplab-smoke-data", "--wait=false")
    assert not _get(node_kubectl, "pods", "-l", f"{LABEL}=deeplab-smoke").get("items")
