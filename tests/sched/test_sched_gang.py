"""All-or-nothing admission with Kueue (``gang: kueue``) against the deadlock it prevents (issue 13).

Two trainings each need 3/4 of a four-node pool. With Kueue's pod groups one is admitted whole and
the other waits whole (its pods gated, none bound), then runs when the first finishes. Without a
gang the scheduler places pods one by one, and two trainings can each hold half the NPUs while
waiting for the rest for ever. The race that produces that split is made deterministic here: a taint
keeps the second half of the pool for the second training until both have bound what they could.
"""

from __future__ import annotations

import json
import time

import pytest
from kubelet import Kubelet, apply, wait_for
from schedhelp import all_running, bound_nodes, condition, finish, training

from envtest import sched

pytestmark = [pytest.mark.cluster, pytest.mark.sched]

ADMISSION_GATE = "kueue.x-k8s.io/admission"
WORKERS = 24  # three of the pool's four servers


def _queues(sched_kubectl, namespace: str):
    items = sched.kueue_queues(namespace, "npu", npus=4 * 8)
    result = sched_kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": items}),
    )
    assert result.returncode == 0, result.stderr
    return items


def _gated(pod) -> bool:
    return any(g["name"] == ADMISSION_GATE for g in pod["spec"].get("schedulingGates") or ())


@pytest.fixture
def kueue_queue(sched_kubectl, sched_ns):
    items = _queues(sched_kubectl, sched_ns)
    yield "npu"
    sched_kubectl("delete", "clusterqueue", items[1]["metadata"]["name"], "--wait=false")


def test_kueue_admits_one_training_whole_and_the_other_waits_whole(
    sched_controller, sched_admin, sched_kubectl, sched_ns, pool, kueue_queue, device_plugin
):
    pool(4)
    for name in ("first", "second"):
        apply(sched_kubectl, training(name, sched_ns, workers=WORKERS, gang="kueue", queue=kueue_queue))
    kubelet = Kubelet(sched_admin, sched_ns)

    def one_runs():
        running = [n for n in ("first", "second") if all_running(kubelet, n, WORKERS)]
        return running[0] if len(running) == 1 else None

    winner = wait_for("one training admitted and Running", one_runs, timeout=120)
    loser = "second" if winner == "first" else "first"
    waiting = wait_for(f"{loser}'s {WORKERS} pods", lambda: len(p := kubelet.pods(loser)) == WORKERS and p)
    assert not bound_nodes(waiting), bound_nodes(waiting)  # waits whole: not a single pod bound
    assert all(_gated(p) for p in waiting), [p["spec"].get("schedulingGates") for p in waiting]
    groups = {p["metadata"]["labels"].get(sched.POD_GROUP_LABEL) for p in waiting}
    assert len(groups) == 1 and None not in groups, groups  # one Kueue pod group per attempt
    assert {p["metadata"]["labels"].get(sched.QUEUE_LABEL) for p in waiting} == {kueue_queue}
    counts = {p["metadata"]["annotations"].get(sched.POD_GROUP_COUNT_ANNOTATION) for p in waiting}
    assert counts == {str(WORKERS)}, counts
    assert kubelet.table(loser)[0].get("status") != "completed"
    shown_while_waiting(sched_kubectl, kubelet, loser)

    finish(kubelet, winner)
    wait_for(f"{winner} Succeeded", lambda: kubelet.status(winner).get("phase") == "Succeeded", timeout=60)
    wait_for(f"{loser} admitted and Running", lambda: all_running(kubelet, loser, WORKERS), timeout=120)

    try:
        wait_for(f"{loser}'s rank table", lambda: kubelet.table(loser)[0].get("status") == "completed", 90)
    except AssertionError as error:  # say whether the device plugin was refused
        refused = list(device_plugin.refused.values())[-3:]
        plugin = f"device plugin errors {device_plugin.errors[-3:]}, refused {refused}"
        raise AssertionError(f"{error}; {plugin}") from None


def shown_while_waiting(sched_kubectl, kubelet: Kubelet, name: str) -> None:
    """What a user sees while Kueue holds a training's pods (README "Placement and gang admission"):
    phase Pending, PodsPending with the pods' SchedulingGated reason and one Warning event; why Kueue
    holds them is on Kueue's Workload for the pod group (QuotaReserved False)."""

    def gated_condition():
        found = condition(kubelet, name, "PodsPending")
        return found and found["status"] == "True" and found["reason"] == "SchedulingGated" and found

    pending = wait_for(f"{name}'s PodsPending", gated_condition, timeout=30)
    assert "scheduling gates" in pending["message"], pending
    assert f"{WORKERS} of {WORKERS} pod(s) not running" in pending["message"], pending
    table = sched_kubectl("get", "dlt", name, "-n", kubelet.ns)
    assert "Pending" in table.stdout.splitlines()[1].split(), table.stdout  # NAME STAGE PHASE EPOCH ...
    warnings = [e for e in kubelet.events(name) if e["reason"] == "SchedulingGated"]
    assert [e["type"] for e in warnings] == ["Warning"], warnings
    listed = json.loads(sched_kubectl("get", "workloads", "-n", kubelet.ns, "-o", "json").stdout)["items"]
    held = [
        c
        for w in listed
        for c in (w.get("status") or {}).get("conditions") or ()
        if c["type"] == "QuotaReserved" and c["status"] == "False"
    ]
    assert len(held) == 1 and "insufficient unused quota" in held[0]["message"], held


def test_without_gang_two_trainings_deadlock_half_bound(
    sched_controller, sched_admin, sched_kubectl, sched_ns, pool
):
    nodes = pool(4)
    taint = "deeplab.io/reserved"
    for node in nodes[2:]:
        tainted = sched_kubectl("taint", "node", node.name, f"{taint}=second:NoSchedule")
        assert tainted.returncode == 0, tainted.stderr
    kubelet = Kubelet(sched_admin, sched_ns)

    apply(sched_kubectl, training("first", sched_ns, workers=WORKERS))
    wait_for(
        "first's two servers bound",
        lambda: sum(bound_nodes(kubelet.pods("first")).values()) == 16,
        timeout=90,
    )
    tolerate = {
        "tolerations": [{"key": taint, "operator": "Equal", "value": "second", "effect": "NoSchedule"}]
    }
    apply(sched_kubectl, training("second", sched_ns, workers=WORKERS, template=tolerate))
    wait_for(
        "second's two servers bound",
        lambda: sum(bound_nodes(kubelet.pods("second")).values()) == 16,
        timeout=90,
    )
    for node in nodes[2:]:  # the whole pool is open now, and still nothing moves
        sched_kubectl("taint", "node", node.name, f"{taint}-")
    time.sleep(10)
    for name in ("first", "second"):
        pods = kubelet.pods(name)
        assert len(pods) == WORKERS
        assert sum(bound_nodes(pods).values()) == 16, (name, bound_nodes(pods))  # both partially bound
        assert kubelet.table(name)[0].get("status") != "completed"
        assert kubelet.status(name).get("phase") != "Running"
