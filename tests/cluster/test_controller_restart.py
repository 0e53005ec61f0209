"""Two controller processes (the Deployment's two replicas): kill the leader mid-stage, the standby
takes the Lease and carries on with the same pods; a graceful stop hands the Lease over at once."""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack

import pytest
from kubelet import (
    SA_USER,
    ControllerProcess,
    apply,
    lease_holder,
    result_message,
    training_manifest,
    wait_for,
)

from envtest import audit

pytestmark = pytest.mark.cluster

LEASE = "restart-test"  # this test's own Lease
FAST_LOGS = ("--log-interval", "1")  # read rank 0's log every second (the last flag wins)
HOSTS = ["172.16.1.1", "172.16.1.1", "172.16.1.2", "172.16.1.2"]


def test_leader_killed_mid_stage_standby_continues_without_duplicates(
    control_plane, operator_installed, admin, kubelet, kubectl, tmp_path
):
    with ExitStack() as stack:
        replicas = {}
        for name in ("ctl-a", "ctl-b"):
            replicas[name] = ControllerProcess(
                name, control_plane.kubeconfig, tmp_path, SA_USER, *FAST_LOGS, lease=LEASE
            )
            stack.callback(replicas[name].stop)
        leader = wait_for(
            "a leader",
            lambda: lease_holder(admin, name=LEASE) in replicas and lease_holder(admin, name=LEASE),
            timeout=20,
        )
        standby = next(name for name in replicas if name != leader)
        wait_for("the standby is ready too", lambda: replicas[standby].get("/readyz") == "ok")
        assert "deeplab_leader 0.0" in replicas[standby].get("/metrics")

        apply(kubectl, training_manifest("resilient", kubelet.ns))
        pods = wait_for(
            "attempt 1 pods", lambda: len(kubelet.pods("resilient")) == 4 and kubelet.pods("resilient")
        )
        kubelet.place(pods, HOSTS)
        wait_for("Running", lambda: kubelet.status("resilient").get("phase") == "Running")
        uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in kubelet.pods("resilient")}
        table_version = kubelet.configmap("resilient")["metadata"]["resourceVersion"]

        replicas[leader].signal(signal.SIGKILL)  # no goodbye: the Lease has to expire
        replicas[leader].proc.wait(5)
        wait_for("the standby takes over", lambda: lease_holder(admin, name=LEASE) == standby, timeout=15)
        wait_for(
            "the new leader has reconciled", lambda: 'result="success"' in replicas[standby].get("/metrics")
        )
        time.sleep(1.5)  # a few more reconciles (log_interval requeues) of the running training
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in kubelet.pods("resilient")} == uids
        assert kubelet.configmap("resilient")["metadata"]["resourceVersion"] == table_version
        status = kubelet.status("resilient")
        assert status["phase"] == "Running" and status["attempt"] == 1

        replicas["ctl-c"] = ControllerProcess(
            "ctl-c", control_plane.kubeconfig, tmp_path, SA_USER, *FAST_LOGS, lease=LEASE
        )  # the Deployment's restart
        stack.callback(replicas["ctl-c"].stop)
        for pod in kubelet.pods("resilient"):
            rank0 = pod["metadata"]["labels"]["deeplab.io/rank"] == "0"
            message = result_message("/checkpoints/resilient/s16/final.ckpt") if rank0 else ""
            kubelet.terminate(pod["metadata"]["name"], 0, message)
        wait_for("stage 2", lambda: kubelet.status("resilient").get("stage") == "2/2 s8")
        second = wait_for("stage 2 pods", lambda: len(kubelet.pods("resilient", stage="s8")) == 4)
        assert second and len(kubelet.pods("resilient")) <= 8

        # graceful stop: SIGTERM, exit 0, Lease released (holderIdentity emptied, as client-go's
        # ReleaseOnCancel does) so ctl-c leads without waiting for expiry: read in the audit log
        replicas[standby].signal(signal.SIGTERM)
        assert replicas[standby].proc.wait(15) == 0
        found = audit.events(control_plane.audit_log)
        written = audit.lease_writes(found, f"deeplab-operator/{standby}")
        assert written and written[-1][1] is None, written[-3:]
        wait_for("ctl-c takes over", lambda: lease_holder(admin, name=LEASE) == "ctl-c", timeout=10)
        second = kubelet.pods("resilient", stage="s8")
        kubelet.place(second, HOSTS)
        for pod in second:
            rank0 = pod["metadata"]["labels"]["deeplab.io/rank"] == "0"
            kubelet.terminate(
                pod["metadata"]["name"], 0, result_message("/c/final.ckpt", 0.8) if rank0 else ""
            )
        wait_for("Succeeded", lambda: kubelet.status("resilient").get("phase") == "Succeeded")
        # two leader changes, yet each stage ran exactly one attempt and no pod was ever doubled
        assert [stage["attempts"] for stage in kubelet.status("resilient")["stages"]] == [1, 1]
        assert all(p["metadata"]["labels"]["deeplab.io/attempt"] == "1" for p in kubelet.pods("resilient"))
