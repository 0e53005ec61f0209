"""Placement on Atlas 800 servers with the real kube-scheduler and kwok nodes (issue 13, section 2).

Nothing here binds a pod or invents an IP: kube-scheduler places the operator's pods, kwok runs them
(pod IPs from each node's CIDR) and the simulated device plugin picks their chips.
"""

from __future__ import annotations

import time

import pytest
from kubelet import Kubelet, apply, wait_for
from schedhelp import (
    all_running,
    bound_nodes,
    condition,
    occupy,
    raw_pods,
    table_servers,
    training,
    wait_allocated,
)

from envtest import device_plugin as dp

pytestmark = [pytest.mark.cluster, pytest.mark.sched]


def test_sixteen_workers_fill_exactly_two_whole_nodes(
    sched_controller, sched_admin, sched_kubectl, sched_ns, pool
):
    nodes = pool(4)
    ips = {n.name: n.ip for n in nodes}
    apply(sched_kubectl, training("fill", sched_ns, workers=16))
    kubelet = Kubelet(sched_admin, sched_ns)

    pods = wait_for("16 workers bound and Running", lambda: all_running(kubelet, "fill", 16), timeout=90)
    used = bound_nodes(pods)
    assert sorted(used.values()) == [8, 8], used
    for pod in pods:  # kwok gave each pod an IP from its own node's CIDR
        node = next(n for n in nodes if n.name == pod["spec"]["nodeName"])
        assert pod["status"]["podIP"].startswith(node.pod_cidr.rsplit(".", 1)[0] + "."), pod["status"]

    def completed():
        table, _ = kubelet.table("fill")
        return table.get("status") == "completed" and table

    table = wait_for("a completed rank table", completed, timeout=60)
    servers = table_servers(table)
    assert set(servers) == {ips[name] for name in used}, servers.keys()
    for server_id, devices in servers.items():
        assert sorted(d for d, _, _ in devices) == list(range(8)), (server_id, devices)
        assert all(ip == dp.device_ip(server_id, d) for d, ip, _ in devices), devices
    ranks = sorted(r for devices in servers.values() for _, _, r in devices)
    assert ranks == list(range(16))
    # ranks 0-7 form one server and 8-15 the other: each node holds one contiguous block
    blocks = sorted(sorted(r for _, _, r in devices) for devices in servers.values())
    assert blocks == [list(range(8)), list(range(8, 16))]
    wait_for("phase Running", lambda: kubelet.status("fill").get("phase") == "Running", timeout=30)


def test_fragmented_free_npus_make_the_training_wait_not_split(
    sched_controller, sched_admin, sched_kubectl, sched_ns, pool
):
    """3 + 5 free NPUs on two nodes: eight workers of one server fit nowhere whole."""
    first, second = pool(2)
    kubelet = Kubelet(sched_admin, sched_ns)
    for node, npus in ((first, 5), (second, 3)):
        wait_allocated(kubelet, occupy(sched_kubectl, sched_ns, node, npus))
    apply(sched_kubectl, training("frag", sched_ns, workers=8))

    def waiting_with_reason():
        found = condition(kubelet, "frag", "PodsPending")
        return found and found["status"] == "True" and found["reason"] == "Unschedulable" and found

    pending = wait_for("PodsPending with the scheduler's reason", waiting_with_reason, timeout=90)
    assert "Insufficient huawei.com/Ascend910" in pending["message"] or "affinity" in pending["message"], (
        pending
    )
    time.sleep(5)  # the scheduler's retries: still no split start
    workers = kubelet.pods("frag")
    assert len(workers) == 8
    assert len(bound_nodes(workers)) <= 1, bound_nodes(workers)  # never spread over the two nodes
    assert any(not p["spec"].get("nodeName") for p in workers)
    assert kubelet.table("frag")[0].get("status") != "completed"
    assert kubelet.status("frag").get("phase") != "Running"
    # every chip is held by at most one pod: the plugin never handed one out twice
    for node in (first, second):
        chips = [
            c for p in raw_pods(kubelet) if p["spec"].get("nodeName") == node.name for c in dp.devices_of(p)
        ]
        assert len(chips) == len(set(chips)) <= 8, (node.name, chips)
