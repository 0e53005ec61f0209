"""Playing kubelet (and the Ascend device plugin) against the real API server.

There is no kubelet in the test control plane: pods stay Pending forever unless a test writes
their status (node IP, pod IP, phase, container termination) through the status subresource,
exactly what a kubelet reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import client
from sim import result_message  # noqa: F401 - the one result builder, re-exported for the cluster tests

from controller import api, kube, names
from controller.ranktable import DEVICE_ANNOTATION
from controller.runtime import Controller, Options
from envtest.plane import free_port

SA_USER = "system:serviceaccount:deeplab-system:deeplab-operator"
TWO_HOSTS = ("172.16.0.1", "172.16.0.2")
MERGE = "application/merge-patch+json"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll until ``check()`` is truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")


class Kubelet:
    def __init__(self, api_client_, namespace: str):
        self.core = client.CoreV1Api(api_client_)
        self.custom = client.CustomObjectsApi(api_client_)
        self.ns = namespace

    # -- reading -------------------------------------------------------------------------------------
    def pods(self, training: str | None = None, **labels: str) -> list[dict[str, Any]]:
        selector = [f"{names.LABEL_TRAINING}={names.training_label(training)}"] if training else []
        selector += [f"deeplab.io/{key}={value}" for key, value in labels.items()]
        response = self.core.list_namespaced_pod(
            self.ns, label_selector=",".join(selector), _preload_content=False
        )
        items = json.loads(response.data)["items"]
        live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return sorted(live, key=lambda p: p["metadata"]["name"])

    def training(self, name: str) -> dict[str, Any]:
        response = self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.ns, api.PLURAL, name, _preload_content=False
        )
        return json.loads(response.data)

    def pod_name(self, training: str, stage: str, attempt: int, rank: int) -> str:
        """Worker ``rank``'s pod name, as the operator derives it from the training's uid."""
        uid = self.training(training)["metadata"]["uid"]
        return names.worker_name(training, uid, stage, attempt, rank)

    def status(self, name: str) -> dict[str, Any]:
        return self.training(name).get("status") or {}

    def configmap(self, name: str) -> dict[str, Any] | None:
        try:
            response = self.core.read_namespaced_config_map(
                names.configmap_name(name), self.ns, _preload_content=False
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return json.loads(response.data)

    def table(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        cm = self.configmap(name)
        if cm is None:
            return {}, {}
        return json.loads(cm["data"]["hccl.json"]), json.loads(cm["data"]["ranks.json"])

    def events(self, training: str) -> list[dict[str, Any]]:
        """The training's events, read through the API by the object they are about (never by name or
        by `kubectl describe` text, where "Started" would also match "StageStarted")."""
        selector = f"involvedObject.name={training},involvedObject.kind=DeepLabTraining"
        listed = self.core.list_namespaced_event(self.ns, field_selector=selector, _preload_content=False)
        return json.loads(listed.data)["items"]

    def reasons(self, training: str) -> list[str]:
        """The reasons of the training's events, in the order they were created."""
        # resourceVersions grow with every write; timestamps have one-second ties
        found = sorted(self.events(training), key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [e["reason"] for e in found]

    # -- writing, as kubelet and device plugin would ------------------------------------------------------
    def bind(self, pod: str, node: str) -> None:
        """What the scheduler does: the pod's binding subresource sets spec.nodeName."""
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}  # fmt: skip
        self.core.create_namespaced_pod_binding(pod, self.ns, body, _preload_content=False)

    def annotate_devices(self, pod: str, server_id: str, devices: list[tuple[int, str]]) -> None:
        """The Ascend device plugin's allocation annotation (FACTS 5; ascend-device-plugin
        pkg/common/common.go GetPodConfiguration): chips in ascending physical id."""
        value = {
            "pod_name": pod,
            "server_id": server_id,
            "devices": [{"device_id": str(i), "device_ip": ip} for i, ip in sorted(devices)],
        }
        patch = {"metadata": {"annotations": {DEVICE_ANNOTATION: json.dumps(value)}}}
        self.core.patch_namespaced_pod(pod, self.ns, patch, _content_type=MERGE)

    def patch_status(self, pod: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(pod, self.ns, {"status": status}, _content_type=MERGE)

    def place(self, pods: list[dict[str, Any]], hosts: list[str], device_plugin: bool = True) -> None:
        """Bind pod i to node hosts[i]: device annotation first (the plugin writes it at allocation),
        then host IP, pod IP and phase Running."""
        for index, (pod, host) in enumerate(zip(pods, hosts, strict=True)):
            name = pod["metadata"]["name"]
            local = hosts[:index].count(host)
            if device_plugin:
                value = {
                    "pod_name": name,
                    "server_id": host,
                    "devices": [
                        {"device_id": str(local), "device_ip": f"192.168.{local}.{host.rsplit('.', 1)[1]}"}
                    ],
                }
                self.core.patch_namespaced_pod(
                    name, self.ns, {"metadata": {"annotations": {DEVICE_ANNOTATION: json.dumps(value)}}},
                    _content_type=MERGE,
                )  # fmt: skip
            self.patch_status(
                name, {"hostIP": host, "podIP": f"10.244.{host.rsplit('.', 1)[1]}.{index + 10}"}
            )
        for pod in pods:
            self.patch_status(pod["metadata"]["name"], {"phase": "Running"})

    def run_attempt(self, training: str, attempt: int = 1, hosts: tuple[str, ...] = TWO_HOSTS) -> list[dict]:
        """Wait for the attempt's worker pods, place them (device plugin included) and wait for Running."""

        def created():
            pods = self.pods(training, attempt=str(attempt))
            return len(pods) == len(hosts) and pods

        pods = wait_for(f"attempt {attempt}'s pods", created)
        self.place(pods, list(hosts))
        wait_for("Running", lambda: self.status(training).get("phase") == "Running")
        return pods

    def terminate(self, pod: str, code: int, message: str = "", reason: str | None = None) -> None:
        self.patch_status(pod, terminated_status(code, message, reason))


def terminated_status(code: int, message: str = "", reason: str | None = None) -> dict[str, Any]:
    """A finished worker's pod status, as kubelet reports it (the termination message included)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    state = {
        "terminated": {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "message": message,
            "startedAt": now,
            "finishedAt": now,
        }
    }
    container = {"name": "ascend", "image": "worker", "imageID": "", "ready": False, "restartCount": 0}
    return {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [{**container, "state": state}],
    }


def training_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body = {
        "image": "deeplab-worker:test",
        "workers": 4,
        "npusPerServer": 2,
        "volumes": {
            "data": {"persistentVolumeClaim": {"claimName": "voc-data"}},
            "checkpoints": {"persistentVolumeClaim": {"claimName": "ckpt"}},
            "pretrained": {"persistentVolumeClaim": {"claimName": "models"}, "path": "resnet101.ckpt"},
        },
        "stages": [
            {"name": "s16", "dataFile": "vocaug.mindrecord0", "epochs": 2},
            {"name": "s8", "model": "deeplab_v3_s8", "dataFile": "vocaug.mindrecord0", "epochs": 2},
        ],
        **spec,
    }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


@contextmanager
def running_controller(kubeconfig, name: str, resync_seconds: float = 10.0) -> Iterator[Controller]:
    """The controller in a thread under its ServiceAccount's RBAC (impersonated), leader-elected, with
    client-go's default Lease timings (tight ones risk a spurious lost Lease on 2 busy cores)."""
    options = Options(
        log_interval=1.0,
        resync_seconds=resync_seconds,
        watch_timeout=20,
        lease_duration=15,
        renew_deadline=10,
        retry_period=1.0,
        identity=f"{name}-{uuid.uuid4().hex[:6]}",
        health_addr="127.0.0.1:0",
    )
    instance = Controller(kube.api_client(str(kubeconfig), as_user=SA_USER), options)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def one_stage_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A two-worker, one-stage training, one NPU per server, so its workers go to two nodes (TWO_HOSTS);
    spec fields may override all three."""
    stages = [{"name": "only", "dataFile": "d.mindrecord0", "epochs": 2}]
    return training_manifest(name, namespace, **{"workers": 2, "npusPerServer": 1, "stages": stages, **spec})


def apply(kubectl, manifest: dict[str, Any]) -> None:
    result = kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    assert result.returncode == 0, result.stderr


class ControllerProcess:
    """`python -m controller run` as a child process (one Deployment replica), stopped by its PID only."""

    def __init__(
        self, identity: str, kubeconfig, logdir, as_user: str | None = SA_USER, *extra: str, lease: str
    ):
        """``lease``: the Lease the replicas of one test share, named for that test alone, so a Lease
        another test left behind (held until it expires) never delays this one."""
        self.identity, self.port = identity, free_port()
        self.log = logdir / f"{identity}.log"
        cmd = [
            sys.executable, "-m", "controller", "run", "--kubeconfig", str(kubeconfig),
            "--identity", identity, "--health-addr", f"127.0.0.1:{self.port}", "--leader-elect",
            "--lease-name", lease, "--lease-duration", "5", "--renew-deadline", "4", "--retry-period", "0.5",
            "--log-interval", "2", "--resync-seconds", "5", "--watch-timeout", "20", "--log-level", "DEBUG",
            *(["--as", as_user] if as_user else []), *extra,
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def get(self, path: str) -> str:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2).read().decode()
        except OSError:
            return ""

    def metric(self, name: str) -> float:
        """Sum of a metric's samples (0 when absent)."""
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def lease_holder(admin, namespace: str = "deeplab-system", name: str = "deeplab-operator") -> str:
    try:
        lease = client.CoordinationV1Api(admin).read_namespaced_lease(name, namespace, _preload_content=False)
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise
    return (json.loads(lease.data).get("spec") or {}).get("holderIdentity") or ""
