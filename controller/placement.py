"""Where an attempt's workers may run, as Atlas 800 servers need it, and a check of where they landed. Pure.

An Atlas 800 (8 Ascend 910) takes part in a job with 1, 2, 4 or 8 NPUs, the same number on every
server, and 2 or 4 NPUs must sit in one HCCS ring (chips 0-3 or 4-7) (FACTS.md section 5; MindX's
Volcano plugin enforces the same). So ranks are grouped into servers of ``npusPerServer`` and:

* the pods of one server land on one node: required pod affinity to the pods with its server label;
* different servers land on different nodes: required pod anti-affinity to the other servers' pods.

Both are plain pod (anti-)affinity on ``kubernetes.io/hostname``, which the default scheduler, Volcano
and Kueue (which gates pods, then lets kube-scheduler place them) all respect. The scheduler places a
server's first pod anywhere its peers could follow (a required affinity that only the pod itself
matches is satisfiable). Before the rank table is written, ``problems`` checks the placement again,
including the rings, which only the device plugin's allocation shows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from controller import names

HOSTNAME = "kubernetes.io/hostname"
RINGS = (frozenset(range(4)), frozenset(range(4, 8)))  # HCCS rings of an Atlas 800


@dataclass(frozen=True)
class Landed:
    """One worker pod where it landed: its node and, for NPU workers, its chips (physical ids)."""

    name: str
    index: int
    node: str
    device_ids: tuple[int, ...] = ()


def server_of(pod_index: int, npus_per_pod: int, npus_per_server: int) -> int:
    """The server a worker pod belongs to (its first rank's)."""
    return pod_index * npus_per_pod // npus_per_server


def affinity(selector: dict[str, str], servers: int, pods_per_server: int) -> dict[str, Any]:
    """The pod (anti-)affinity of every worker pod of an attempt (``selector`` picks its workers).

    The server is not spelt out: ``matchLabelKeys``/``mismatchLabelKeys`` take it from each pod's own
    ``deeplab.io/server`` label (Kubernetes >= 1.31). So every worker pod carries the same affinity,
    which Kueue needs: it groups a pod group's pods by a hash of their spec, affinity included, and
    allows at most 8 such groups (a training of more servers would be refused).
    """
    result: dict[str, Any] = {}
    keys = [names.LABEL_SERVER]
    if pods_per_server > 1:
        term = {"labelSelector": {"matchLabels": selector}, "matchLabelKeys": keys, "topologyKey": HOSTNAME}
        result["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    if servers > 1:
        term = {
            "labelSelector": {"matchLabels": selector},
            "mismatchLabelKeys": keys,
            "topologyKey": HOSTNAME,
        }
        result["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    return result


def _describe(groups: dict[int, list[Landed]]) -> str:
    return "; ".join(
        f"server {server}: " + ", ".join(f"{w.name} on {w.node or '?'}" for w in members)
        for server, members in sorted(groups.items())
    )


def problems(landed: list[Landed], npus_per_pod: int, npus_per_server: int, check_rings: bool) -> str:
    """Why this placement cannot make a rank table HCCL accepts ("" when it can): which rule is broken
    and where the pods landed."""
    groups: dict[int, list[Landed]] = defaultdict(list)
    for worker in sorted(landed, key=lambda w: w.index):
        groups[server_of(worker.index, npus_per_pod, npus_per_server)].append(worker)
    where = _describe(groups)
    owner: dict[str, int] = {}
    for server, members in sorted(groups.items()):
        nodes = {w.node for w in members}
        if len(nodes) > 1:
            return f"the pods of server {server} landed on {len(nodes)} nodes, not one ({where})"
        (node,) = nodes
        if node in owner:
            return f"servers {owner[node]} and {server} landed on the same node {node} ({where})"
        owner[node] = server
        chips = frozenset(i for w in members for i in w.device_ids)
        if check_rings and npus_per_server in (2, 4) and not any(chips <= ring for ring in RINGS):
            return (
                f"server {server} on {node} got NPUs {sorted(chips)}, not within one HCCS ring (0-3 or 4-7)"
            )
    return ""
