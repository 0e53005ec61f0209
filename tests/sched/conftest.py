"""The scheduling plane (envtest/sched.py) once per session: kube-scheduler binds, kwok runs simulated
Atlas 800 nodes, envtest/device_plugin.py allocates NPUs and Kueue admits pod groups.

Each test gets its own namespace and its own pool of nodes (labelled ``deeplab.io/pool=<namespace>``;
its trainings select the pool), so tests never compete for NPUs. Like the control plane, a plane that
cannot start here fails the session in CI and is skipped elsewhere, with the reason.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from controller import kube
from controller.runtime import Controller
from envtest import sched
from envtest.binaries import BinariesUnavailable
from envtest.device_plugin import DevicePlugin
from envtest.plane import ControlPlane, ControlPlaneError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))  # the kubelet.py helpers
from kubelet import running_controller
from planes import show, unavailable
from schedhelp import POOL_LABEL

REPO = Path(__file__).resolve().parents[2]
_node_index = itertools.count()


@pytest.fixture(scope="session")
def sched_plane(request, tmp_path_factory) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, controller manager, kube-scheduler, kwok and Kueue, stopped by PID."""
    started = time.monotonic()
    try:
        plane = sched.new_sched_plane(tmp_path_factory.mktemp("sched-plane"), kueue=True)
        plane.start(timeout=180)
    except (BinariesUnavailable, ControlPlaneError) as error:
        unavailable(f"the scheduling plane could not be started: {error}")
    show(request, f"sched plane: {plane.server} up in {time.monotonic() - started:.0f}s (pids {plane.pids})")
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def sched_kubectl(sched_plane) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        cmd = [str(sched_plane.kubectl), "--kubeconfig", str(sched_plane.kubeconfig), *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)

    return run


@pytest.fixture(scope="session")
def sched_admin(sched_plane):
    return kube.api_client(str(sched_plane.kubeconfig))


@pytest.fixture(scope="session")
def sched_operator(sched_kubectl):
    """The operator's namespace, CRD and RBAC (`kubectl apply -k manifests/`); no kubelet runs its
    Deployment here: the controller runs in the test process (``sched_controller``)."""
    applied = sched_kubectl("apply", "-k", str(REPO / "manifests"))
    assert applied.returncode == 0, applied.stderr
    waited = sched_kubectl("wait", "--for=condition=Established", "crd/deeplabtrainings.deeplab.io")
    assert waited.returncode == 0, waited.stderr
    return True


@pytest.fixture(scope="session")
def device_plugin(sched_admin) -> Iterator[DevicePlugin]:
    plugin = DevicePlugin(sched_admin)
    plugin.start()
    try:
        yield plugin
    finally:
        plugin.stop()


@pytest.fixture(scope="module")
def sched_controller(sched_plane, sched_operator, device_plugin) -> Iterator[Controller]:
    """The controller in a thread under its ServiceAccount's RBAC, as in tests/cluster/conftest.py."""
    with running_controller(sched_plane.kubeconfig, "sched", resync_seconds=5.0) as instance:
        yield instance


@pytest.fixture
def sched_ns(sched_kubectl, sched_operator) -> Iterator[str]:
    name = f"s-{uuid.uuid4().hex[:8]}"
    created = sched_kubectl("create", "namespace", name)
    assert created.returncode == 0, created.stderr
    yield name
    sched_kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def pool(sched_admin, sched_ns) -> Iterator[Callable[[int], list[sched.AtlasNode]]]:
    """``pool(n)`` adds n fresh Atlas nodes labelled for this test; all are deleted afterwards."""
    core = client.CoreV1Api(sched_admin)
    made: list[sched.AtlasNode] = []

    def add(count: int) -> list[sched.AtlasNode]:
        nodes = [sched.AtlasNode(next(_node_index)) for _ in range(count)]
        made.extend(nodes)
        sched.add_nodes(core, nodes, extra_labels={POOL_LABEL: sched_ns})
        for node in nodes:
            _wait_ready(core, node.name)
        return nodes

    yield add
    for node in made:
        with contextlib.suppress(client.ApiException):
            core.delete_node(node.name, _preload_content=False)


def _wait_ready(core, name: str, timeout: float = 30.0) -> None:
    """kwok's node-initialize stage marks the node Ready; only then does the scheduler use it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = json.loads(core.read_node(name, _preload_content=False).data)
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        addresses = {a["type"] for a in node["status"].get("addresses") or ()}
        npus = int((node["status"].get("allocatable") or {}).get(sched.NPU, 0))
        if ready and npus == 8 and "InternalIP" in addresses and not node["spec"].get("taints"):
            return
        time.sleep(0.2)
    raise AssertionError(f"node {name} not Ready with 8 NPUs within {timeout}s: {node.get('status')}")
