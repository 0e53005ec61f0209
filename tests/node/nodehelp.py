"""Helpers of the real-node tests: the samples localised to this machine, a recorder of every state a
training's pods pass through (deleted ones included), and what the node's containerd still holds."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from kubelet import training_manifest, wait_for
from kubernetes import watch

from controller import names
from envtest.node import socket
from envtest.plane import ControlPlane

NAMESPACE = "default"
CHILD_KINDS = ("pods", "configmaps", "services")  # all a CPU training makes (no Volcano here)


def cpu_training(name: str, image: str, base: Path, epochs: int = 1, **spec) -> dict:
    """A one-stage, two-worker CPU training on the session's smoke data, small enough for 2 cores."""
    stage = {
        "name": "s16", "dataFile": "smoke.mindrecord0", "epochs": epochs, "batchSize": 2, "cropSize": 33,
        "baseLR": 0.01, "saveSteps": 1000, "keepCheckpointMax": 2, "logSteps": 1,
    }  # fmt: skip
    template = {
        "env": [{"name": "ONEDNN_MAX_CPU_ISA", "value": "AVX2"}],
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}},
        **spec.pop("template", {}),
    }
    volumes = {
        "data": {"hostPath": {"path": str(base / "data"), "type": "Directory"}},
        "checkpoints": {"hostPath": {"path": str(base / "checkpoints"), "type": "Directory"}},
    }
    spec = {"launcher": "dynamicCluster", "backoffLimit": 0, **spec}
    return training_manifest(
        name, NAMESPACE, image=image, imagePullPolicy="Never", workers=2, npuResource="",
        volumes=volumes, stages=[stage], template=template, **spec,
    )  # fmt: skip


