"""The operator installed as an admin would, on the real node: its own image, its own RBAC, leader-elected.

`kubectl apply -k overlays/local-node` is `manifests/` with the image set by kustomize `images:` to the
locally built controller image; the test waits for the Deployment to become Available, finds the Lease
held by one of its pods, and sees the running controller reconcile a DeepLabTraining (pods created under
its ServiceAccount, status written) and its deletion cascade to every child.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "deeplab-system"
LABEL = "deeplab.io/training"


def _until(what: str, probe, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout}s")


def _json(node_kubectl, *args: str) -> dict:
    got = node_kubectl("get", *args, "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else {}


def test_deployment_available_from_its_image_and_a_leader_elected(operator, node_kubectl):
    waited = node_kubectl(
        "wait", "-n", NAMESPACE, "--for=condition=Available", "deployment/deeplab-operator", "--timeout=240s",
        timeout=260,
    )  # fmt: skip
    pods = _json(node_kubectl, "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=deeplab-operator")
    assert waited.returncode == 0, (waited.stderr, [p["status"] for p in pods.get("items", [])])
    images = {c["image"] for p in pods["items"] for c in p["spec"]["containers"]}
    assert images == {"localhost/deeplab-controller:dev"}
    names = {p["metadata"]["name"] for p in pods["items"]}
    holder = _until(
        "a Lease holder",
        lambda: (
            _json(node_kubectl, "lease", "-n", NAMESPACE, "deeplab-operator")
            .get("spec", {})
            .get("holderIdentity")
        ),
    )
    assert holder in names


def _training(image: str) -> dict:
    """The cpu-smoke sample shrunk to fit beside the operator: emptyDir volumes, small requests."""
    training = yaml.safe_load((REPO / "manifests" / "samples" / "cpu-smoke.yaml").read_text())
    training["metadata"] = {"name": "reconciled", "namespace": "default"}
    spec = training["spec"]
    spec.update(image=image, imagePullPolicy="Never", stages=spec["stages"][:1])
    spec["volumes"] = {"data": {"emptyDir": {}}, "checkpoints": {"emptyDir": {}}}
    spec["template"]["resources"] = {"requests": {"cpu": "10m", "memory": "64Mi"}}
    return training


def test_the_installed_controller_reconciles_and_deletion_cascades(operator, node_kubectl, node_images):
    available = ("wait", "-n", NAMESPACE, "--for=condition=Available", "deployment/deeplab-operator")
    _until("the Deployment Available", lambda: node_kubectl(*available, "--timeout=5s").returncode == 0)
    # The controller's image as the workers': what is checked here is the controller, not a training.
    applied = node_kubectl("apply", "-f", "-", stdin=json.dumps(_training(node_images["controller"])))
    assert applied.returncode == 0, applied.stderr
    status = _until(
        "a status from the controller", lambda: _json(node_kubectl, "dlt", "reconciled").get("status")
    )
    assert status.get("phase"), status
    pods = _until(
        "worker pods", lambda: _json(node_kubectl, "pods", "-l", f"{LABEL}=reconciled").get("items")
    )
    assert {p["spec"]["nodeName"] for p in pods} == {"deeplab-node"}
    deleted = node_kubectl("delete", "dlt", "reconciled", "--timeout=120s", timeout=150)
    assert deleted.returncode == 0, deleted.stderr
    _until(
        "every child gone", lambda: not _json(node_kubectl, "pods", "-l", f"{LABEL}=reconciled").get("items")
    )
