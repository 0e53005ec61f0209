"""The operator at Atlas scale with a real scheduler: 128 kwok nodes x 8 NPUs (issue 13).

    python -m bench.scheduling_scale [--nodes 128] [--workers 1024] [--npus-per-pod 1]
                                     [--small 50] [--small-workers 4] [--timeout 900]

The plane is envtest/sched.py's: kube-scheduler binds every pod, kwok runs them on simulated Atlas 800
nodes (pod IPs from each node's CIDR) and the simulated device plugin (envtest/device_plugin.py)
allocates their chips. Two scenarios, one after the other on the same nodes:

- large: one training of ``--workers`` workers (1,024: every NPU of the 128 nodes);
- small: ``--small`` trainings of ``--small-workers`` workers each (50 x 4: one server and one HCCS
  ring each), applied at once in one ``kubectl apply``.

Each scenario gets a fresh controller process (``python -m controller``, under its ServiceAccount by
impersonation), so its RSS and its API requests are its own. The API server audits every request
here (the plane's own policy logs only writes), and the phases are read from that log, as the server
saw them: the controller's pod creates, kube-scheduler's bindings, the device plugin's annotations,
kwok's Running status writes and the controller's rank-table writes, each as first and last moment
after ``kubectl apply``. A client-side watch on the ConfigMaps says when each table was complete.
Prints one RESULT line (bench/common.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import manifests
from bench.common import REPO, emit, log
from bench.operator_speed import (
    AUDIT_POLICY,
    SA_USER,
    AuditLog,
    ControllerProcess,
    RssSampler,
    Watcher,
    split,
    table_complete,
    wait_until,
)

WRITE_VERBS = ("create", "update", "patch")
CONTROLLER = "controller"  # the operator, under its ServiceAccount; other actors by user-agent prefix
# phase -> (verbs, resource, subresource, actor): who writes what when a training starts
STEPS: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "created": (("create",), "pods", "", CONTROLLER),  # the attempt's pods
    "bound": (("create",), "pods", "binding", "kube-scheduler"),
    "allocated": (("patch",), "pods", "", "OpenAPI-Generator"),  # the device plugin (Python client)
    "running": (WRITE_VERBS, "pods", "status", "kwok"),  # Running, with an IP from the node's CIDR
    "table": (WRITE_VERBS, "configmaps", "", CONTROLLER),  # the rank table
}


def training(name: str, namespace: str, workers: int, npus_per_server: int, npus_per_pod: int = 1) -> dict:
    """kwok runs no container: emptyDir volumes; never timed out while waiting for the scheduler."""
    return manifests.training(
        name,
        namespace,
        workers,
        {"data": {"emptyDir": {}}, "checkpoints": {"emptyDir": {}}},
        {"name": "only", "dataFile": "d.mindrecord0", "epochs": 1},
        npusPerServer=npus_per_server,
        npusPerPod=npus_per_pod,
        pendingTimeoutSeconds=0,
    )


# -- reading the audit log (pure) ----------------------------------------------------------------------
def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def step_of(event: dict[str, Any]) -> str | None:
    """Which phase a successful write belongs to (None: not one of them)."""
    code = (event.get("responseStatus") or {}).get("code", 500)
    if event.get("stage") != "ResponseComplete" or code >= 300:
        return None
    ref = event.get("objectRef") or {}
    controller = (event.get("impersonatedUser") or {}).get("username") == SA_USER
    for name, (verbs, resource, subresource, actor) in STEPS.items():
        if (
            event.get("verb") in verbs
            and ref.get("resource") == resource
            and (ref.get("subresource") or "") == subresource
            and controller == (actor == CONTROLLER)  # the operator is a Python client too
            and (controller or event.get("userAgent", "").startswith(actor))
        ):
            return name
    return None


def timeline(events: Iterable[dict[str, Any]], namespace: str, applied: float) -> dict[str, dict[str, Any]]:
    """Per phase: how many writes, the first and the last one, in seconds after ``applied``
    (``kubectl apply``), for the objects of ``namespace``. ``table_by_name``: the last rank-table
    write of each ConfigMap (with one table per training, when that training's table was complete)."""
    found: dict[str, list[float]] = {name: [] for name in STEPS}
    tables: dict[str, float] = {}
    for event in events:
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or (step := step_of(event)) is None:
            continue
        at = _epoch(event["stageTimestamp"]) - applied
        if at < 0:
            continue
        found[step].append(at)
        if step == "table":
            tables[ref.get("name", "")] = max(at, tables.get(ref.get("name", ""), at))
    out: dict[str, dict[str, Any]] = {
        name: {"count": len(times), "first_s": round(min(times), 2), "last_s": round(max(times), 2)}
        for name, times in found.items()
        if times
    }
    out["table_by_name"] = {name: round(at, 2) for name, at in sorted(tables.items())}
    return out


# -- the plane -----------------------------------------------------------------------------------------
def _audit_everything(components: list) -> list:
    """The plane's kube-apiserver with a policy that also logs reads (Metadata level): the bench counts
    the controller's reads too. The later --audit-policy-file wins over the plane's own."""
    from envtest.plane import APISERVER

    def args(plane) -> list[str]:
        policy = plane.workdir / "audit-everything.yaml"
        policy.write_text(AUDIT_POLICY)
        return [*APISERVER.args(plane), f"--audit-policy-file={policy}"]

    return [dataclasses.replace(c, args=args) if c.name == APISERVER.name else c for c in components]


class Scene:
    """The scheduling plane with ``nodes`` Atlas nodes, the operator's CRD and RBAC and the device plugin."""

    def __init__(self, workdir: Path, nodes: int) -> None:
        from kubernetes import client

        from controller import kube
        from envtest import sched
        from envtest.device_plugin import DevicePlugin

        self.workdir = workdir
        self.plane = sched.new_sched_plane(workdir / "plane")
        self.plane.components = _audit_everything(self.plane.components)
        started = time.monotonic()
        self.plane.start(timeout=300)
        self.plugin = None
        try:
            log(f"plane up in {time.monotonic() - started:.0f}s; adding {nodes} nodes")
            self.admin = kube.api_client(str(self.plane.kubeconfig))
            self.core = client.CoreV1Api(self.admin)
            started = time.monotonic()
            sched.add_nodes(self.core, sched.atlas_nodes(nodes))
            self.nodes_s = time.monotonic() - started
            self.kubectl("apply", "-k", str(REPO / "manifests"))
            self.kubectl("wait", "--for=condition=Established", "crd/deeplabtrainings.deeplab.io")
            self.plugin = DevicePlugin(self.admin)
            self.plugin.start()
            self.audit = AuditLog(self.plane.audit_log)
        except BaseException:
            self.stop()
            raise

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        cmd = [str(self.plane.kubectl), "--kubeconfig", str(self.plane.kubeconfig), *args]
        done = subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True, timeout=600)
        return done.stdout

    def namespace(self, name: str) -> None:
        """A new namespace, once its default ServiceAccount exists (pods are refused before)."""
        self.kubectl("create", "namespace", name)
        wait_until(f"{name}'s default ServiceAccount", lambda: "default" in self.kubectl(
            "get", "serviceaccounts", "-n", name, "-o", "name"), 60, 0.5)  # fmt: skip

    def controller(self) -> ControllerProcess:
        """A fresh controller, ready: it holds the Lease and its informers have synced."""
        controller = ControllerProcess(self.plane, self.workdir, resync=30, log_interval=5)
        try:
            controller.wait_leader(120)
            wait_until("informers synced", lambda: _ready(controller.port), 120, 0.2)
        except BaseException:
            controller.stop()
            raise
        return controller

    def empty(self, namespace: str, timeout: float = 600) -> None:
        """Delete every training of ``namespace`` and wait until its pods are gone (their NPUs free)."""
        self.kubectl("delete", "deeplabtrainings", "--all", "-n", namespace, "--wait=false")
        wait_until(f"{namespace} without pods", lambda: not self.pods(namespace), timeout, 1.0)

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return json.loads(self.core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]

    def stop(self) -> None:
        if self.plugin is not None:
            self.plugin.stop()
        self.plane.stop()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# -- scenarios -----------------------------------------------------------------------------------------
