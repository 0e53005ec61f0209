"""Faults against the real API server: workers lost at every phase of an attempt, optimistic-
concurrency conflicts, and gang scheduling that never half-starts."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from kubelet import MERGE, apply, result_message, training_manifest, wait_for
from kubernetes import client

from controller import api, resources

pytestmark = pytest.mark.cluster

HOSTS = ["172.16.5.1", "172.16.5.1"]  # one server of two NPUs (npusPerServer 2)


def metric(controller, sample: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{controller.health_port}/metrics").read().decode()
    line = next((x for x in body.splitlines() if x.startswith(sample + " ")), f"{sample} 0")
    return float(line.rsplit(" ", 1)[1])


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


class Attempts:
    """Drives one training through attempts, checking every attempt's pods, table and command."""

    def __init__(self, kubelet, kubectl, name: str):
        self.kubelet, self.kubectl, self.name = kubelet, kubectl, name
        self.number = 0
        self.commands: list[list[str]] = []
        self.tables: dict[str, dict[str, int]] = {}

    def pods(self) -> list[dict]:
        return self.kubelet.pods(self.name, attempt=str(self.number))

    def next(self) -> list[dict]:
        """The following attempt: its pods exist, the old ones are gone, its table is fresh."""
        self.number += 1
        pods = wait_for(f"attempt {self.number}", lambda: len(self.pods()) == 2 and self.pods())
        wait_for("old attempts deleted", lambda: len(self.kubelet.pods(self.name)) == 2)
        status = self.kubelet.status(self.name)
        assert status["attempt"] == self.number
        table, _ = wait_for(
            "its own table",
            lambda: (
                self.kubelet.table(self.name)[1].get("attempt") == status["attemptId"]
                and self.kubelet.table(self.name)
            ),
        )
        assert table == {"status": "initializing"}, "never an earlier attempt's table"
        self.commands.append(pods[0]["spec"]["containers"][0]["command"])
        return pods

    def place(self, pods: list[dict]) -> None:
        self.kubelet.place(pods, HOSTS)
        table, ranks = wait_for(
            "complete table",
            lambda: (
                self.kubelet.table(self.name)[0].get("status") == "completed"
                and self.kubelet.table(self.name)
            ),
        )
        names = {p["metadata"]["name"] for p in pods}
        assert set(ranks["ranks"]) == names, "the table lists exactly this attempt's pods"
        ips = {d["device_ip"] for s in table["server_list"] for d in s["device"]}
        assert len(ips) == 2
        self.tables[ranks["attempt"]] = ranks["ranks"]
        wait_for("Running", lambda: self.kubelet.status(self.name).get("phase") == "Running")

    def evict(self, pod: str) -> None:
        # what a kubelet reports for a node-pressure eviction (the condition since Kubernetes 1.26)
        condition = {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}
        message = "The node was low on resource: memory."
        self.kubelet.patch_status(
            pod, {"phase": "Failed", "reason": "Evicted", "message": message, "conditions": [condition]}
        )

    def delete(self, pod: str) -> None:
        assert self.kubectl("delete", "pod", pod, "-n", self.kubelet.ns, "--wait=false").returncode == 0


