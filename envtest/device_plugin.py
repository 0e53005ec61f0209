"""A simulated Ascend device plugin for the scheduling tests (a test stand-in, not the real plugin).

On a real Atlas 800 the kubelet asks ascend-device-plugin for NPUs when it starts a pod, and the
plugin records the chips it handed out in a pod annotation the ascend-operator (and this project's
operator) builds the rank table from. kwok's simulated nodes have no kubelet and no plugin, so this
module plays the plugin's part: when a pod that requests NPUs is bound to a node, it picks free chips
on that node (chips held by the node's other live pods are taken) and writes the annotation exactly
as ascend-device-plugin does (FACTS.md section 5; /tmp research notes: pkg/common/common.go
``GetPodConfiguration``): ``{"pod_name", "server_id": <node InternalIP>, "devices": [{"device_id",
"device_ip"}]}`` with the chips in ascending id order, compact JSON as Go's ``json.Marshal`` writes
it, plus ``huawei.com/AscendReal`` (the mounted chips, ``Ascend910-0,Ascend910-1``).

Which chips: Atlas 800 (Ascend 910) chips 0-3 and 4-7 form two HCCS rings; a job using 2 or 4
chips of a server must stay inside one ring. Volcano's Ascend plugin (and the device plugin's
preferred allocation) therefore picks the ring that fits best: the one with the fewest free chips
that still has enough, which keeps whole rings free for later 4-chip pods. When no single ring has
room, the chips are taken across the rings, as a plain kubelet allocation would; the operator's
placement check must catch that case, so the simulation does not hide it.

The allocation rules are pure functions (``choose``, ``held_by``, ``annotation``); ``DevicePlugin``
is the watch loop that applies them against the API server.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

CHIPS_PER_NODE = 8
RINGS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3), (4, 5, 6, 7))
RESOURCE = "huawei.com/Ascend910"
DEVICE_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
# The key newer plugins use for other chip families (A5); the operator reads both (FACTS.md section 5).
NPU_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-npu-configuration"
REAL_ANNOTATION = "huawei.com/AscendReal"
FINISHED_PHASES = ("Succeeded", "Failed")


# -- pure allocation logic ---------------------------------------------------------------------------
def choose(free: Iterable[int], count: int) -> list[int] | None:
    """The chips to give a pod asking for ``count``, or None when the node has too few free.

    One ring when one fits (best fit: the ring with the fewest free chips that suffices; ties go to
    the lower ring), lowest ids within it; otherwise the lowest free ids across both rings.
    """
    available = sorted(set(free))
    if count <= 0 or count > len(available):
        return None
    fitting = [ring for ring in RINGS if sum(chip in available for chip in ring) >= count]
    if fitting and count <= len(RINGS[0]):
        ring = min(fitting, key=lambda r: (sum(chip in available for chip in r), r[0]))
        return [chip for chip in ring if chip in available][:count]
    return available[:count]


def requested(pod: Mapping[str, Any], resource: str = RESOURCE) -> int:
    """NPUs the pod asks for: the containers' sum, or the largest init container's when that is more
    (the kubelet's effective request; extended resources have requests == limits)."""

    def amount(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(resource) or (resources.get("requests") or {}).get(
            resource
        )
        return int(value or 0)

    spec = pod.get("spec") or {}
    main = sum(amount(c) for c in spec.get("containers") or ())
    init = max((amount(c) for c in spec.get("initContainers") or ()), default=0)
    return max(main, init)


def devices_of(pod: Mapping[str, Any], key: str = DEVICE_ANNOTATION) -> list[int]:
    """The chip ids the plugin's annotation records for ``pod`` (empty without one)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(key)
    if not raw:
        return []
    return [int(d["device_id"]) for d in json.loads(raw).get("devices") or ()]


def holds_devices(pod: Mapping[str, Any]) -> bool:
    """A pod keeps its chips until it has finished or is gone (the kubelet frees them then)."""
    finished = (pod.get("status") or {}).get("phase") in FINISHED_PHASES
    return not finished and not (pod.get("metadata") or {}).get("deletionTimestamp")


def held_by(pods: Iterable[Mapping[str, Any]], node: str, key: str = DEVICE_ANNOTATION) -> set[int]:
    """Chips of ``node`` that its live pods hold."""
    taken: set[int] = set()
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName") == node and holds_devices(pod):
            taken.update(devices_of(pod, key))
    return taken


def device_ip(node_ip: str, chip: int) -> str:
    """A per-chip address unique in the cluster: 10.<100 + chip>.<node IP's last two octets>.

    Real chips carry their own RoCE address (read with dcmi); the shape is what matters here."""
    third, fourth = ipaddress.IPv4Address(node_ip).packed[2:]
    return f"10.{100 + chip}.{third}.{fourth}"


def annotation(pod_name: str, server_id: str, chips: Iterable[int]) -> str:
    """The plugin's annotation value: compact JSON, fields in the Go struct's order, ids ascending."""
    devices = [{"device_id": str(chip), "device_ip": device_ip(server_id, chip)} for chip in sorted(chips)]
    value = {"pod_name": pod_name, "server_id": server_id, "devices": devices}
    return json.dumps(value, separators=(",", ":"))


def real_devices(chips: Iterable[int], family: str = "Ascend910") -> str:
    """``huawei.com/AscendReal``: the mounted chips by device name, e.g. ``Ascend910-0,Ascend910-1``."""
    return ",".join(f"{family}-{chip}" for chip in sorted(chips))


def internal_ip(node: Mapping[str, Any]) -> str | None:
    """The node's first InternalIP, what the plugin writes as ``server_id`` (GetNodeServerID)."""
    for address in (node.get("status") or {}).get("addresses") or ():
        if address.get("type") == "InternalIP":
            return address.get("address")
    return None


def needs_allocation(pod: Mapping[str, Any], key: str = DEVICE_ANNOTATION, resource: str = RESOURCE) -> bool:
    """Bound, live, asking for NPUs and not yet annotated."""
    bound = bool((pod.get("spec") or {}).get("nodeName"))
    return bound and holds_devices(pod) and requested(pod, resource) > 0 and not devices_of(pod, key)


# -- the loop ------------------------------------------------------------------------------------------
class DevicePlugin:
    """Watches every pod and annotates the newly bound ones that ask for NPUs.

    Chips are chosen one pod at a time, in the watch thread, from the plugin's own record: the chips
    of every live pod per node, including the ones it has just handed out and not yet written, so two
    pods bound to a node together never get the same chip. The annotations are then written by a few
    threads in parallel (a real cluster has one plugin per node, each writing its own). A pod whose
    node has too few free chips is left without an annotation (and listed in ``refused``): the
    operator keeps waiting for its devices, as it would with a real plugin.
    """

    def __init__(self, api_client, resource: str = RESOURCE, key: str = DEVICE_ANNOTATION, writers: int = 32):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.resource, self.key = resource, key
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> the latest copy seen
        self.chips: dict[str, tuple[str, list[int]]] = {}  # uid -> (node, chips) of live pods
        self.node_ips: dict[str, str] = {}
        self.allocated = 0
        self.refused: dict[str, str] = {}
        self.errors: list[str] = []
        self._count_lock = threading.Lock()
        self._nodes_lock = threading.Lock()
        self._relist_needed = threading.Event()
        self._writers = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="device-plugin-write")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-plugin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._writers.shutdown(wait=True)

    def _run(self) -> None:
        """List once, then watch on from the last resourceVersion seen; list again only when the
        watch breaks (a relist of every pod each few seconds would starve the plugin at scale)."""
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                version = self._watch(version)
                if self._relist_needed.is_set():
                    self._relist_needed.clear()
                    version = None
            except Exception:  # the server restarted, the watch expired (410): list again
                version = None
                time.sleep(0.5)

    def _watch(self, version: str) -> str | None:
        """One bounded watch, read as plain JSON lines like the controller's informer: the client's
        V1Pod models would cost the plugin most of a core at 1,024 pods. None means: list again."""
        from kubernetes.watch.watch import iter_resp_lines

        response = self.core.list_pod_for_all_namespaces(
            watch=True, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=5,
            _preload_content=False, _request_timeout=(10, 20),
        )  # fmt: skip
        try:
            for line in iter_resp_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                pod = event.get("object") or {}
                if event.get("type") == "ERROR":  # e.g. 410 Gone: the version is too old
                    return None
                version = pod["metadata"].get("resourceVersion") or version
                if event["type"] != "BOOKMARK":
                    self._observe(event["type"], pod)
                if self._stop.is_set() or self._relist_needed.is_set():
                    break
        finally:
            response.release_conn()
        return version

    def _relist(self) -> str:
        listed = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False).data)
        live = {pod["metadata"]["uid"] for pod in listed["items"]}
        self.pods = {}
        self.chips = {uid: held for uid, held in self.chips.items() if uid in live}  # keep writes in flight
        for pod in listed["items"]:
            self._observe("ADDED", pod)
        return listed["metadata"]["resourceVersion"]

    def _observe(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED" or not holds_devices(pod):
            self.pods.pop(uid, None)
            self.chips.pop(uid, None)  # finished or gone: the kubelet frees its chips
            return
        self.pods[uid] = pod
        written = devices_of(pod, self.key)
        if written:
            self.chips[uid] = (pod["spec"]["nodeName"], written)
        elif uid not in self.chips and needs_allocation(pod, self.key, self.resource):
            self._allocate(pod)

    def _held(self, node: str) -> set[int]:
        return {chip for where, chips in self.chips.values() if where == node for chip in chips}

    def _allocate(self, pod: dict[str, Any]) -> None:
        meta, node = pod["metadata"], pod["spec"]["nodeName"]
        count = requested(pod, self.resource)
        free = set(range(CHIPS_PER_NODE)) - self._held(node)
        chips = choose(free, count)
        if chips is None:
            self.refused[meta["uid"]] = f"{node}: {count} asked, free {sorted(free)}"
            return
        self.chips[meta["uid"]] = (node, chips)
        self.refused.pop(meta["uid"], None)
        self._writers.submit(self._write, meta["uid"], meta["namespace"], meta["name"], node, chips)

    def _write(
        self, uid: str, namespace: str, name: str, node: str, chips: list[int], attempts: int = 6
    ) -> None:
        """Patch the annotation, retrying a refused or timed-out write (an admission webhook under load)
        the way the real plugin retries; a pod deleted meanwhile needs nothing."""
        from kubernetes.client import ApiException

        from controller.kube import sent

        for attempt in range(attempts):
            try:
                value = annotation(name, self._node_ip(node), chips)
                annotations = {self.key: value, REAL_ANNOTATION: real_devices(chips)}
                patched = self.core.patch_namespaced_pod(
                    name, namespace, {"metadata": {"annotations": annotations}}, _preload_content=False
                )
                sent(patched)  # read to the end: the connection goes back to the pool
                with self._count_lock:
                    self.allocated += 1
                return
            except ApiException as error:
                if error.status == 404:
                    return
                failure = f"{namespace}/{name}: {error.status} {error.reason}"
            except Exception as error:  # connection reset, server restarting
                failure = f"{namespace}/{name}: {error}"
            time.sleep(0.5 * 2**attempt)
        self.errors.append(failure)
        self._forget(uid)

    def _forget(self, uid: str) -> None:
        """A write that failed for good: free the chips and list again, which allocates anew."""
        self.chips.pop(uid, None)
        self._relist_needed.set()

    def _node_ip(self, node: str) -> str:
        """The node's InternalIP; a miss lists every node once (under a lock, so 32 writers meeting new
        nodes together do not each read them: that was ~750 node reads for a 1,024-worker attempt)."""
        with self._nodes_lock:
            if node not in self.node_ips:
                listed = json.loads(self.core.list_node(_preload_content=False).data)
                for found in listed["items"]:
                    if (ip := internal_ip(found)) is not None:
                        self.node_ips[found["metadata"]["name"]] = ip
            if node not in self.node_ips:
                raise RuntimeError(f"node {node} has no InternalIP yet")
            return self.node_ips[node]