def scenario(scene: Scene, namespace: str, manifests: list[dict], pods: int, timeout: float) -> dict:
    """Apply ``manifests`` at once under a fresh controller; wait for every rank table; phases, RSS and
    the controller's requests."""
    from kubernetes import client

    from envtest import audit

    scene.namespace(namespace)
    controller = scene.controller()
    sampler = RssSampler(controller.proc.pid)
    maps = Watcher(client.CoreV1Api(scene.admin).list_namespaced_config_map, namespace, table_complete)
    maps.started.wait(10)
    names = [f"rings-config-{m['metadata']['name']}" for m in manifests]
    listed = json.dumps({"kind": "List", "apiVersion": "v1", "items": manifests})
    try:
        applied = time.time()
        scene.kubectl("apply", "-f", "-", stdin=listed)
        try:
            wait_until("every rank table", lambda: all(n in maps.matched for n in names), timeout, 0.1)
        except TimeoutError as error:
            plugin = scene.plugin
            raise RuntimeError(
                f"{error}: {sum(n in maps.matched for n in names)} of {len(names)} tables complete "
                f"(device plugin: {plugin.allocated} written, errors {plugin.errors[:3]}, "
                f"refused {len(plugin.refused)})"
            ) from None
        done = time.time()
        time.sleep(2.0)  # the reconciles the last events triggered finish before the requests are counted
        counts = scene.audit.requests(None, applied - 1, time.time())
        tables = [maps.matched[n] - applied for n in names]
        table = json.loads(client.CoreV1Api(scene.admin).read_namespaced_config_map(
            names[0], namespace, _preload_content=False).data)["data"]["hccl.json"]  # fmt: skip
    finally:
        maps.close()
        sampler.close()
        controller.stop()
    reads, writes = split(counts)
    return {
        "trainings": len(manifests),
        "pods": pods,
        "apply_to_all_tables_s": round(done - applied, 2),
        "table_s_median": round(statistics.median(tables), 2),
        "table_s_max": round(max(tables), 2),
        "phases": timeline(audit.events(scene.plane.audit_log), namespace, applied),
        "controller_peak_rss_mib": round(sampler.peak(since=applied), 1),
        "controller_reads": reads,
        "controller_writes": writes,
        "requests": dict(sorted(counts.items())),
        "table_bytes": len(table.encode()),
        "table_servers": len({entry["server_id"] for entry in json.loads(table)["server_list"]}),
    }


