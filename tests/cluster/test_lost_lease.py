"""A leader that is paused past its Lease (SIGSTOP: a long GC, a frozen VM, a cut network) while
another replica takes over must not write when it wakes up. Counted in the API server's audit log,
by the replica's User-Agent, never by the replica's own metrics.

The controller is level-triggered and reads live state, so a woken replica tries to write only if the
state it reads still needs a write. If the new leader has already done the work, the woken replica
plans nothing and the test proves nothing: an earlier version of this test passed with the write fence
disabled. So here the work arrives while *both* replicas are paused (the kubelet places the pods: the
rank table must be completed, the status must say so). The old leader wakes first, with that work due
in its queue (its progress requeue fell due during the pause): it reads, plans writes at once, and only
the fence (``_before_write`` in controller/runtime.py) keeps them from the server. With the fence
disabled this test fails: the audit log shows lost-a's status and ConfigMap writes after it woke.
"""

from __future__ import annotations

import signal
import uuid
from contextlib import ExitStack
from datetime import datetime, timezone

import pytest
from kubelet import SA_USER, TWO_HOSTS, ControllerProcess, apply, lease_holder, one_stage_manifest, wait_for

from controller.__main__ import EXIT_LOST_LEASE
from envtest import audit

pytestmark = pytest.mark.cluster
FENCED = "no longer holds the Lease"  # NotLeading's message, logged when a write is refused
AGENT = "deeplab-operator/lost-a"
STARTUP = 90  # `python -m controller` from spawn to ready: up to 39 s at load average 15 on the 2 cores


def table_status(kubelet) -> str:
    return kubelet.table("paused")[0].get("status", "")


def test_a_paused_leader_that_lost_its_lease_writes_nothing_when_it_wakes(
    control_plane, operator_installed, admin, kubelet, kubectl, tmp_path
):
    lease = f"lost-{uuid.uuid4().hex[:6]}"  # its own Lease: no other controller of the suite competes
    scoped = ("--namespace", kubelet.ns)  # this test's training only: nothing else in flight at SIGSTOP
    with ExitStack() as stack:

        def replica(identity: str) -> ControllerProcess:
            kubeconfig = control_plane.kubeconfig
            started = ControllerProcess(identity, kubeconfig, tmp_path, SA_USER, *scoped, lease=lease)
            stack.callback(started.stop)
            return started

        first = replica("lost-a")
        wait_for("lost-a leads", lambda: lease_holder(admin, name=lease) == "lost-a", timeout=STARTUP)
        second = replica("lost-b")
        wait_for("lost-b is a ready standby", lambda: second.get("/readyz") == "ok", timeout=STARTUP)

        apply(kubectl, one_stage_manifest("paused", kubelet.ns))
        pods = wait_for("the pods", lambda: len(kubelet.pods("paused")) == 2 and kubelet.pods("paused"))
        # the half table (pods not placed yet) is the last write of this step: lost-a is idle after it
        wait_for("lost-a writes the pending table", lambda: table_status(kubelet) == "initializing")

        first.signal(signal.SIGSTOP)
        stack.callback(first.signal, signal.SIGCONT)  # never leave a stopped process behind
        wait_for("lost-b takes over", lambda: lease_holder(admin, name=lease) == "lost-b", timeout=30)
        wait_for("lost-b has looked", lambda: second.metric("deeplab_reconcile_total") >= 1)
        second.signal(signal.SIGSTOP)  # holds the Lease, acts on nothing: the work below waits for lost-a
        stack.callback(second.signal, signal.SIGCONT)
        kubelet.place(pods, list(TWO_HOSTS))  # the rank table can be completed now

        woke = datetime.now(timezone.utc)
        first.signal(signal.SIGCONT)
        assert first.proc.wait(30) == EXIT_LOST_LEASE, "a replica that lost its Lease exits (to be restarted)"
        second.signal(signal.SIGCONT)
        wait_for("lost-b completes the table", lambda: table_status(kubelet) == "completed")

        found = audit.events(control_plane.audit_log)
        # every write lost-a *sent* after waking, refused ones (409) included; Lease writes apart
        sent = [
            e
            for e in audit.writes(found, user_agent=AGENT, since=woke, succeeded=False)
            if (e.get("objectRef") or {}).get("resource") != "leases"
        ]
        assert sent == [], audit.describe(sent)
        renewed = [when for when, _ in audit.lease_writes(found, AGENT) if when >= woke]
        assert renewed == [], renewed  # no renewal of a lost Lease (nor a release of someone else's)
        # the premise: lost-a woke with writes to make, and the fence refused them (its log says so)
        assert FENCED in first.log.read_text(), "lost-a had nothing to write: the test proved nothing"
        assert audit.other_writes(found, "deeplab-operator/lost-b", since=woke), "lost-b did the work"