def get_json(node_kubectl, *args: str) -> dict:
    """``kubectl get ... -o json``, or {} when it fails (not found, or not yet)."""
    got = node_kubectl("get", *args, "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else {}


def finished_status(node_kubectl, name: str, seen=lambda status: None, timeout: float = 900) -> dict:
    """Wait for the training to end; its status must say Succeeded. ``seen`` gets every status read
    on the way (one a second)."""

    def finished() -> dict | None:
        status = get_json(node_kubectl, "dlt", name, "-n", NAMESPACE).get("status") or {}
        seen(status)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for("the training to finish", finished, timeout, 1)
    if status["phase"] != "Succeeded":
        events = node_kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp").stdout
        stages = [(s["name"], s.get("message")) for s in status.get("stages") or []]
        why = f"{status.get('reason')}: {status.get('message')}\nstages: {stages}\nevents:\n{events[-4000:]}"
        pytest.fail(f"training {name} ended {status['phase']}: {why}", pytrace=False)
    return status


def owned_children(node_kubectl, namespace: str, uid: str) -> list[str]:
    """``kind/name`` of every object in ``namespace`` controlled by the training with this uid."""
    found = []
    for kind in CHILD_KINDS:
        for item in get_json(node_kubectl, kind, "-n", namespace).get("items", []):
            refs = item["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                found.append(f"{kind}/{item['metadata']['name']}")
    return found


class PodRecorder:
    """Watches a training's pods (by its label) in a thread and keeps the newest copy of each, by uid.

    A deleted pod's DELETED event carries its last status (the container's exit code after SIGTERM),
    which a poll could miss: the kubelet reports it and the object is gone a moment later.
    """

    def __init__(self, api_client, namespace: str, training: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.selector = f"{names.LABEL_TRAINING}={names.training_label(training)}"
        self.pods: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-recorder", daemon=True)

    def __enter__(self) -> PodRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        """List, then watch on from the newest resourceVersion seen, so no event falls between two
        watches; list again only when the version has expired (410) or the server failed."""
        version = None
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=version,
                    timeout_seconds=5,
                    _preload_content=False,
                )
                for event in stream:
                    pod = event["raw_object"]
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = pod["metadata"].get("resourceVersion") or version
                    self.pods[pod["metadata"]["uid"]] = pod
                    if event["type"] == "DELETED":
                        self.deleted.add(pod["metadata"]["uid"])
                    if self._stop.is_set():
                        return
            except Exception:  # the server is busy or restarting: list and watch again
                version = None
                self._stop.wait(0.5)

    def matching(self, labels: dict[str, str], live: bool = False) -> list[dict[str, Any]]:
        """The newest copies of the pods carrying ``labels`` (``live``: not deleted yet)."""
        found = [p for p in list(self.pods.values()) if labels.items() <= p["metadata"]["labels"].items()]
        return [p for p in found if not (live and p["metadata"]["uid"] in self.deleted)]

    def report(self) -> str:
        """One line per pod: name, phase, the container's exit code and the end of its message."""
        lines = []
        for pod in list(self.pods.values()):
            end = terminated(pod)
            message = (end.get("message") or "")[-600:].replace("\n", " | ")
            phase = (pod.get("status") or {}).get("phase")
            lines.append(f"{pod['metadata']['name']} {phase} exit={end.get('exitCode')} {message}")
        return "\n".join(sorted(lines))

    def container_ids(self) -> set[str]:
        """containerd ids of every container these pods ran (``containerd://<id>`` in their status)."""
        ids = set()
        for pod in list(self.pods.values()):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if status.get("containerID"):
                    ids.add(status["containerID"].split("://", 1)[1])
        return ids


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    """The worker container's terminated state ({} while it runs)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if "terminated" in state:
            return state["terminated"]
    return {}


def ctr(node: ControlPlane, *args: str) -> subprocess.CompletedProcess:
    """The node's containerd, CRI namespace (``ctr -n k8s.io``)."""
    command = ["ctr", "--address", str(socket(node)), "-n", "k8s.io", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def node_leftovers(node: ControlPlane, pod_uids: set[str], container_ids: set[str]) -> list[str]:
    """What containerd still holds of these pods: containers (sandboxes too) labelled with their uids,
    and tasks (running processes) of their containers."""
    left = []
    for uid in sorted(pod_uids):
        listed = ctr(node, "containers", "ls", "-q", f'labels."io.kubernetes.pod.uid"=={uid}')
        assert listed.returncode == 0, listed.stderr
        left += [f"container {cid} of pod {uid}" for cid in listed.stdout.split()]
    tasks = ctr(node, "tasks", "ls", "-q")
    assert tasks.returncode == 0, tasks.stderr
    left += [f"task {tid}" for tid in tasks.stdout.split() if tid in container_ids]
    return left


def task_pid(node: ControlPlane, container_id: str) -> int | None:
    """The host PID of a running container's process (``ctr tasks ls``: TASK PID STATUS)."""
    for line in ctr(node, "tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == container_id and fields[2] == "RUNNING":
            return int(fields[1])
    return None


def environ(pid: int) -> dict[str, str]:
    """A process's environment as the kernel holds it ({} once it has exited)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def delete_and_check_nothing_is_left(node, node_kubectl, pods: PodRecorder, name: str) -> None:
    """``kubectl delete dlt``: no object the training owned, no container of its pods on the node."""
    uid = get_json(node_kubectl, "dlt", name, "-n", NAMESPACE)["metadata"]["uid"]
    assert owned_children(node_kubectl, NAMESPACE, uid)  # it had children to lose
    deleted = node_kubectl("delete", "dlt", name, "-n", NAMESPACE, "--timeout=120s", timeout=150)
    assert deleted.returncode == 0, deleted.stderr
    wait_for("every child gone", lambda: not owned_children(node_kubectl, NAMESPACE, uid), 180, 2)
    assert len(pods.pods) >= 2 and pods.container_ids(), "the recorder saw the training's pods run"
    # the kubelet stops the containers at once and removes them and their sandboxes in its GC (~1 min)
    wait_for(
        "containerd to hold nothing of the training's pods",
        lambda: not node_leftovers(node, set(pods.pods), pods.container_ids()),
        240,
        5,
    )
