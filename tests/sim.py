"""An in-memory stand-in for the API server and kubelet, driving the pure plan step by step.

It applies a plan's actions the way the API server would (creates, deletes, conditional
ConfigMap replaces) and lets a test play kubelet (place, run, finish pods) in between.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from controller import names
from controller.api import Training
from controller.kube import Conflict, NameTaken
from controller.plan import Create, Delete, DeleteTraining, Observed, Plan, ReplaceConfigMap, plan
from controller.ranktable import DEVICE_ANNOTATION
from controller.resources import describe_owner, owned_by

START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


UID = "0123456789abcdef"  # every simulated training's uid
CLUSTER_IP = "10.96.0.10"  # the virtual IP the simulated API server gives a Service


def pod_name(stage: str, attempt: int, rank: int | None, training: str = "voc") -> str:
    """A worker's (or, for rank None, the scheduler's) pod name, as the operator derives it."""
    if rank is None:
        return names.scheduler_name(training, UID, stage, attempt)
    return names.worker_name(training, UID, stage, attempt, rank)


def node_name(host: str) -> str:
    """The node a simulated host IP belongs to."""
    return "node-" + host.rsplit(".", 1)[-1]


def stage(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "dataFile": "vocaug/train.mindrecord0", "epochs": 10, **fields}


def training_obj(name: str = "voc", **spec: Any) -> dict[str, Any]:
    body = {
        "image": "worker:1",
        "workers": 4,
        "npusPerServer": 2,
        "volumes": {
            "data": {"persistentVolumeClaim": {"claimName": "data"}},
            "checkpoints": {"persistentVolumeClaim": {"claimName": "ckpt"}},
            "pretrained": {"persistentVolumeClaim": {"claimName": "models"}, "path": "resnet101.ckpt"},
        },
        "stages": [stage("s16-vocaug"), stage("s8-vocaug", model="deeplab_v3_s8"), stage("s8-voctrain")],
    }
    body.update(spec)
    return {
        "apiVersion": "deeplab.io/v1alpha1",
        "kind": "DeepLabTraining",
        "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1},
        "spec": body,
    }


def result_message(checkpoint: str = "/checkpoints/voc/s/final.ckpt", miou: float | None = 0.75) -> str:
    return "some log line\n" + json.dumps(
        {"event": "result", "checkpoint": checkpoint, "epochs": 10, "steps": 100, "loss": 0.25, "miou": miou}
    )


class Sim:
    def __init__(self, obj: dict[str, Any] | None = None):
        self.obj = obj or training_obj()
        self.pods: dict[str, dict[str, Any]] = {}
        self.configmap: dict[str, Any] | None = None
        self.service: dict[str, Any] | None = None
        self.podgroup: dict[str, Any] | None = None
        self.nodes: dict[str, dict[str, Any]] = {}  # what the controller reads of a failed pod's node
        self.deleted_training = False
        self.now = START
        self.history: list[Plan] = []
        self.cm_writes = 0
        self.conflicts: list[str] = []

    @property
    def status(self) -> dict[str, Any]:
        return self.obj.get("status") or {}

    def training(self) -> Training:
        return Training.from_obj(self.obj)

    # -- one reconcile ------------------------------------------------------------------------------
    def observe(self, logs: list[str] | None = None) -> Observed:
        """What the controller reads: copies, so a plan can never change the world by mutation."""
        return Observed(
            pods=copy.deepcopy(list(self.pods.values())),
            configmap=copy.deepcopy(self.configmap),
            service=self.service,
            podgroup=self.podgroup,
            logs=logs,
            nodes=copy.deepcopy(self.nodes),
        )

    def step(self, logs: list[str] | None = None, advance: float = 1.0) -> Plan:
        self.now += timedelta(seconds=advance)
        result = plan(self.training(), self.observe(logs), self.now)
        self.obj["status"] = result.status
        self.history.append(result)
        try:
            for action in result.actions:
                self.apply(action)
        except Conflict as conflict:  # the runtime re-reads and plans again; the rest is not applied
            self.conflicts.append(str(conflict))
        return result

    def apply(self, action) -> None:
        """What the API server (through controller/kube.py) does with an action, refusals included:
        a create meets an existing object (409: kept as it is; the controller stops if it is not the
        training's: NameTaken), a replace with a stale resourceVersion is a Conflict, a delete of a
        missing object or with another uid is a no-op (404/409 are ignored by the controller)."""
        if isinstance(action, Create):
            self.create(copy.deepcopy(action.manifest))
        elif isinstance(action, Delete) and action.kind == "Service":
            if self.service is not None and self.service["metadata"].get("uid") == action.uid:
                self.service = None
        elif isinstance(action, Delete):
            pod = self.pods.get(action.name)
            if pod is not None and pod["metadata"]["uid"] == action.uid:
                del self.pods[action.name]
        elif isinstance(action, ReplaceConfigMap):
            if (
                self.configmap is None
                or action.resource_version != self.configmap["metadata"]["resourceVersion"]
            ):
                raise Conflict(f"configmap {action.manifest['metadata']['name']}: stale resourceVersion")
            manifest = copy.deepcopy(action.manifest)
            manifest["metadata"]["resourceVersion"] = str(int(action.resource_version) + 1)
            self.configmap = manifest
            self.cm_writes += 1
        elif isinstance(action, DeleteTraining):
            self.deleted_training = True

    def create(self, manifest: dict[str, Any]) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        existing = {
            "Pod": self.pods.get(name),
            "ConfigMap": self.configmap,
            "Service": self.service,
            "PodGroup": self.podgroup,
        }[kind]
        if existing is not None:  # AlreadyExists: the server keeps the old object
            if not owned_by(existing, self.obj["metadata"]["uid"]):
                raise NameTaken(kind, name, describe_owner(existing))
            return
        manifest["metadata"]["uid"] = uuid.uuid4().hex
        manifest["metadata"]["resourceVersion"] = "1"
        if kind == "Pod":
            manifest["status"] = {"phase": "Pending"}
            self.pods[name] = manifest
        elif kind == "ConfigMap":
            self.configmap = manifest
            self.cm_writes += 1
        elif kind == "Service":
            if manifest["spec"].get("clusterIP") != "None":  # the API server allocates the virtual IP
                manifest["spec"]["clusterIP"] = CLUSTER_IP
            self.service = manifest
        else:
            self.podgroup = manifest

    def settle(self, limit: int = 10) -> Plan:
        """Reconcile until nothing is left to do (what the work queue achieves)."""
        for _ in range(limit):
            result = self.step()
            if not result.actions and not result.status_changed:
                return result
        raise AssertionError("the plan did not settle: " + json.dumps(self.status, indent=1))

    # -- playing kubelet ----------------------------------------------------------------------------
    def current(self, role: str = names.ROLE_WORKER) -> list[dict[str, Any]]:
        pods = [p for p in self.pods.values() if p["metadata"]["labels"][names.LABEL_ROLE] == role]
        return sorted(pods, key=lambda p: int(p["metadata"]["labels"].get(names.LABEL_RANK, "0")))

    def place(self, hosts: list[str | None], device_plugin: bool = True) -> None:
        """Put worker i on node hosts[i] (None: not scheduled yet) with a pod IP and the device annotation."""
        for index, pod in enumerate(self.current()):
            host = hosts[index]
            if host is None:
                continue
            pod["status"].update(hostIP=host, podIP=f"10.1.{host.rsplit('.', 1)[-1]}.{index + 10}")
            pod["spec"]["nodeName"] = node_name(host)
            if device_plugin:
                local = sum(1 for h in hosts[:index] if h == host)
                per_pod = self.training().spec.npus_per_pod
                if per_pod == 1:
                    devices = [{"device_id": str(local + 4), "device_ip": f"192.168.{local}.{host[-1]}"}]
                else:  # the pod's chips, in ascending physical id as the plugin sorts them
                    ids = [local * per_pod + j for j in range(per_pod)]
                    devices = [{"device_id": str(i), "device_ip": f"192.168.{i}.{host[-1]}"} for i in ids]
                annotation = {"pod_name": pod["metadata"]["name"], "server_id": host, "devices": devices}
                pod["metadata"].setdefault("annotations", {})[DEVICE_ANNOTATION] = json.dumps(annotation)
        for pod in self.current(names.ROLE_SCHEDULER):
            pod["status"].update(hostIP=hosts[0], podIP="10.9.9.9")

    def set_phase(self, phase: str, role: str = names.ROLE_WORKER) -> None:
        for pod in self.current(role):
            pod["status"]["phase"] = phase

    def terminate(self, pod: dict[str, Any], code: int, message: str = "", reason: str | None = None) -> None:
        pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        pod["status"]["containerStatuses"] = [
            {
                "name": "ascend",
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason or ("Completed" if code == 0 else "Error"),
                        "message": message,
                        "finishedAt": "2026-01-01T12:00:00Z",
                    }
                },
            }
        ]

    def succeed_all(self, message: str | None = None) -> None:
        for pod in self.current():
            rank = pod["metadata"]["labels"][names.LABEL_RANK]
            self.terminate(pod, 0, message if rank == "0" and message else "")

    def table(self) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.configmap is not None
        data = self.configmap["data"]
        return json.loads(data["hccl.json"]), json.loads(data["ranks.json"])


HOSTS = ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"]  # two servers, two workers each


def running(obj: dict[str, Any] | None = None) -> Sim:
    """A training whose first attempt runs: 4 workers placed on 2 servers, table complete, all Running."""
    sim = Sim(obj)
    sim.settle()
    sim.place(HOSTS)
    sim.settle()
    sim.set_phase("Running")
    sim.settle()
    assert sim.status["phase"] == "Running"
    return sim
