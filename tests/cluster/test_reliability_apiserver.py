"""The kube-apiserver crashes and comes back while the controller runs: it reconnects, re-lists and
carries on; a watch from before the restart gets a real 410 and the informer re-lists.

Uses a control plane of its own (started and stopped here, by PID), so the session's plane is never
restarted under other tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from kubelet import SA_USER, Kubelet, apply, result_message, training_manifest, wait_for
from kubernetes import client

from controller import kube
from controller.informer import Informer
from controller.runtime import Controller, Options
from envtest.binaries import ensure_binaries
from envtest.plane import ControlPlane

pytestmark = pytest.mark.cluster
HOSTS = ["172.16.7.1", "172.16.7.1"]


def restart_apiserver(plane: ControlPlane, timeout: float = 60.0) -> float:
    """SIGKILL the plane's kube-apiserver and start it again with the same flags on the same port
    (same certificates, same etcd). Returns the outage in seconds."""
    pid = plane.pids["kube-apiserver"]
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        args = cmdline.read().split(b"\0")[:-1]
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reaped already by subprocess' own bookkeeping
        os.waitpid(pid, 0)  # our child: reap it
    with open(plane.workdir / "kube-apiserver.log", "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    plane.pids["kube-apiserver"] = proc.pid  # plane.stop() stops the new process
    while time.monotonic() - started < timeout:
        try:
            if plane.get("/readyz") == b"ok":
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"kube-apiserver not ready {timeout}s after the restart")


@pytest.fixture
def own_plane(tmp_path_factory, control_plane) -> Iterator[ControlPlane]:
    # `control_plane` only to share its skip/fail policy when binaries are missing
    plane = ControlPlane(tmp_path_factory.mktemp("own-plane"), ensure_binaries())
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


def test_controller_survives_an_apiserver_restart(own_plane, repo_root, caplog):
    plane = own_plane

    def kubectl(*args, stdin=None, as_user=None):
        return _kubectl(plane, *args, stdin=stdin)

    installed = kubectl("apply", "-k", str(repo_root / "manifests"))
    assert installed.returncode == 0, installed.stderr
    assert kubectl("wait", "--for=condition=Established", "crd/deeplabtrainings.deeplab.io").returncode == 0
    namespace = f"t-{uuid.uuid4().hex[:6]}"
    assert kubectl("create", "namespace", namespace).returncode == 0
    admin = kube.api_client(str(plane.kubeconfig))
    kubelet = Kubelet(admin, namespace)
    wait_for(
        "default ServiceAccount", lambda: kubectl("get", "sa", "default", "-n", namespace).returncode == 0
    )

    options = Options(
        log_interval=1.0,
        resync_seconds=5.0,
        watch_timeout=20,
        retry_period=1.0,
        # a renew deadline longer than the outage: the leader keeps its Lease through the restart
        lease_duration=40,
        renew_deadline=30,
        identity="survivor",
        health_addr="127.0.0.1:0",
    )
    controller = Controller(kube.api_client(str(plane.kubeconfig), as_user=SA_USER), options)
    controller.start()
    stop = threading.Event()
    stale = None
    try:
        apply(
            kubectl,
            training_manifest(
                "steady",
                namespace,
                workers=2,
                stages=[{"name": "only", "dataFile": "d.mindrecord0", "epochs": 1}],
            ),
        )
        pods = wait_for("pods", lambda: len(kubelet.pods("steady")) == 2 and kubelet.pods("steady"))
        core = client.CoreV1Api(admin)
        stale = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["metadata"][
            "resourceVersion"
        ]
        kubectl("create", "configmap", "moves-the-revision-on", "-n", namespace)
        lists_before = [informer.lists for informer in controller.informers]

        outage = restart_apiserver(plane)

        # the world moves on: the controller must notice through new watches after re-listing
        kubelet.place(pods, HOSTS)
        wait_for(
            "Running after the restart",
            lambda: kubelet.status("steady").get("phase") == "Running",
            timeout=30,
        )
        assert all(i.lists > before for i, before in zip(controller.informers, lists_before, strict=True)), (
            "every informer re-listed"
        )
        kubelet.terminate(kubelet.pod_name("steady", "only", 1, 1), 1, "RuntimeError: HCCL link down")
        second = wait_for(
            "attempt 2",
            lambda: len(kubelet.pods("steady", attempt="2")) == 2 and kubelet.pods("steady", attempt="2"),
        )
        kubelet.place(second, HOSTS)
        wait_for("table 2", lambda: kubelet.table("steady")[0].get("status") == "completed")
        for pod in second:
            rank0 = pod["metadata"]["labels"]["deeplab.io/rank"] == "0"
            kubelet.terminate(pod["metadata"]["name"], 0, result_message("/c/final.ckpt") if rank0 else "")
        wait_for("Succeeded", lambda: kubelet.status("steady").get("phase") == "Succeeded")
        assert controller.healthy() and not controller.lost_lease.is_set(), "no crash, no lost Lease"
        assert kubelet.status("steady")["stages"][0]["attempts"] == 2

        # a watch resuming from before the restart: the new API server's cache says 410 Gone
        seen: list[str] = []
        calls = {"lists": 0}

        def list_pods(**kwargs):
            response = core.list_namespaced_pod(namespace, **kwargs)
            if not kwargs.get("watch"):
                calls["lists"] += 1
                if calls["lists"] == 1:  # pretend this list is from before the restart
                    body = json.loads(response.data)
                    body["metadata"]["resourceVersion"] = stale
                    return SimpleNamespace(data=json.dumps(body).encode())
            return response

        informer = Informer("stale", list_pods, lambda kind, obj: seen.append(kind), stop, watch_timeout=10)
        informer.start()
        with caplog.at_level(logging.INFO, logger="controller.informer"):
            wait_for("a re-list after 410", lambda: informer.lists >= 2, timeout=15)
        assert "stale: resourceVersion expired (410); re-listing" in caplog.text, (
            "a real 410, not another error"
        )
        kubectl("run", "late", "--image=x", "-n", namespace, "--restart=Never")
        wait_for("events flow again", lambda: "ADDED" in seen, timeout=15)
        print(f"\napiserver outage {outage:.1f}s; informer lists {[i.lists for i in controller.informers]}")
    finally:
        stop.set()
        controller.stop()
