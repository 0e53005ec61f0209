"""Shared fixtures. The control plane is real: etcd + kube-apiserver (+ GC/SA controllers)."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from planes import show, unavailable

from envtest.binaries import BinariesUnavailable, ensure_binaries
from envtest.plane import ControlPlane, ControlPlaneError

# Every test belongs to exactly one group (README "Tests"): what it really runs against.
GROUPS = {
    "node": "the real one-node cluster (kubelet, containerd, images)",
    "cluster": "the real API server (etcd + kube-apiserver), the controller under its RBAC",
    "mindspore": "real MindSpore on CPU",
    "unit": "pure logic: no server, no MindSpore",
}
SERVER_FIXTURES = {"control_plane"}


def pytest_collection_modifyitems(config, items):
    """Give unmarked tests the `unit` group, refuse a test in two groups, and refuse a `unit` test that
    starts the control plane: the group counts `make test` prints must be true."""
    problems = []
    for item in items:
        groups = [name for name in GROUPS if item.get_closest_marker(name)]
        if not groups:
            item.add_marker(pytest.mark.unit)
            groups = ["unit"]
        if len(groups) > 1:
            problems.append(f"{item.nodeid}: in more than one group {groups}")
        if groups == ["unit"] and SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            problems.append(f"{item.nodeid}: uses the control plane but is not marked cluster or node")
        item.user_properties.append(("group", groups[0]))
    if problems:
        raise pytest.UsageError("test groups: " + "; ".join(problems))


def pytest_terminal_summary(terminalreporter):
    """One line per group: how many of its tests passed, failed or were skipped."""
    counts: dict[str, Counter] = {name: Counter() for name in GROUPS}
    for outcome in ("passed", "failed", "skipped", "error", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(outcome, []):
            group = dict(getattr(report, "user_properties", ())).get("group")
            if group and (report.when == "call" or outcome in ("skipped", "error")):
                counts[group][outcome] += 1
    terminalreporter.section("tests by group")
    for name, description in GROUPS.items():
        found = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts[name].items())) or "none ran"
        terminalreporter.write_line(f"{name:9} {found}  ({description})")


@pytest.fixture(scope="session")
def control_plane(request, tmp_path_factory) -> Iterator[ControlPlane]:
    """One control plane per test session, stopped (by PID) even when tests fail."""
    try:
        plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), ensure_binaries())
        plane.start()
    except (BinariesUnavailable, ControlPlaneError) as error:
        message = f"the Kubernetes control plane could not be started: {error}"
        unavailable(message)
    # Shown in the test log as proof that a real API server answered.
    show(request, f"control plane: kube-apiserver {plane.version()} at {plane.server}")
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