def test_a_worker_lost_at_any_phase_of_an_attempt_restarts_it_with_a_new_table_and_resumes(
    controller, kubelet, kubectl
):
    name = "faulty"
    apply(
        kubectl,
        training_manifest(
            name,
            kubelet.ns,
            workers=2,
            backoffLimit=20,
            stages=[{"name": "only", "dataFile": "d.mindrecord0", "epochs": 3, "saveSteps": 50}],
        ),
    )
    run = Attempts(kubelet, kubectl, name)

    def rank0(attempt: int) -> str:
        return kubelet.pod_name(name, "only", attempt, 0)

    def rank1(attempt: int) -> str:
        return kubelet.pod_name(name, "only", attempt, 1)

    # -- before the table is complete ---------------------------------------------------------------
    pods = run.next()
    old_uid = pods[1]["metadata"]["uid"]
    run.delete(rank1(1))  # nothing started yet: the pod is simply created again, same attempt
    again = wait_for(
        "w1 recreated",
        lambda: [
            p for p in run.pods() if p["metadata"]["name"] == rank1(1) and p["metadata"]["uid"] != old_uid
        ],
    )
    assert again and kubelet.status(name)["attempt"] == 1
    kubelet.place(run.pods()[:1], HOSTS[:1])
    run.evict(rank0(1))  # evicted while its peer is still unscheduled
    pods = run.next()
    kubelet.place(pods[1:], HOSTS[1:])
    kubelet.terminate(rank1(2), 1, "RuntimeError: device not ready")  # failed before the table
    pods = run.next()

    # -- while training -------------------------------------------------------------------------------
    for fault in ("fail", "evict", "delete"):
        run.place(pods)
        victim = rank1(run.number)
        if fault == "fail":
            kubelet.terminate(victim, 1, "Traceback\nRuntimeError: HCCL timeout")
        elif fault == "evict":
            run.evict(victim)
        else:
            run.delete(victim)
        pods = run.next()

    # -- during the final result write: rank 0 has written its result, rank 1 is lost -----------------
    for fault in ("fail", "evict", "delete"):
        run.place(pods)
        kubelet.terminate(rank0(run.number), 0, result_message(f"/checkpoints/{name}/only/final.ckpt"))
        victim = rank1(run.number)
        if fault == "fail":
            kubelet.terminate(victim, 137, "", reason="OOMKilled")
        elif fault == "evict":
            run.evict(victim)
        else:
            run.delete(victim)
        pods = run.next()

    run.place(pods)
    for pod in pods:
        rank = pod["metadata"]["labels"]["deeplab.io/rank"]
        message = result_message(f"/checkpoints/{name}/only/final.ckpt", 0.7) if rank == "0" else ""
        kubelet.terminate(pod["metadata"]["name"], 0, message)
    wait_for("Succeeded", lambda: kubelet.status(name).get("phase") == "Succeeded")
    stage = kubelet.status(name)["stages"][0]
    # 3 evictions and 2 deletions are disruptions, counted apart from backoffLimit's 3 failures
    assert stage["attempts"] == run.number == 9 and stage["failures"] == 3 and stage["disruptions"] == 5
    assert stage["checkpoint"] == f"/checkpoints/{name}/only/final.ckpt"
    # resume: every attempt trains in the same directory with the same checkpoint interval, so the
    # job restarts from the newest checkpoint there and loses at most saveSteps steps
    assert len({flag(c, "--train_dir") for c in run.commands}) == 1
    assert {flag(c, "--save_steps") for c in run.commands} == {"50"}
    assert len(run.tables) == 7 and all(len(r) == 2 for r in run.tables.values())
    disrupted = [e["message"] for e in kubelet.events(name) if e["reason"] == "Disrupted"]
    assert any("Evicted" in m for m in disrupted), disrupted
    assert any("disappeared after the attempt started" in m for m in disrupted), disrupted
    assert kubelet.reasons(name).count("AttemptFailed") == 3


def test_conflicts_are_retried_not_fatal(controller, kubelet, kubectl, admin, monkeypatch):
    """A concurrent writer changes the training (and later the rank table) between the controller's
    read and its write: the API server answers 409, the controller re-reads and plans again."""
    name = "racy"
    custom, core = client.CustomObjectsApi(admin), client.CoreV1Api(admin)
    races = {"training": 0, "table": 0}
    real_get, real_observe = controller.kube.get_training, controller.kube.observe

    def racing_get(namespace, training):
        obj = real_get(namespace, training)
        if training == name and races["training"] < 2:
            races["training"] += 1
            custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                training,
                {"metadata": {"annotations": {"race": str(races["training"])}}},
            )
        return obj

    def racing_observe(t, *args):
        observed = real_observe(t, *args)
        pods = [p for p in observed.pods if (p.get("status") or {}).get("podIP")]
        if t.name == name and observed.configmap and len(pods) == 2 and races["table"] < 2:
            races["table"] += 1
            core.patch_namespaced_config_map(
                observed.configmap["metadata"]["name"],
                t.namespace,
                {"metadata": {"annotations": {"race": str(races["table"])}}},
                _content_type=MERGE,
            )
        return observed

    monkeypatch.setattr(controller.kube, "get_training", racing_get)
    monkeypatch.setattr(controller.kube, "observe", racing_observe)
    conflicts = metric(controller, 'deeplab_reconcile_total{result="conflict"}')

    apply(
        kubectl,
        training_manifest(
            name, kubelet.ns, workers=2, stages=[{"name": "only", "dataFile": "d.mindrecord0", "epochs": 1}]
        ),
    )
    pods = wait_for("pods", lambda: len(kubelet.pods(name)) == 2 and kubelet.pods(name))
    assert races["training"] == 2
    kubelet.place(pods, HOSTS)
    _, ranks = wait_for(
        "complete table despite conflicts",
        lambda: kubelet.table(name)[0].get("status") == "completed" and kubelet.table(name),
    )
    assert races["table"] == 2 and set(ranks["ranks"]) == {p["metadata"]["name"] for p in pods}
    wait_for("Running", lambda: kubelet.status(name).get("phase") == "Running")
    assert metric(controller, 'deeplab_reconcile_total{result="conflict"}') >= conflicts + 4
    status = kubelet.status(name)
    assert status["attempt"] == 1 and status["stages"][0]["attempts"] == 1, "a conflict is not a new attempt"
    assert len(kubelet.pods(name)) == 2 and controller.healthy()


