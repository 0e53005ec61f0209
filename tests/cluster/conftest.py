"""Controller fixtures: the operator installed once, an in-process controller, a namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubelet import SA_USER, Kubelet

from controller import kube
from controller.runtime import Controller, Options


@pytest.fixture(scope="session")
def operator_installed(kubectl, repo_root):
    """`kubectl apply -k manifests/`: namespace, CRD, RBAC, Deployment (no kubelet: it never runs)."""
    applied = kubectl("apply", "-k", str(repo_root / "manifests"))
    assert applied.returncode == 0, applied.stderr
    waited = kubectl(
        "wait", "--for=condition=Established", "crd/deeplabtrainings.deeplab.io", "--timeout=30s"
    )
    assert waited.returncode == 0, waited.stderr
    return True


@pytest.fixture(scope="session")
def admin(control_plane):
    """An admin client: the test's own hands (playing kubelet, reading results)."""
    return kube.api_client(str(control_plane.kubeconfig))


@pytest.fixture
def namespace(kubectl, operator_installed) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    created = kubectl("create", "namespace", name)
    assert created.returncode == 0, created.stderr
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def kubelet(admin, namespace) -> Kubelet:
    return Kubelet(admin, namespace)


@pytest.fixture(scope="module")
def controller(control_plane, operator_installed) -> Iterator[Controller]:
    """The controller in a thread, under its ServiceAccount's RBAC (impersonated), leader-elected."""
    options = Options(
        log_interval=1.0,
        resync_seconds=10.0,
        watch_timeout=20,
        # client-go's defaults: tight timings risk a spurious lost Lease on 2 busy cores
        lease_duration=15,
        renew_deadline=10,
        retry_period=1.0,
        identity=f"in-process-{uuid.uuid4().hex[:6]}",
        health_addr="127.0.0.1:0",
    )
    instance = Controller(kube.api_client(str(control_plane.kubeconfig), as_user=SA_USER), options)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
