"""A leader that is paused past its Lease (SIGSTOP: a long GC, a frozen VM, a cut network) while
another replica takes over must not write when it wakes up. Counted in the API server's audit log,
by the replica's User-Agent, never by the replica's own metrics."""

from __future__ import annotations

import signal
import uuid
from contextlib import ExitStack
from datetime import datetime, timezone

import pytest
from kubelet import SA_USER, TWO_HOSTS, ControllerProcess, apply, lease_holder, one_stage_manifest, wait_for

from envtest import audit

pytestmark = pytest.mark.cluster


def test_a_paused_leader_that_lost_its_lease_writes_nothing_when_it_wakes(
    control_plane, operator_installed, admin, kubelet, kubectl, tmp_path
):
    lease = f"lost-{uuid.uuid4().hex[:6]}"  # its own Lease: no other controller of the suite competes
    with ExitStack() as stack:
        first = ControllerProcess("lost-a", control_plane.kubeconfig, tmp_path, SA_USER, lease=lease)
        stack.callback(first.stop)
        wait_for("lost-a leads", lambda: lease_holder(admin, name=lease) == "lost-a", timeout=30)
        second = ControllerProcess("lost-b", control_plane.kubeconfig, tmp_path, SA_USER, lease=lease)
        stack.callback(second.stop)
        wait_for("lost-b is a ready standby", lambda: second.get("/readyz") == "ok", timeout=30)

        apply(kubectl, one_stage_manifest("paused", kubelet.ns))
        pods = wait_for(
            "lost-a creates the pods", lambda: len(kubelet.pods("paused")) == 2 and kubelet.pods("paused")
        )

        first.signal(signal.SIGSTOP)
        stack.callback(first.signal, signal.SIGCONT)  # never leave a stopped process behind
        wait_for("lost-b takes over", lambda: lease_holder(admin, name=lease) == "lost-b", timeout=30)
        kubelet.place(pods, list(TWO_HOSTS))  # work for the new leader: the complete rank table
        wait_for("lost-b writes the table", lambda: kubelet.table("paused")[0].get("status") == "completed")

        woke = datetime.now(timezone.utc)
        first.signal(signal.SIGCONT)
        kubelet.terminate(pods[1]["metadata"]["name"], 1, "RuntimeError: a failure to react to")
        wait_for("lost-b starts attempt 2", lambda: kubelet.status("paused").get("attempt") == 2)
        assert first.proc.wait(30) != 0, "a replica that lost its Lease exits (the Deployment restarts it)"

        found = audit.events(control_plane.audit_log)
        since_waking = audit.other_writes(found, "deeplab-operator/lost-a", since=woke)
        assert since_waking == [], audit.describe(since_waking)
        leases = [
            (when, holder)
            for when, holder in audit.lease_writes(found, "deeplab-operator/lost-a")
            if when >= woke
        ]
        assert all(holder != "lost-a" for _, holder in leases), leases  # no renewal of a lost Lease
        # and the new leader did the work in the meantime
        assert audit.other_writes(found, "deeplab-operator/lost-b", since=woke), "lost-b acted"