# Volcano v1.14's own PodGroup CRD (its header names the source and licence): a structural schema,
# so the API server drops any field of ours Volcano does not know and refuses a wrong type.
VOLCANO_CRD = Path(__file__).resolve().parents[1] / "data" / "volcano-podgroups-v1.14.0.yaml"
GANG_PRIORITY = "deeplab-gang-test"


def podgroup(kubectl, namespace: str, name: str) -> dict:
    found = kubectl("get", "podgroups.scheduling.volcano.sh", name, "-n", namespace, "-o", "json")
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)


def podgroup_as_built(kubectl, namespace: str, name: str) -> dict:
    """The PodGroup read back, checked field by field against what controller/resources.py builds
    from the training read back: nothing pruned or rewritten; the only addition the schema's default
    queue."""
    group = podgroup(kubectl, namespace, name)
    training = json.loads(kubectl("get", "dlt", name, "-n", namespace, "-o", "json").stdout)
    built = resources.podgroup(api.Training.from_obj(training))
    assert {key: group["spec"].get(key) for key in built["spec"]} == built["spec"], group["spec"]
    added = {key: value for key, value in group["spec"].items() if key not in built["spec"]}
    assert added in ({}, {"queue": "default"}), added
    for key in ("labels", "ownerReferences"):
        assert group["metadata"][key] == built["metadata"][key], key
    return group


def test_gang_scheduling_is_all_or_nothing_and_a_stuck_gang_is_released(controller, kubelet, kubectl, admin):
    """Volcano's contract (not Volcano itself): a PodGroup with minMember = every pod of the attempt,
    each pod naming it and schedulerName volcano; a gang that never fits is failed after
    pendingTimeoutSeconds with every pod deleted, so no half of it holds NPUs. The PodGroup is checked
    against Volcano's published CRD on the real API server (accepted, nothing pruned)."""
    installed = kubectl("apply", "--server-side", "-f", str(VOLCANO_CRD))
    assert installed.returncode == 0, installed.stderr
    priority = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": GANG_PRIORITY}, "value": 1000}  # fmt: skip
    try:
        apply(kubectl, priority)
        kubectl("wait", "--for=condition=Established", "crd/podgroups.scheduling.volcano.sh", "--timeout=30s")
        one = [{"name": "only", "dataFile": "d.mindrecord0", "epochs": 1}]
        apply(
            kubectl,
            training_manifest(
                "gang-table", kubelet.ns, workers=2, gang="volcano", stages=one, pendingTimeoutSeconds=6,
                queue="ascend-train", template={"priorityClassName": GANG_PRIORITY},
            ),
        )  # fmt: skip
        apply(
            kubectl,
            training_manifest(
                "gang-dyn",
                kubelet.ns,
                workers=2,
                gang="volcano",
                stages=one,
                launcher="dynamicCluster",
                npuResource="",
            ),
        )
        for name, members in (("gang-table", 2), ("gang-dyn", 3)):
            pods = wait_for(
                f"{name} pods", lambda n=name, m=members: len(kubelet.pods(n)) == m and kubelet.pods(n)
            )
            group = podgroup_as_built(kubectl, kubelet.ns, name)
            assert group["spec"]["minMember"] == members == len(pods)
            assert group["metadata"]["ownerReferences"][0]["name"] == name
            for pod in pods:
                assert pod["spec"]["schedulerName"] == "volcano"
                assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == name
        table_group = podgroup_as_built(kubectl, kubelet.ns, "gang-table")["spec"]
        assert table_group == {"minMember": 2, "queue": "ascend-train", "priorityClassName": GANG_PRIORITY,
                               "minResources": {"huawei.com/Ascend910": "2"}}  # fmt: skip
        # the control: created as the controller creates PodGroups, a misspelt field is silently dropped
        typo = {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
                "metadata": {"name": "typo", "namespace": kubelet.ns},
                "spec": {"minMember": 2, "minresources": {"huawei.com/Ascend910": "2"}}}  # fmt: skip
        client.CustomObjectsApi(admin).create_namespaced_custom_object(
            "scheduling.volcano.sh", "v1beta1", kubelet.ns, "podgroups", typo
        )
        kept = podgroup(kubectl, kubelet.ns, "typo")["spec"]
        assert kept == {"minMember": 2, "queue": "default"}, kept
        # Volcano binds none of gang-table's pods (it does not fit): after 6s it is released entirely
        wait_for("PendingTimeout", lambda: kubelet.status("gang-table").get("phase") == "Failed", timeout=20)
        assert kubelet.status("gang-table")["reason"] == "PendingTimeout"
        wait_for("no pod of the gang left", lambda: not kubelet.pods("gang-table"))
    finally:
        kubectl("delete", "dlt", "--all", "-n", kubelet.ns, "--wait=false")
        kubectl("delete", "crd", "podgroups.scheduling.volcano.sh", "--timeout=60s")
        kubectl("delete", "priorityclass", GANG_PRIORITY, "--ignore-not-found")
