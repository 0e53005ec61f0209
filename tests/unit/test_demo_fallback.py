"""`make demo` without a node (not root, binaries or images that cannot be built): one line says why and
the one-device demo runs instead, its exit code passed on (envtest/demo.py main)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

import pytest

from envtest import demo, images
from envtest.binaries import BinariesUnavailable
from envtest.node import NodeError


@pytest.mark.parametrize(
    "error",
    [
        NodeError("the real node needs root (containerd, kubelet, iptables, network setup)"),
        BinariesUnavailable("no coredns: build it with 'make node-dns'\nsecond line"),
        images.ImageError("podman build failed; see images.log"),
    ],
)
def test_no_node_runs_the_one_device_demo_after_one_line(monkeypatch, capsys, error):
    @contextmanager
    def no_node(workdir, keep):
        raise error
        yield

    ran = []
    monkeypatch.setattr(demo, "local_node", no_node)
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: ran.append(cmd) or subprocess.CompletedProcess(cmd, 3)
    )
    assert demo.main([]) == 3
    assert ran == [[sys.executable, "-m", "job", "demo"]]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"[demo] no local node here ({str(error).splitlines()[0]}); running the one-device demo instead: "
        "python -m job demo"
    ]


def test_a_failed_training_is_exit_1_with_its_reason_and_no_fallback(monkeypatch, capsys, tmp_path):
    @contextmanager
    def node(workdir, keep):
        yield object()

    def failing_run(plane, base, output):
        raise demo.DemoFailed("training deeplab-smoke: Failed after 80s: BackoffLimitExceeded")

    monkeypatch.setattr(demo, "local_node", node)
    monkeypatch.setattr(demo, "run", failing_run)
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: pytest.fail("the fallback ran"))
    assert demo.main(["--output", str(tmp_path)]) == 1
    assert (
        "[demo] failed: training deeplab-smoke: Failed after 80s: BackoffLimitExceeded"
        in capsys.readouterr().err
    )
