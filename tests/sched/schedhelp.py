"""Helpers of the scheduling tests: trainings confined to a test's node pool, occupant pods, reading
where pods landed and which chips the device plugin gave them."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from kubelet import Kubelet, apply, one_stage_manifest, result_message, wait_for

from envtest import device_plugin as dp
from envtest import sched

EMPTY = {"emptyDir": {}}
POOL_LABEL = "deeplab.io/pool"  # each test's own nodes: its trainings select them


def training(name: str, namespace: str, workers: int, **spec: Any) -> dict[str, Any]:
    """A one-stage NPU training whose pods may only land on this test's pool of nodes."""
    template = {"nodeSelector": {POOL_LABEL: namespace}, **spec.pop("template", {})}
    volumes = {"data": EMPTY, "checkpoints": EMPTY}
    return one_stage_manifest(
        name, namespace, workers=workers, npusPerServer=8, volumes=volumes, template=template, **spec
    )


def occupy(kubectl, namespace: str, node: sched.AtlasNode, npus: int, name: str | None = None) -> str:
    """Another tenant's pod holding ``npus`` of ``node`` (bound directly, like a static reservation)."""
    name = name or f"other-{node.name}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node.name,
            "containers": [
                {"name": "ascend", "image": "other:latest", "resources": {"limits": {sched.NPU: str(npus)}}}
            ],
        },
    }
    apply(kubectl, pod)
    return name


def raw_pods(kubelet: Kubelet) -> list[dict[str, Any]]:
    """Every live pod of the namespace (the operator's and the occupants')."""
    listed = kubelet.core.list_namespaced_pod(kubelet.ns, _preload_content=False)
    return [p for p in json.loads(listed.data)["items"] if not p["metadata"].get("deletionTimestamp")]


def wait_allocated(kubelet: Kubelet, name: str, timeout: float = 30.0) -> list[int]:
    def chips():
        pod = json.loads(kubelet.core.read_namespaced_pod(name, kubelet.ns, _preload_content=False).data)
        return dp.devices_of(pod)

    return wait_for(f"{name}'s NPUs", chips, timeout)


def bound_nodes(pods: list[dict[str, Any]]) -> Counter:
    return Counter(p["spec"].get("nodeName") for p in pods if p["spec"].get("nodeName"))


def all_running(kubelet: Kubelet, training_name: str, count: int) -> list[dict[str, Any]] | None:
    pods = kubelet.pods(training_name)
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    return pods if len(pods) == count and len(running) == count else None


def condition(kubelet: Kubelet, training_name: str, kind: str) -> dict[str, Any] | None:
    found = [c for c in kubelet.status(training_name).get("conditions") or () if c["type"] == kind]
    return found[0] if found else None


def table_servers(table: dict[str, Any]) -> dict[str, list[tuple[int, str, int]]]:
    """server_id -> [(device_id, device_ip, rank_id)] over the table's per-pod entries."""
    found: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for entry in table["server_list"]:
        for device in entry["device"]:
            found[entry["server_id"]].append(
                (int(device["device_id"]), device["device_ip"], int(device["rank_id"]))
            )
    return found


def finish(kubelet: Kubelet, training_name: str) -> None:
    """Every worker exits 0 with its result line, as the kubelet reports it."""
    for pod in kubelet.pods(training_name):
        kubelet.terminate(pod["metadata"]["name"], 0, result_message("/checkpoints/only/final.ckpt", 0.7))
