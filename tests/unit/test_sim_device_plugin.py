"""The simulated Ascend device plugin's allocation rules and annotation format (envtest/device_plugin.py).

The format is held against FACTS.md section 5 and the ascend-device-plugin sources (GetPodConfiguration:
``pod_name``, ``server_id`` = node InternalIP, ``devices`` sorted by physical id, every value a string,
compact Go JSON) and against what the operator's own rank-table code reads.
"""

from __future__ import annotations

import itertools
import json

import pytest

from controller.ranktable import DEVICE_ANNOTATION as OPERATOR_READS
from envtest import device_plugin as dp

RING_SIZES = (2, 4)


def pod(
    node: str | None, npus: int = 0, chips: list[int] | None = None, phase: str = "Running", **meta
) -> dict:
    annotations = {}
    if chips is not None:
        annotations[dp.DEVICE_ANNOTATION] = dp.annotation("p", "10.240.0.1", chips)
    resources = {"limits": {dp.RESOURCE: str(npus)}} if npus else {}
    return {
        "metadata": {"name": "p", "namespace": "n", "uid": "u", "annotations": annotations, **meta},
        "spec": {"nodeName": node, "containers": [{"name": "ascend", "resources": resources}]},
        "status": {"phase": phase},
    }


def test_annotation_is_the_device_plugins_format():
    value = dp.annotation("job-worker-3", "10.240.0.7", [5, 4])
    assert value == (
        '{"pod_name":"job-worker-3","server_id":"10.240.0.7","devices":['
        '{"device_id":"4","device_ip":"10.104.0.7"},{"device_id":"5","device_ip":"10.105.0.7"}]}'
    )
    decoded = json.loads(value)
    assert list(decoded) == ["pod_name", "server_id", "devices"]
    assert all(isinstance(v, str) for d in decoded["devices"] for v in d.values())
    assert dp.DEVICE_ANNOTATION == "ascend.kubectl.kubernetes.io/ascend-910-configuration" == OPERATOR_READS
    assert dp.NPU_ANNOTATION == "ascend.kubectl.kubernetes.io/ascend-npu-configuration"
    assert dp.real_devices([1, 0]) == "Ascend910-0,Ascend910-1"


def test_device_ips_are_unique_across_chips_and_nodes():
    ips = {dp.device_ip(f"10.240.{i // 250}.{i % 250 + 1}", chip) for i in range(300) for chip in range(8)}
    assert len(ips) == 300 * 8


@pytest.mark.parametrize("count", RING_SIZES)
def test_a_ring_is_never_split_when_a_whole_ring_is_free(count):
    """Every occupancy of the node that leaves one ring entirely free: the choice lies in one ring."""
    for taken_count in range(0, 5):
        for taken in itertools.combinations(range(8), taken_count):
            free = set(range(8)) - set(taken)
            if not any(set(ring) <= free for ring in dp.RINGS):
                continue
            chosen = dp.choose(free, count)
            assert chosen is not None and len(chosen) == count and set(chosen) <= free, (taken, chosen)
            assert any(set(chosen) <= set(ring) for ring in dp.RINGS), (taken, chosen)


def test_best_fit_keeps_a_whole_ring_for_later():
    # ring 0 has chips 2 and 3 free, ring 1 is whole: two chips come from ring 0
    assert dp.choose({2, 3, 4, 5, 6, 7}, 2) == [2, 3]
    assert dp.choose({3, 4, 5, 6, 7}, 1) == [3]
    assert dp.choose(set(range(8)), 4) == [0, 1, 2, 3]
    assert dp.choose(set(range(8)), 8) == list(range(8))


def test_split_only_when_no_ring_has_room_and_none_when_too_few():
    assert dp.choose({2, 3, 4, 5}, 4) == [2, 3, 4, 5]  # what a plain kubelet would hand out
    assert dp.choose({0, 1, 2}, 4) is None
    assert dp.choose(set(), 1) is None


def test_held_by_counts_live_pods_of_that_node_only():
    pods = [
        pod("a", 2, [0, 1]),
        pod("a", 1, [7], phase="Succeeded"),  # finished: its chip is free again
        pod("a", 1, [6], deletionTimestamp="2026-11-30T00:00:00Z"),
        pod("b", 4, [4, 5, 6, 7]),
    ]
    assert dp.held_by(pods, "a") == {0, 1}
    assert dp.held_by(pods, "b") == {4, 5, 6, 7}


def test_needs_allocation():
    assert dp.needs_allocation(pod("a", 1))
    assert not dp.needs_allocation(pod(None, 1))  # not bound yet
    assert not dp.needs_allocation(pod("a", 0))  # CPU pod
    assert not dp.needs_allocation(pod("a", 1, [3]))  # already annotated
    assert not dp.needs_allocation(pod("a", 1, phase="Failed"))


def test_requested_counts_containers_and_init_containers():
    p = pod("a", 2)
    p["spec"]["containers"].append({"name": "side", "resources": {"requests": {dp.RESOURCE: "1"}}})
    assert dp.requested(p) == 3
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {dp.RESOURCE: "8"}}}]
    assert dp.requested(p) == 8


def test_internal_ip_is_the_server_id():
    node = {"status": {"addresses": [{"type": "Hostname", "address": "atlas-001"},
                                     {"type": "InternalIP", "address": "10.240.0.2"}]}}  # fmt: skip
    assert dp.internal_ip(node) == "10.240.0.2"
    assert dp.internal_ip({"status": {}}) is None
