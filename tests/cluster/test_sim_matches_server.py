"""The simulator is only worth its speed if it behaves as the API server does.

* One scenario (two stages, a lost worker, success) runs through the same pure plan twice, on the
  in-memory simulator and on the real API server through the controller's own I/O
  (controller/kube.py), with one clock: every reconcile's actions and status must be the same.
* Each refusal the server makes (409 on a create, a stale resourceVersion, a foreign object's name,
  a missing object) is made by the simulator too, with the same outcome."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest
from kubelet import MERGE, Kubelet, terminated_status
from sim import START, Sim, result_message, stage, training_obj

from controller import api, kube
from controller.api import Training
from controller.plan import Create, Delete, ReplaceConfigMap, plan
from controller.ranktable import DEVICE_ANNOTATION

pytestmark = pytest.mark.cluster

HOSTS = ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"]


def action_key(action) -> tuple:
    """What an action does, without the server-assigned uids and resourceVersions it carries."""
    if isinstance(action, Create):
        return ("Create", json.dumps(action.manifest, sort_keys=True))
    if isinstance(action, Delete):
        return ("Delete", action.kind, action.name)
    if isinstance(action, ReplaceConfigMap):
        return ("Replace", json.dumps(action.manifest, sort_keys=True))
    return (type(action).__name__,)


def allocation(name: str, index: int, host: str) -> dict:
    annotation = {
        "pod_name": name,
        "server_id": host,
        "devices": [{"device_id": str(index), "device_ip": f"192.168.{index}.9"}],
    }
    return {DEVICE_ANNOTATION: json.dumps(annotation)}


class OnServer:
    """The Sim's interface, played against the API server: the plan's actions go through kube.Kube."""

    def __init__(self, admin, namespace: str, obj: dict):
        self.kube, self.kubelet, self.ns = kube.Kube(admin), Kubelet(admin, namespace), namespace
        self.name, self.now, self.conflicts = obj["metadata"]["name"], START, []
        body = {**copy.deepcopy(obj), "metadata": {"name": self.name, "namespace": namespace}}
        created = self.kubelet.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, body, _preload_content=False
        )
        self.uid = json.loads(created.data)["metadata"]["uid"]

    def step(self, advance: float = 1.0):
        self.now += timedelta(seconds=advance)
        obj = self.kube.get_training(self.ns, self.name)
        training = Training.from_obj(obj)
        observed = self.kube.observe(training)
        result = plan(training, observed, self.now)
        if result.status_changed:
            self.kube.replace_status(obj, result.status)
        try:
            for action in result.actions:
                self.kube.apply(training, action)
        except kube.Conflict as conflict:
            self.conflicts.append(str(conflict))
        return result

    def pods(self) -> list[dict]:
        return sorted(
            self.kubelet.pods(self.name), key=lambda p: int(p["metadata"]["labels"]["deeplab.io/rank"])
        )

    def place(self) -> None:
        for index, pod in enumerate(self.pods()):
            name = pod["metadata"]["name"]
            patch = {"metadata": {"annotations": allocation(name, index, HOSTS[index])}}
            self.kubelet.core.patch_namespaced_pod(name, self.ns, patch, _content_type=MERGE)
            self.kubelet.patch_status(name, {"hostIP": HOSTS[index], "podIP": f"10.1.0.{index + 10}"})

    def set_running(self) -> None:
        for pod in self.pods():
            self.kubelet.patch_status(pod["metadata"]["name"], {"phase": "Running"})

    def terminate(self, rank: int, code: int, message: str) -> None:
        self.kubelet.patch_status(self.pods()[rank]["metadata"]["name"], terminated_status(code, message))


class InMemory(Sim):
    """The same moves on the simulator (with the server's uid, so names match)."""

    def place(self) -> None:
        for index, pod in enumerate(self.current()):
            pod["metadata"].setdefault("annotations", {}).update(
                allocation(pod["metadata"]["name"], index, HOSTS[index])
            )
            pod["status"].update(hostIP=HOSTS[index], podIP=f"10.1.0.{index + 10}")

    def set_running(self) -> None:
        self.set_phase("Running")

    def terminate(self, rank: int, code: int, message: str) -> None:  # type: ignore[override]
        status = terminated_status(code, message)
        self.current()[rank]["status"].update(status)


def scenario(world) -> list[tuple]:
    """Every reconcile's (actions, status) of one run."""
    record = []

    def settle(steps: int = 4) -> None:
        for _ in range(steps):
            result = world.step()
            status = {k: v for k, v in result.status.items()}
            record.append(([action_key(a) for a in result.actions], status))

    settle()
    world.place()
    settle()
    world.set_running()
    settle()
    world.terminate(2, 137, "")
    settle()
    world.place()
    settle()
    world.set_running()
    settle()
    for rank in range(4):
        world.terminate(rank, 0, result_message("/checkpoints/voc/one/final.ckpt", 0.7) if rank == 0 else "")
    settle()
    return record


def test_the_simulator_decides_and_refuses_exactly_as_the_api_server(admin, namespace, operator_installed):
    obj = training_obj("twin", stages=[stage("one"), stage("two")])
    server = OnServer(admin, namespace, obj)
    twin = copy.deepcopy(obj)
    twin["metadata"].update(uid=server.uid, namespace=namespace)
    memory = InMemory(twin)
    on_server, in_memory = scenario(server), scenario(memory)
    assert server.conflicts == memory.conflicts == []
    for index, (theirs, ours) in enumerate(zip(on_server, in_memory, strict=True)):
        assert theirs == ours, f"reconcile {index}"
    final = on_server[-1][1]
    assert final["stage"] == "2/2 two" and final["stages"][0]["phase"] == "Succeeded"
    assert final["stages"][0]["attempts"] == 2 and final["stages"][0]["failures"] == 1


def test_the_simulator_refuses_what_the_server_refuses(admin, namespace, operator_installed):
    obj = training_obj("strict", stages=[stage("one")])
    server = OnServer(admin, namespace, obj)
    twin = copy.deepcopy(obj)
    twin["metadata"].update(uid=server.uid, namespace=namespace)
    memory = InMemory(twin)
    first = server.step()
    memory.step()
    create_table = next(
        a for a in first.actions if isinstance(a, Create) and a.manifest["kind"] == "ConfigMap"
    )
    training = Training.from_obj(server.kube.get_training(namespace, "strict"))

    # a create of an existing object of ours: 409, the old object stays (ours to keep)
    changed = copy.deepcopy(create_table.manifest)
    changed["data"]["hccl.json"] = "{}"
    server.kube.apply(training, Create(changed))
    memory.apply(Create(changed))
    assert server.kubelet.configmap("strict")["data"] == create_table.manifest["data"]
    assert memory.configmap["data"] == create_table.manifest["data"]

    # a replace with a stale resourceVersion: Conflict on both
    stale = ReplaceConfigMap(changed, "1")
    with pytest.raises(kube.Conflict):
        server.kube.apply(training, stale)
    with pytest.raises(kube.Conflict):
        memory.apply(ReplaceConfigMap(changed, "0"))

    # a create meeting somebody else's object of that name: NameTaken on both, nothing changed
    pod = next(a for a in first.actions if isinstance(a, Create) and a.manifest["kind"] == "Pod").manifest
    foreign = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "taken", "namespace": namespace},
               "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
    server.kubelet.core.create_namespaced_pod(namespace, foreign, _preload_content=False)
    memory.pods["taken"] = copy.deepcopy(foreign)
    memory.pods["taken"]["metadata"]["uid"] = "its-own-uid"  # the server gives every object one
    ours = copy.deepcopy(pod)
    ours["metadata"]["name"] = "taken"
    with pytest.raises(kube.NameTaken):
        server.kube.apply(training, Create(ours))
    with pytest.raises(kube.NameTaken):
        memory.apply(Create(ours))

    # a delete of a missing pod, or of a pod recreated under the same name (another uid): a no-op
    for action in (Delete("Pod", "missing", "uid-1"), Delete("Pod", "taken", "not-its-uid")):
        server.kube.apply(training, action)
        memory.apply(action)
    assert server.kubelet.core.read_namespaced_pod("taken", namespace) is not None
    assert "taken" in memory.pods
