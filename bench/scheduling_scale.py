"""The operator at Atlas scale with a real scheduler: 128 kwok nodes x 8 NPUs, one 1,024-worker training.

    python -m bench.scheduling_scale [--nodes 128] [--workers 1024] [--npus-per-pod 1] [--timeout 900]

The plane is envtest/sched.py's: kube-scheduler binds every pod, kwok runs them on simulated Atlas 800
nodes (pod IPs from each node's CIDR) and the simulated device plugin (envtest/device_plugin.py)
allocates their chips. The controller runs as its own process (``python -m controller run``, under
its ServiceAccount by impersonation) so its RSS is its own; its writes are counted from the API
server's audit log. Phases, from ``kubectl apply``: every pod created; every pod bound; every pod
Running; the rank table completed. Prints one RESULT line (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import REPO, emit, log, rss_mib

SA_USER = "system:serviceaccount:deeplab-system:deeplab-operator"


def _manifest(namespace: str, workers: int, npus_per_pod: int) -> dict[str, Any]:
    empty = {"emptyDir": {}}
    return {
        "apiVersion": "deeplab.io/v1alpha1",
        "kind": "DeepLabTraining",
        "metadata": {"name": "scale", "namespace": namespace},
        "spec": {
            "image": "deeplab-worker:bench",
            "workers": workers,
            "npusPerServer": 8,
            "npusPerPod": npus_per_pod,
            "volumes": {"data": empty, "checkpoints": empty},
            "stages": [{"name": "only", "dataFile": "d.mindrecord0", "epochs": 1}],
            "pendingTimeoutSeconds": 0,
        },
    }


class RssSampler(threading.Thread):
    """The controller's peak VmRSS, sampled every 0.2 s (VmHWM would include its start-up)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return
            time.sleep(0.2)


def _wait_ready(url: str, controller: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and controller.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the controller did not become ready ({url}, exit {controller.poll()})")


def _pods(core, namespace: str) -> list[dict[str, Any]]:
    return json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]


def _table(core, namespace: str) -> dict[str, Any] | None:
    from kubernetes import client

    try:
        found = core.read_namespaced_config_map("rings-config-scale", namespace, _preload_content=False)
    except client.ApiException:
        return None
    return json.loads(found.data).get("data") or {}


def run(nodes: int, workers: int, npus_per_pod: int, timeout: float) -> dict[str, Any]:
    from kubernetes import client

    from controller import kube
    from envtest import audit, sched
    from envtest.device_plugin import DevicePlugin
    from envtest.plane import free_port

    workdir = Path(tempfile.mkdtemp(prefix="sched-scale-"))
    started = time.monotonic()
    plane = sched.new_sched_plane(workdir / "plane")
    plane.start(timeout=300)
    controller = plugin = sampler = None
    try:
        log(f"plane up in {time.monotonic() - started:.0f}s; adding {nodes} nodes")
        admin = kube.api_client(str(plane.kubeconfig))
        core = client.CoreV1Api(admin)
        t0 = time.monotonic()
        sched.add_nodes(core, sched.atlas_nodes(nodes))
        nodes_s = time.monotonic() - t0
        kubectl = [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig)]
        subprocess.run([*kubectl, "apply", "-k", str(REPO / "manifests")], check=True, capture_output=True)
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "crd/deeplabtrainings.deeplab.io"],
            check=True,
            capture_output=True,
        )
        subprocess.run([*kubectl, "create", "namespace", "scale"], check=True, capture_output=True)
        plugin = DevicePlugin(admin)
        plugin.start()
        log_path = workdir / "controller.log"
        port = free_port()
        cmd = [
            sys.executable, "-m", "controller", "run", "--kubeconfig", str(plane.kubeconfig), "--as", SA_USER,
            "--health-addr", f"127.0.0.1:{port}", "--log-interval", "5", "--resync-seconds", "30",
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            controller = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        sampler = RssSampler(controller.pid)
        sampler.start()
        _wait_ready(f"http://127.0.0.1:{port}/readyz", controller)  # informers synced: t0 is the apply
        pods_expected = workers // npus_per_pod
        manifest = json.dumps(_manifest("scale", workers, npus_per_pod))
        t_apply = time.monotonic()
        subprocess.run(
            [*kubectl, "apply", "-f", "-"], input=manifest, text=True, check=True, capture_output=True
        )
        phases: dict[str, float] = {}
        table: dict[str, Any] = {}
        while time.monotonic() - t_apply < timeout:
            pods = [] if "running" in phases else _pods(core, "scale")
            now = time.monotonic() - t_apply
            if len(pods) == pods_expected:
                phases.setdefault("created", now)
                if all(p["spec"].get("nodeName") for p in pods):
                    phases.setdefault("bound", now)
                if all((p.get("status") or {}).get("phase") == "Running" for p in pods):
                    phases.setdefault("running", now)
            data = _table(core, "scale") or {}
            if data.get("hccl.json") and json.loads(data["hccl.json"]).get("status") == "completed":
                phases["table"] = now
                table = data
                break
            time.sleep(1.0)  # listing 1,024 pods costs the API server (and this process) too
        if "table" not in phases:
            raise RuntimeError(
                f"no completed rank table within {timeout:.0f}s (phases so far: {phases}; device plugin: "
                f"{plugin.allocated} written, errors {plugin.errors[:3]}, refused {len(plugin.refused)})"
            )
        controller_writes = audit.writes(audit.events(plane.audit_log), user=SA_USER)
        hccl = table["hccl.json"]
        servers = {entry["server_id"] for entry in json.loads(hccl)["server_list"]}
        return {
            "nodes": nodes,
            "workers": workers,
            "pods": pods_expected,
            "nodes_register_s": round(nodes_s, 2),
            "apply_to_created_s": round(phases["created"], 2),
            "apply_to_bound_s": round(phases["bound"], 2),
            "apply_to_running_s": round(phases["running"], 2),
            "apply_to_table_s": round(phases["table"], 2),
            "controller_peak_rss_mib": round(sampler.peak, 1),
            "controller_writes": len(controller_writes),
            "table_bytes": len(hccl.encode()),
            "table_servers": len(servers),
            "plugin_allocations": plugin.allocated,
        }
    finally:
        if sampler is not None:
            sampler.stop.set()
        if controller is not None and controller.poll() is None:
            controller.terminate()  # our own child, by PID
            controller.wait(30)
        if plugin is not None:
            plugin.stop()
        plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1024)
    parser.add_argument("--npus-per-pod", type=int, default=1, choices=(1, 2, 4, 8))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    emit(run(args.nodes, args.workers, args.npus_per_pod, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
