"""Shared fixtures. The control plane is real: etcd + kube-apiserver (+ GC/SA controllers)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from envtest.binaries import BinariesUnavailable, ensure_binaries
from envtest.plane import ControlPlane, ControlPlaneError

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def control_plane(request, tmp_path_factory) -> Iterator[ControlPlane]:
    """One control plane per test session, stopped (by PID) even when tests fail."""
    try:
        plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), ensure_binaries())
        plane.start()
    except (BinariesUnavailable, ControlPlaneError) as error:
        message = f"the Kubernetes control plane could not be started: {error}"
        if IN_CI:
            pytest.fail(message, pytrace=False)  # in CI a missing plane is a failure, never a skip
        pytest.skip(message)
    # Shown in the test log (outside capture) as proof that a real API server answered.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\ncontrol plane: kube-apiserver {plane.version()} at {plane.server}")
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane):
    """Run the release's kubectl against the plane; returns CompletedProcess (never raises)."""

    def run(*args: str, stdin: str | None = None, as_user: str | None = None) -> subprocess.CompletedProcess:
        cmd = [str(control_plane.kubectl), "--kubeconfig", str(control_plane.kubeconfig)]
        if as_user:
            cmd += ["--as", as_user]
        return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
