"""Controller fixtures: the operator installed once, an in-process controller, a namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubelet import Kubelet, running_controller

from controller import kube
from controller.runtime import Controller


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
    with running_controller(control_plane.kubeconfig, "in-process") as instance:
        yield instance
