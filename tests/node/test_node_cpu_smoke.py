"""`make demo`'s whole-system run (`python -m envtest demo`) on the session's node: manifests/samples/
cpu-smoke-data.yaml, then cpu-smoke.yaml's 2 stages x 2 CPU workers through MindSpore's dynamic cluster (a
scheduler pod, workers reaching it through the training's ClusterIP Service by its DNS name).

The demo applies the samples as a user would, with only what differs on this machine changed (the locally
built worker image, a directory of the test's own under the allowed hostPath prefix). It finds the node
running and leaves it so; the test watches the pods while it trains, then checks what it printed and left.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from nodehelp import get_json

from envtest.demo import NAMESPACE, SMOKE_PREFIX, TRAINING

pytestmark = [pytest.mark.node, pytest.mark.full_node]  # the 3.4 GB worker image (~14 min cold)

REPO = Path(__file__).resolve().parents[2]
LABEL = "deeplab.io/training"


@pytest.fixture
def smoke_dir():
    base = SMOKE_PREFIX / f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _get(node_kubectl, *args: str) -> dict:
    return get_json(node_kubectl, "-n", NAMESPACE, *args)


def _init_mounts(node_kubectl) -> list[dict]:
    """Stage 2's view of stage 1's checkpoint, in the pods that exist now."""
    pods = _get(node_kubectl, "pods", "-l", f"{LABEL}={TRAINING},deeplab.io/stage=s8-smoke").get("items")
    mounts = [m for pod in pods or [] for m in pod["spec"]["containers"][0]["volumeMounts"]]
    return [m for m in mounts if m["mountPath"] == "/init"]


# Cold, the worker image's build and import take up to 15 minutes on 2 shared cores, the training 8.
@pytest.mark.timeout(2700)
def test_make_demo_trains_the_cpu_smoke_sample(node, operator, node_kubectl, smoke_dir, tmp_path):
    output = tmp_path / "demo"
    command = [
        sys.executable, "-m", "envtest", "demo",
        "--dir", str(node.workdir), "--base", str(smoke_dir), "--output", str(output),
    ]  # fmt: skip
    init_mounts: list[dict] = []
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        demo = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO)
        while demo.poll() is None:
            init_mounts += _init_mounts(node_kubectl)
            time.sleep(5)
    printed, said = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert demo.returncode == 0, said[-4000:]
    assert "using the node already running" in said and "node stopped" not in said

    # what the user saw: `kubectl get dlt -w` rows as it trained (STAGE is "1/2 s16-smoke": two words),
    # stage 1's epochs counting up from the real log, then the final row with the mIoU of stage 2
    rows = [line.split() for line in printed.splitlines() if line.startswith(TRAINING)]
    assert printed.splitlines()[0].split()[:6] == ["NAME", "STAGE", "PHASE", "EPOCH", "LOSS", "MIOU"]
    epochs = [row[4] for row in rows if row[1:4] == ["1/2", "s16-smoke", "Running"] and len(row) > 5]
    assert len(set(epochs)) >= 2 and all(re.fullmatch(r"[1-4]/4", epoch) for epoch in epochs), printed
    final = rows[-1]
    assert final[1:4] == ["2/2", "s8-smoke", "Succeeded"] and 0.0 <= float(final[6]) <= 1.0, printed

    status = _get(node_kubectl, "dlt", TRAINING)["status"]
    stages = status["stages"]
    assert [s["name"] for s in stages] == ["s16-smoke", "s8-smoke"]
    for stage in stages:  # rank 0's termination message reached the status
        assert stage["phase"] == "Succeeded" and stage["checkpoint"] and stage["loss"] is not None, stage
    assert stages[1]["miou"] is not None  # the second stage evaluates
    assert stages[0]["checkpoint"] == f"/checkpoints/{TRAINING}/s16-smoke/final.ckpt"
    final_ckpt = smoke_dir / "checkpoints" / TRAINING / "s8-smoke" / "final.ckpt"
    assert final_ckpt.is_file() and f"checkpoint {final_ckpt}" in said
    assert (smoke_dir / "checkpoints").stat().st_uid == 1000  # the data Job handed it to the worker's uid
    assert init_mounts and all(m["readOnly"] and m["subPath"] == f"{TRAINING}/s16-smoke" for m in init_mounts)
    masks = sorted(p.name for p in (output / "predictions").glob("*_mask.png"))
    val_images = (smoke_dir / "data" / "smoke_val_lst.txt").read_text().split()[::2]
    assert masks == sorted(f"{Path(image).stem}_mask.png" for image in val_images)

    deleted = node_kubectl("delete", "-n", NAMESPACE, "dlt", TRAINING, "--timeout=120s", timeout=150)
    assert deleted.returncode == 0, deleted.stderr
    node_kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    assert not _get(node_kubectl, "pods", "-l", f"{LABEL}={TRAINING}").get("items")
