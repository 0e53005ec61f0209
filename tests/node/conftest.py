"""The real one-node cluster (envtest/node.py) and the project's images in its containerd, once per session.

Like the control plane, a node that cannot start here (not root, packages missing) fails the session in CI
and is skipped elsewhere, with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from planes import show, unavailable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))  # the kubelet.py helpers
pytest.register_assert_rewrite("nodehelp")
from controller import kube  # noqa: E402
from envtest import images  # noqa: E402
from envtest.binaries import BinariesUnavailable  # noqa: E402
from envtest.demo import SMOKE_PREFIX, localise  # noqa: E402
from envtest.node import leftover_mounts, new_node, socket  # noqa: E402
from envtest.plane import ControlPlane, ControlPlaneError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def node(request, tmp_path_factory) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, controller manager, containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS."""
    started = time.monotonic()
    try:
        plane = new_node(tmp_path_factory.mktemp("node"))
        plane.start(timeout=180)
    except (BinariesUnavailable, ControlPlaneError) as error:
        unavailable(f"the real node could not be started: {error}")
    show(
        request, f"node: {plane.server} Ready in {time.monotonic() - started:.0f}s (logs in {plane.workdir})"
    )
    try:
        yield plane
    finally:
        plane.stop()
        assert leftover_mounts(plane) == [], "the node left mounts behind"


def _images(request, node, tmp_path_factory, names: tuple[str, ...]) -> dict[str, str]:
    started = time.monotonic()
    log_path = tmp_path_factory.mktemp("images") / "images.log"
    with open(log_path, "w") as log:
        try:
            tags = images.build_all(log, names)
            images.import_all(socket(node), tags, log)
        except images.ImageError as error:
            unavailable(f"the images could not be built: {error}")
    show(request, f"images: {sorted(tags.values())} ready in {time.monotonic() - started:.0f}s ({log_path})")
    return tags


@pytest.fixture(scope="session")
def node_images(request, node, tmp_path_factory) -> dict[str, str]:
    """The pause and controller images, built (or found by content hash) and imported into the node."""
    return _images(request, node, tmp_path_factory, ("controller",))


@pytest.fixture(scope="session")
def worker_image(request, node, tmp_path_factory) -> str:
    """The CPU worker image (3.4 GB: minutes to build cold, about a minute to import)."""
    return _images(request, node, tmp_path_factory, ("worker-cpu",))["worker-cpu"]


@pytest.fixture(scope="session")
def node_kubectl(node):
    """The release's kubectl against the node; returns CompletedProcess (never raises)."""

    def run(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(node.kubectl), "--kubeconfig", str(node.kubeconfig), *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def operator(node_kubectl, node_images):
    """The operator as an admin installs it: `kubectl apply -k overlays/local-node` (its image, its RBAC)."""
    overlay = str(REPO / "overlays" / "local-node")
    applied = node_kubectl("apply", "-k", overlay)
    assert applied.returncode == 0, applied.stderr
    available = ("wait", "-n", "deeplab-system", "--for=condition=Available", "deployment/deeplab-operator")
    waited = node_kubectl(*available, "--timeout=240s", timeout=260)
    try:
        assert waited.returncode == 0, why_not_available(node_kubectl, waited.stderr)
        yield overlay
    finally:
        node_kubectl("delete", "-k", overlay, "--wait=false")


def why_not_available(node_kubectl, error: str) -> str:
    """The wait's error with what the pods of deeplab-system say: their status, events and last logs."""
    shown = [error]
    for args in (
        ("get", "pods", "-n", "deeplab-system", "-o", "wide"),
        ("describe", "pods", "-n", "deeplab-system"),
        ("logs", "-n", "deeplab-system", "-l", "app.kubernetes.io/name=deeplab-operator", "--tail=30"),
    ):
        result = node_kubectl(*args)
        shown.append(f"$ kubectl {' '.join(args)}\n{result.stdout[-3000:]}{result.stderr[-500:]}")
    return "\n".join(shown)


@pytest.fixture(scope="session")
def node_admin(node):
    """An admin API client of the node (watches, patches): the test's own hands."""
    return kube.api_client(str(node.kubeconfig))


@pytest.fixture(scope="session")
def smoke_data(node_kubectl, worker_image) -> Iterator[Path]:
    """manifests/samples/cpu-smoke-data.yaml run once, as a user would, into a directory of the session's
    own under the allowed hostPath prefix: ``data/`` (8 synthetic 65 px images as MindRecord, a 4-image
    validation list) and ``checkpoints/`` owned by the worker's uid 1000. The trainings of the tests put
    their checkpoints under ``checkpoints/<training>/``, so one data set serves them all."""
    base = SMOKE_PREFIX / f"session-{uuid.uuid4().hex[:8]}"
    sample = yaml.safe_load((REPO / "manifests" / "samples" / "cpu-smoke-data.yaml").read_text())
    job = localise(sample, worker_image, base)
    job["metadata"]["name"] = f"smoke-data-{base.name}"  # never the name the cpu-smoke test applies
    try:
        applied = node_kubectl("apply", "-f", "-", stdin=json.dumps(job))
        assert applied.returncode == 0, applied.stderr
        name = f"job/{job['metadata']['name']}"
        done = node_kubectl("wait", "--for=condition=Complete", name, "--timeout=600s", timeout=620)
        assert done.returncode == 0, node_kubectl("logs", name).stdout[-3000:]
        assert (base / "data" / "smoke.mindrecord0").is_file()
        node_kubectl("delete", name, "--wait=false")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
