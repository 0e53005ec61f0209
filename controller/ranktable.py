"""Worker pods -> HCCL rank table version 1.0 and the pod -> rank map. Pure.

HCCL requires the ranks of one server to be contiguous, so ranks follow the placement: servers are
grouped by the node's IP (``status.hostIP``) and ordered by their lowest worker index, workers by
index inside a server. When the scheduler packs workers in index order (the usual case), rank ==
worker index. Every value in the table is a string (the format MindSpore's hccl_tools and MindX DL
write).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

# Written by the Ascend device plugin when it allocates the NPU; carries the physical device id
# and the NPU's own network address (device_ip), which HCCL uses for the collective ring.
DEVICE_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
# Every pod annotation an NPU allocation may arrive in (MindX's device plugin writes one of the first two,
# Volcano's Ascend plugin the third): the controller keeps these when it reduces a pod to what it reads.
DEVICE_ANNOTATIONS = frozenset(
    {DEVICE_ANNOTATION, "ascend.kubectl.kubernetes.io/ascend-npu-configuration", "huawei.com/Ascend910"}
)
TABLE_KEY = "hccl.json"
RANKS_KEY = "ranks.json"
MOUNT_PATH = "/user/serverid/devindex/config"  # MindX DL convention
INITIALIZING: dict[str, Any] = {"status": "initializing"}
MAX_DEVICE_ID = 4095  # far above any server's NPU count; guards against garbage ids


@dataclass(frozen=True)
class Worker:
    name: str
    index: int
    pod_ip: str | None
    host_ip: str | None
    annotation: str | None = None  # DEVICE_ANNOTATION's raw value, if any


def ready(workers: list[Worker], expected: int) -> bool:
    """A table can be written once every worker of the attempt has been placed and has an IP."""
    return len(workers) == expected and all(w.pod_ip and w.host_ip for w in workers)


def _device(worker: Worker, local_index: int) -> tuple[str, str]:
    """(device_id, device_ip) from the device plugin's annotation, else a node-local fallback.

    The annotation is another component's free text: only a non-negative integer device id and an
    IP address are taken from it; anything else falls back rather than reaching HCCL.
    """
    fallback = (str(local_index), str(worker.pod_ip))
    try:
        device = json.loads(worker.annotation or "")["devices"][0]
        device_id, device_ip = device["device_id"], device.get("device_ip") or worker.pod_ip
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):  # RecursionError: deep nesting
        return fallback
    if isinstance(device_id, bool) or not isinstance(device_id, int | str):
        return fallback
    text = str(device_id)
    if not text.isdigit() or not text.isascii() or len(text) > 9 or int(text) > MAX_DEVICE_ID:
        return fallback
    try:
        ip = str(ipaddress.ip_address(str(device_ip)))
    except ValueError:
        ip = str(worker.pod_ip)
    return str(int(device_id)), ip


def servers(workers: list[Worker]) -> list[tuple[str, list[Worker]]]:
    by_host: dict[str, list[Worker]] = {}
    for worker in sorted(workers, key=lambda w: w.index):
        by_host.setdefault(str(worker.host_ip), []).append(worker)
    return sorted(by_host.items(), key=lambda item: item[1][0].index)


def build(workers: list[Worker]) -> tuple[dict[str, Any], dict[str, int]]:
    """The complete table and the pod-name -> rank map; callers check ``ready`` first."""
    server_list = []
    ranks: dict[str, int] = {}
    for host_ip, members in servers(workers):
        devices = []
        for local_index, worker in enumerate(members):
            rank = len(ranks)
            ranks[worker.name] = rank
            device_id, device_ip = _device(worker, local_index)
            devices.append({"device_id": device_id, "device_ip": device_ip, "rank_id": str(rank)})
        server_list.append(
            {
                "server_id": host_ip,
                "host_nic_ip": "reserve",
                # MindX's ascend-operator records the pod's own address next to the node's
                "container_ip": str(members[0].pod_ip),
                "host_ip": host_ip,
                "device": devices,
            }
        )
    table = {
        "version": "1.0",
        "server_count": str(len(server_list)),
        "server_list": server_list,
        "status": "completed",
    }
    return table, ranks


def configmap_data(attempt: str, table: dict[str, Any], ranks: dict[str, int]) -> dict[str, str]:
    """Both keys change together: kubelet swaps a ConfigMap volume's files atomically."""
    return {
        TABLE_KEY: json.dumps(table, indent=2),
        RANKS_KEY: json.dumps({"attempt": attempt, "ranks": ranks}, indent=2, sort_keys=True),
    }


def read_configmap(data: dict[str, str] | None) -> tuple[str | None, bool, dict[str, int]]:
    """(attempt, completed, ranks) of a stored table; tolerant of hand-edited garbage."""
    data = data or {}
    try:
        meta = json.loads(data.get(RANKS_KEY, "{}"))
        table = json.loads(data.get(TABLE_KEY, "{}"))
    except (ValueError, RecursionError):  # hand-edited garbage, however deeply nested
        return None, False, {}
    attempt = meta.get("attempt") if isinstance(meta, dict) else None
    completed = isinstance(table, dict) and table.get("status") == "completed"
    ranks = meta.get("ranks") if isinstance(meta, dict) and isinstance(meta.get("ranks"), dict) else {}
    return attempt, completed, ranks
