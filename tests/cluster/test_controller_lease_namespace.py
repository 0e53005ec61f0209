"""`python -m controller --leader-elect` against a cluster without the Lease's namespace: one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from controller.__main__ import EXIT_CONFIG

pytestmark = pytest.mark.cluster


def test_missing_lease_namespace_exits_2_with_one_line(control_plane):
    cmd = [
        sys.executable, "-m", "controller", "--kubeconfig", str(control_plane.kubeconfig), "--leader-elect",
        "--lease-namespace", "no-such-namespace", "--health-addr", "0", "--retry-period", "0.2",
    ]  # fmt: skip
    # process start included: up to 39 s at load average 15 (test_controller_restart.py)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == EXIT_CONFIG, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("python -m controller: error:")]
    assert len(errors) == 1 and "namespace 'no-such-namespace'" in errors[0]
    assert "Traceback" not in result.stderr
    assert result.stderr.count("does not exist") <= 2  # the log line and the exit line, no retry loop
