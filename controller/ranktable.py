"""Worker pods -> the HCCL rank table MindX DL's ascend-operator writes, and the pod -> rank map. Pure.

Layout, as Huawei's ascend-operator writes it (mind-cluster component/ascend-operator/pkg/ranktable/
common/common.go ``AddPod``/``getDeviceList``/``GatherServerList``, v1dot2/ranktable.go):

* one ``server_list`` entry per worker pod, never merged: ``server_id`` is what the device plugin wrote
  into the pod's annotation (the node's InternalIP, ascend-device-plugin ``GetNodeServerID``),
  ``container_ip`` the pod IP, and the devices in the annotation's order (sorted by physical id);
* ``rank_id`` = pod index (the ``hccl/rankIndex`` annotation) x devices per pod + index in the pod;
  entries sorted by their first rank; ``server_count`` = number of pods; every value a string;
* version 1.2 (Atlas A3 super pods) adds each device's ``super_device_id`` and a ``super_pod_list``
  grouping the servers by the annotation's ``super_pod_id``.

The table is written only once every worker carries a usable allocation (``PodHasAllocated`` in
ascend-operator's utils.go): HCCL needs each NPU's own address, which only the device plugin knows.
Workers without NPUs (CPU trainings that still use the rank-table launcher) fall back to the pod IP
and local indices, since nothing else will ever annotate them.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

# Written by the Ascend device plugin when it allocates NPUs; MindX documents both keys as the source
# of hccl.json (docs/en/scheduling/api/k8s.md), the ascend-operator reads the first.
DEVICE_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
NPU_DEVICE_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-npu-configuration"
VOLCANO_DEVICES_ANNOTATION = "huawei.com/Ascend910"  # Volcano's chosen chips: "Ascend910-0,Ascend910-1"
# Every pod annotation the controller keeps when it reduces a pod to what it reads.
DEVICE_ANNOTATIONS = frozenset({DEVICE_ANNOTATION, NPU_DEVICE_ANNOTATION, VOLCANO_DEVICES_ANNOTATION})
TABLE_KEY = "hccl.json"
VERSION_KEY = "version"  # MindX: a Unix timestamp that changes whenever the table is rewritten
RANKS_KEY = "ranks.json"
COMPACT = (",", ":")  # JSON separators without spaces
MOUNT_PATH = "/user/serverid/devindex/config"  # MindX DL convention
INITIALIZING: dict[str, Any] = {"status": "initializing"}
MAX_DEVICE_ID = 4095  # far above any server's NPU count; guards against garbage ids
ID_DIGITS = 12  # super_device_id values are large (e.g. "37748736"); never thousands of digits


@dataclass(frozen=True)
class Worker:
    name: str
    index: int
    pod_ip: str | None
    host_ip: str | None
    annotation: str | None = None  # the device plugin's allocation, raw


@dataclass(frozen=True)
class Layout:
    """What the table must hold for one training."""

    npus_per_pod: int = 1
    devices_required: bool = False  # NPU workers: only the device plugin's allocation counts
    version: str = "1.0"


@dataclass(frozen=True)
class Device:
    device_id: str
    device_ip: str
    super_device_id: str | None = None


@dataclass(frozen=True)
class Allocation:
    server_id: str
    host_ip: str
    super_pod_id: str | None
    devices: tuple[Device, ...]

    def device_ids(self) -> tuple[int, ...]:
        return tuple(int(d.device_id) for d in self.devices)


def allocation_annotation(annotations: dict[str, str]) -> str | None:
    """The allocation from whichever key the device plugin used (the 910 key first, as MindX reads)."""
    return annotations.get(DEVICE_ANNOTATION) or annotations.get(NPU_DEVICE_ANNOTATION)


def ready(workers: list[Worker], expected: int) -> bool:
    """Every worker pod of the attempt has been placed and has an IP."""
    return len(workers) == expected and all(w.pod_ip and w.host_ip for w in workers)


def _small_id(value: object, limit: int | None) -> str | None:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit() and len(text) <= ID_DIGITS):
        return None
    return str(int(text)) if limit is None or int(text) <= limit else None


def _ip(value: object) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return None


def parse(worker: Worker, layout: Layout) -> Allocation | str:
    """The worker's allocation, or why it is not usable (yet).

    The annotation is another component's free text: only non-negative integer ids and IP addresses
    are taken from it. A device without a usable address (absent, "", or "-1") is refused: HCCL would
    build its ring on it and fail late on every rank.
    """
    if not worker.annotation:
        return f"pod {worker.name} has no NPU allocation from the device plugin yet ({DEVICE_ANNOTATION})"
    try:
        info = json.loads(worker.annotation)
        devices = info["devices"]
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: deep nesting
        return f"pod {worker.name}: the device plugin's annotation is not the expected JSON"
    if not isinstance(devices, list) or len(devices) != layout.npus_per_pod:
        count = len(devices) if isinstance(devices, list) else 0
        return f"pod {worker.name}: {count} device(s) allocated, {layout.npus_per_pod} expected"
    parsed = []
    for device in devices:
        if not isinstance(device, dict):
            return f"pod {worker.name}: a device entry is not an object"
        device_id = _small_id(device.get("device_id"), MAX_DEVICE_ID)
        device_ip = _ip(device.get("device_ip"))
        if device_id is None or device_ip is None:
            shown, which = json.dumps(device.get("device_ip"))[:48], str(device.get("device_id"))[:12]
            return f"pod {worker.name}: device {which} has no usable device_ip ({shown})"
        super_id = _small_id(device.get("super_device_id"), None)
        if layout.version == "1.2" and super_id is None:
            return f"pod {worker.name}: device {device_id} has no super_device_id (rank table 1.2)"
        parsed.append(Device(device_id, device_ip, super_id))
    server_id = _ip(info.get("server_id")) or str(worker.host_ip or "")
    super_pod = _small_id(info.get("super_pod_id"), None)
    if layout.version == "1.2" and super_pod is None:
        return f"pod {worker.name}: no super_pod_id in the device plugin's annotation (rank table 1.2)"
    host_ip = _ip(info.get("host_ip")) or str(worker.host_ip or "")
    return Allocation(server_id, host_ip, super_pod, tuple(parsed))


def _fallback(worker: Worker, layout: Layout) -> Allocation:
    """CPU workers: the pod's own address for every local rank (nothing else will annotate them)."""
    devices = tuple(Device(str(i), str(worker.pod_ip)) for i in range(layout.npus_per_pod))
    return Allocation(str(worker.host_ip), str(worker.host_ip), None, devices)