def run(nodes: int, workers: int, npus_per_pod: int, small: int, small_workers: int, timeout: float) -> dict:
    scene = Scene(Path(tempfile.mkdtemp(prefix="sched-scale-")), nodes)
    done = False
    try:
        result: dict[str, Any] = {"nodes": nodes, "nodes_register_s": round(scene.nodes_s, 2)}
        if workers:
            log(f"large: one training of {workers} workers")
            large = training("scale", "scale", workers, 8, npus_per_pod)
            result["large"] = scenario(scene, "scale", [large], workers // npus_per_pod, timeout)
            result["large"]["workers"] = workers
            scene.empty("scale")
        if small:
            log(f"small: {small} trainings of {small_workers} workers, applied at once")
            many = [training(f"small-{i:02d}", "small", small_workers, small_workers) for i in range(small)]
            result["small"] = scenario(scene, "small", many, small * small_workers, timeout)
            result["small"]["workers_each"] = small_workers
        result["plugin_allocations"] = scene.plugin.allocated
        done = True
        return result
    finally:
        scene.stop()  # removes the plane's directory; the controllers' logs stay only after a failure
        if done:
            shutil.rmtree(scene.workdir, ignore_errors=True)
        else:
            log(f"failed; the controllers' logs are in {scene.workdir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1024, help="the large training (0: skip it)")
    parser.add_argument("--npus-per-pod", type=int, default=1, choices=(1, 2, 4, 8))
    parser.add_argument("--small", type=int, default=50, help="concurrent small trainings (0: skip them)")
    parser.add_argument("--small-workers", type=int, default=4, choices=(1, 2, 4, 8))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    emit(run(args.nodes, args.workers, args.npus_per_pod, args.small, args.small_workers, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
