"""The operator against a real control plane: pod creation time, rank-table latency, API requests, memory.

    python -m bench.operator_speed [--sizes 8 64 512] [--trainings 1000] [--quick]
    python -m bench.operator_speed --ranktable-only

The controller runs as its own process (``python -m controller``, under its ServiceAccount's RBAC by
impersonation), exactly as deployed, so its RSS is its own. API requests are counted by the
kube-apiserver itself: the plane is started with an audit log (Metadata level), and every request
whose impersonated user is the controller's ServiceAccount is attributed to it by verb and resource.
This benchmark plays kubelet and the Ascend device plugin (annotation, then host IP + pod IP +
Running per pod), like tests/cluster/kubelet.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import REPO, emit, log, median, rss_mib

SA_USER = "system:serviceaccount:deeplab-system:deeplab-operator"
MERGE = "application/merge-patch+json"
READ_VERBS = {"get", "list"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


# -- rank table, pure ------------------------------------------------------------------------------------
def ranktable_figures(servers: int = 512, per_server: int = 8, repeats: int = 7) -> dict[str, Any]:
    """controller.ranktable.build + configmap_data for servers x per_server ranks: time and bytes."""
    from controller import ranktable

    workers = []
    for index in range(servers * per_server):
        host, local = index // per_server, index % per_server
        host_ip = f"172.16.{host // 250}.{host % 250 + 1}"
        device = {"device_id": str(local), "device_ip": f"192.168.{local}.{host % 250 + 1}"}
        annotation = json.dumps({"pod_name": f"w{index}", "server_id": host_ip, "devices": [device]})
        workers.append(
            ranktable.Worker(f"big-s16-a1-w{index}", index, f"10.{host}.0.{local}", host_ip, annotation)
        )
    times, data = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        table, ranks = ranktable.build(workers)
        data = ranktable.configmap_data("attempt", table, ranks)
        times.append(time.perf_counter() - start)
    sizes = {key: len(value.encode()) for key, value in data.items()}
    return {
        "ranks": len(workers),
        "servers": servers,
        "build_s": median(times),
        "bytes": sum(sizes.values()),
        "bytes_by_key": sizes,
        "configmap_limit_bytes": 1024 * 1024,
    }


# -- control plane with an audit log ------------------------------------------------------------------------
def start_plane(workdir: Path):
    """envtest.ControlPlane whose kube-apiserver also writes an audit log (bench-only subclass)."""
    from envtest.binaries import ensure_binaries
    from envtest.plane import ControlPlane

    audit_log = workdir / "audit.log"

    class AuditedPlane(ControlPlane):
        def _spawn(self, name: str, args: list[str]) -> None:
            if name == "kube-apiserver":
                policy = self.workdir / "audit-policy.yaml"
                policy.write_text(AUDIT_POLICY)
                args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}"]
            super()._spawn(name, args)

    plane = AuditedPlane(workdir / "plane", ensure_binaries())
    plane.start()
    return plane, audit_log


def kubectl(plane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


class AuditLog:
    """The controller's requests, read from the API server's audit log (complete requests only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def requests(self, namespace: str | None, since: float, until: float) -> Counter:
        counts: Counter = Counter()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete" or event.get("verb") == "watch":
                    continue
                if (event.get("impersonatedUser") or {}).get("username") != SA_USER:
                    continue
                ref = event.get("objectRef") or {}
                if namespace is not None and ref.get("namespace") != namespace:
                    continue
                received = _epoch(event["requestReceivedTimestamp"])
                if since <= received <= until:
                    resource = ref.get("resource", "?") + (
                        f"/{ref['subresource']}" if ref.get("subresource") else ""
                    )
                    counts[f"{event['verb']} {resource}"] += 1
        return counts


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def split(counts: Counter) -> tuple[int, int]:
    reads = sum(v for k, v in counts.items() if k.split()[0] in READ_VERBS)
    writes = sum(v for k, v in counts.items() if k.split()[0] in WRITE_VERBS)
    return reads, writes


# -- the controller process ---------------------------------------------------------------------------------
class ControllerProcess:
    """``python -m controller`` as deployed; stopped by PID (SIGTERM: it releases its Lease)."""

    def __init__(
        self, plane, workdir: Path, resync: float, log_interval: float, module: str = "controller"
    ) -> None:
        from envtest.plane import free_port

        self.port = free_port()
        self.log = open(workdir / f"controller-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable, "-m", module, "--kubeconfig", str(plane.kubeconfig), "--as", SA_USER,
            "--health-addr", f"127.0.0.1:{self.port}", "--resync-seconds", str(resync),
            "--log-interval", str(log_interval), "--retry-period", "1", "--log-level", "WARNING",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def wait_leader(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if "deeplab_leader 1.0" in self.metrics():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("controller did not become leader")

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- watching, as a client would ---------------------------------------------------------------
class Watcher:
    """Records when each object of a kind first appeared and when a predicate first held (client side)."""

    def __init__(self, list_call, namespace: str, predicate=None) -> None:
        self.list_call, self.namespace = list_call, namespace
        self.predicate = predicate or (lambda obj: False)
        self.added: dict[str, float] = {}
        self.matched: dict[str, float] = {}
        self.stop = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        while not self.stop.is_set():
            response = self.list_call(
                self.namespace, watch=True, timeout_seconds=30, _preload_content=False, resource_version="0"
            )
            self.started.set()
            for line in iter_resp_lines(response):
                if self.stop.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                now = time.time()
                obj = event.get("object") or {}
                name = (obj.get("metadata") or {}).get("name")
                if name is None or event.get("type") == "BOOKMARK":
                    continue
                self.added.setdefault(name, now)
                if name not in self.matched and self.predicate(obj):
                    self.matched[name] = now
            response.release_conn()

    def close(self) -> None:
        self.stop.set()


def table_complete(obj: dict[str, Any]) -> bool:
    try:
        return json.loads((obj.get("data") or {}).get("hccl.json", "{}")).get("status") == "completed"
    except ValueError:
        return False


def wait_until(what: str, check, timeout: float, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def training_manifest(name: str, namespace: str, workers: int, suspend: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "deeplab.io/v1alpha1",
        "kind": "DeepLabTraining",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "deeplab-worker:bench",
            "workers": workers,
            "npusPerServer": min(8, workers),
            "suspend": suspend,
            "volumes": {
                "data": {"persistentVolumeClaim": {"claimName": "voc-data"}},
                "checkpoints": {"persistentVolumeClaim": {"claimName": "ckpt"}},
            },
            "stages": [{"name": "s16", "dataFile": "vocaug.mindrecord0", "epochs": 2}],
        },
    }


def play_kubelet(core, namespace: str, pods: list[str], per_server: int = 8) -> float:
    """Device-plugin annotations for every pod, then host IP + pod IP + Running.

    Returns the time the last IP was written."""
    from controller.ranktable import DEVICE_ANNOTATION

    def host_of(index: int) -> str:
        return f"172.16.{index // per_server // 250}.{index // per_server % 250 + 1}"

    def annotate(index: int) -> None:
        host, local = host_of(index), index % per_server
        value = {"pod_name": pods[index], "server_id": host, "devices": [
            {"device_id": str(local), "device_ip": f"192.168.{local}.{host.rsplit('.', 1)[1]}"}]}  # fmt: skip
        body = {"metadata": {"annotations": {DEVICE_ANNOTATION: json.dumps(value)}}}
        core.patch_namespaced_pod(pods[index], namespace, body, _content_type=MERGE, _preload_content=False)

    def place(index: int) -> float:
        status = {
            "hostIP": host_of(index),
            "podIP": f"10.244.{index // 250}.{index % 250 + 1}",
            "phase": "Running",
        }
        core.patch_namespaced_pod_status(
            pods[index], namespace, {"status": status}, _content_type=MERGE, _preload_content=False
        )
        return time.time()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(annotate, range(len(pods))))
        return max(pool.map(place, range(len(pods))))


def attempt(plane, admin, audit: AuditLog, workers: int, timeout: float) -> dict[str, Any]:
    """One training of ``workers`` pods: apply -> all pods -> IPs -> table -> Running, timed and counted."""
    from kubernetes import client

    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    namespace, name = f"bench-{workers}", f"w{workers}"
    kubectl(plane, "create", "namespace", namespace)
    wait_until("default ServiceAccount", lambda: _exists(core, namespace), 30, 0.2)
    pods = Watcher(core.list_namespaced_pod, namespace)
    maps = Watcher(core.list_namespaced_config_map, namespace, table_complete)
    pods.started.wait(10)
    maps.started.wait(10)
    try:
        applied = time.time()
        kubectl(plane, "apply", "-f", "-", stdin=json.dumps(training_manifest(name, namespace, workers)))
        all_pods = wait_until(f"{workers} pods", lambda: len(pods.added) >= workers, timeout)
        last_ip = play_kubelet(core, namespace, sorted(pods.added))
        cm = f"rings-config-{name}"
        table = wait_until("complete rank table", lambda: cm in maps.matched, timeout)
        table = maps.matched[cm]
        running = wait_until("Running", lambda: _phase(custom, namespace, name) == "Running", timeout, 0.2)
    finally:
        pods.close()
        maps.close()
    time.sleep(2.0)  # let the reconciles triggered by the last events finish before counting
    counts = audit.requests(namespace, applied - 1, time.time())
    reads, writes = split(counts)
    return {
        "workers": workers,
        "namespace": namespace,
        "name": name,
        "pods_s": all_pods - applied,
        "table_after_last_ip_s": table - last_ip,
        "running_after_last_ip_s": running - last_ip,
        "reads": reads,
        "writes": writes,
        "requests": dict(sorted(counts.items())),
    }


def _exists(core, namespace: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        core.read_namespaced_service_account("default", namespace, _preload_content=False)
        return True
    except ApiException:
        return False


def _phase(custom, namespace: str, name: str) -> str | None:
    response = custom.get_namespaced_custom_object(
        "deeplab.io", "v1alpha1", namespace, "deeplabtrainings", name, _preload_content=False
    )
    return (json.loads(response.data).get("status") or {}).get("phase")


def resync_writes(audit: AuditLog, namespaces: list[str], resync: float) -> dict[str, Any]:
    """Requests by the controller while nothing changes: two resync periods over Running trainings."""
    start = time.time()
    time.sleep(2 * resync + 1.0)
    counts: Counter = Counter()
    for namespace in namespaces:
        counts += audit.requests(namespace, start, time.time())
    reads, writes = split(counts)
    return {
        "window_s": 2 * resync + 1.0,
        "resyncs": 2,
        "reads": reads,
        "writes": writes,
        "requests": dict(counts),
    }


def memory_scale(plane, admin, workdir: Path, total: int, steps: int = 4) -> dict[str, Any]:
    """A fresh controller's RSS at 0 .. ``total`` trainings (suspended: no pods), each step reconciled."""
    from kubernetes import client

    custom = client.CustomObjectsApi(admin)
    namespace = "bench-memory"
    kubectl(plane, "create", "namespace", namespace)
    controller = ControllerProcess(plane, workdir, resync=300.0, log_interval=300.0)
    points = []
    try:
        controller.wait_leader()
        time.sleep(2.0)
        points.append((0, controller.rss_mib()))
        created = 0
        for step in range(1, steps + 1):
            target = total * step // steps

            def create(index: int) -> None:
                body = training_manifest(f"m{index:05d}", namespace, 1, suspend=True)
                custom.create_namespaced_custom_object(
                    "deeplab.io", "v1alpha1", namespace, "deeplabtrainings", body, _preload_content=False
                )

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(create, range(created, target)))
            created = target
            wait_until(
                f"{target} trainings reconciled",
                lambda t=target: _suspended(custom, namespace) >= t,
                600,
                1.0,
            )
            points.append((target, controller.rss_mib()))
            log(f"memory: {target} trainings -> controller RSS {points[-1][1]:.0f} MiB")
    finally:
        controller.stop()
    per_training_kib = (points[-1][1] - points[0][1]) * 1024 / max(total, 1)
    return {"points": points, "per_training_kib": per_training_kib, "rss_mib_at_total": points[-1][1]}


def _suspended(custom, namespace: str) -> int:
    response = custom.list_namespaced_custom_object(
        "deeplab.io", "v1alpha1", namespace, "deeplabtrainings", _preload_content=False
    )
    items = json.loads(response.data)["items"]
    return sum(1 for item in items if (item.get("status") or {}).get("phase") == "Suspended")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from controller import kube

    result: dict[str, Any] = {"ranktable": ranktable_figures()}
    log(f"rank table: {result['ranktable']['build_s'] * 1000:.1f} ms, {result['ranktable']['bytes']} bytes")
    if args.ranktable_only:
        return result
    with tempfile.TemporaryDirectory(prefix="deeplab-bench-") as tmp:
        workdir = Path(tmp)
        plane, audit_path = start_plane(workdir)
        controller = None
        try:
            kubectl(plane, "apply", "-k", str(REPO / "manifests"))
            kubectl(
                plane,
                "wait",
                "--for=condition=Established",
                "crd/deeplabtrainings.deeplab.io",
                "--timeout=60s",
            )
            admin = kube.api_client(str(plane.kubeconfig))
            audit = AuditLog(audit_path)
            controller = ControllerProcess(plane, workdir, args.resync, 30.0, args.controller_module)
            controller.wait_leader()
            attempts = []
            for workers in args.sizes:
                attempts.append(attempt(plane, admin, audit, workers, timeout=args.timeout))
                log(
                    f"operator {workers} workers: "
                    + json.dumps({k: v for k, v in attempts[-1].items() if k != "requests"})
                )
            result["attempts"] = attempts
            result["resync"] = resync_writes(audit, [a["namespace"] for a in attempts], args.resync)
            log(f"resync: {result['resync']}")
            result["controller_rss_mib_after_attempts"] = controller.rss_mib()
            controller.stop()
            controller = None
            if args.trainings:
                result["memory"] = memory_scale(plane, admin, workdir, args.trainings)
        finally:
            if controller is not None:
                controller.stop()
            plane.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--trainings", type=int, default=1000, help="for the memory figure (0: skip)")
    parser.add_argument("--resync", type=float, default=5.0, help="controller --resync-seconds")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--ranktable-only", action="store_true")
    parser.add_argument("--controller-module", default="controller", help="e.g. bench.controller_parallel")
    parser.add_argument("--quick", action="store_true", help="8 and 64 workers, 200 trainings")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.trainings = [8, 64], 200
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    emit(run(args))


if __name__ == "__main__":
    main()