def allocations(workers: list[Worker], layout: Layout) -> dict[str, Allocation] | str:
    """Every worker's allocation, or the first (by index) reason to wait."""
    found: dict[str, Allocation] = {}
    for worker in sorted(workers, key=lambda w: (w.index, w.name)):
        allocation = parse(worker, layout)
        if isinstance(allocation, str):
            if layout.devices_required:
                return allocation
            allocation = _fallback(worker, layout)
        found[worker.name] = allocation
    return found


def build(workers: list[Worker], layout: Layout | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The complete table and the pod-name -> first-rank map. Callers check ``ready`` and that
    ``allocations`` is not a reason to wait; a worker without a usable allocation falls back."""
    layout = layout or Layout()
    found = allocations(workers, Layout(layout.npus_per_pod, False, layout.version))
    assert not isinstance(found, str)  # devices_required=False never waits
    server_list, ranks, super_pods = [], {}, {}
    # By position in index order: rank index x devices per pod for the operator's own pods (indexes
    # 0..n-1, the hccl/rankIndex annotation), and still 0..N-1 for any stray set of indexes.
    for position, worker in enumerate(sorted(workers, key=lambda w: (w.index, w.name))):
        allocation = found[worker.name]
        first = position * layout.npus_per_pod
        ranks[worker.name] = first
        devices = []
        for offset, device in enumerate(allocation.devices):
            entry = {"device_id": device.device_id, "device_ip": device.device_ip}
            if layout.version == "1.2" and device.super_device_id is not None:
                entry["super_device_id"] = device.super_device_id
            devices.append({**entry, "rank_id": str(first + offset)})
        server_list.append(
            {
                "device": devices,
                "server_id": allocation.server_id,
                "host_ip": allocation.host_ip,
                "container_ip": str(worker.pod_ip),
            }
        )
        if allocation.super_pod_id is not None:
            members = super_pods.setdefault(allocation.super_pod_id, [])
            if allocation.server_id not in members:
                members.append(allocation.server_id)
    table: dict[str, Any] = {
        "status": "completed",
        "server_list": server_list,
        "server_count": str(len(server_list)),
        "version": layout.version,
    }
    if layout.version == "1.2":
        table["super_pod_list"] = [
            {"super_pod_id": pod, "server_list": [{"server_id": server} for server in servers]}
            for pod, servers in sorted(super_pods.items(), key=lambda item: int(item[0]))
        ]
    return table, ranks


def configmap_data(
    attempt: str, table: dict[str, Any], ranks: dict[str, int], stamp: int = 0
) -> dict[str, str]:
    """All keys change together (kubelet swaps a ConfigMap volume's files atomically). ``version`` is
    MindX's change marker: the Unix time of this write. Compact JSON, as MindX's ``json.Marshal``: an
    indented table of 4,096 ranks would not fit the ConfigMap's 1 MiB."""
    return {
        TABLE_KEY: json.dumps(table, separators=COMPACT),
        VERSION_KEY: str(stamp),
        RANKS_KEY: json.dumps({"attempt": attempt, "ranks": ranks}, separators=COMPACT, sort_keys=True),
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
