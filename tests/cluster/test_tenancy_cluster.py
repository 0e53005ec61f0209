"""Multi-tenant findings on the real API server, with the controller under its own RBAC: child names
that cannot collide, objects the operator does not own left alone, and the admin's policy."""

from __future__ import annotations

import json

import pytest
from kubelet import apply, training_manifest, wait_for

from controller import names

pytestmark = pytest.mark.cluster

HOSTS = ["172.16.0.1", "172.16.0.1"]


def test_trainings_whose_names_and_stages_concatenate_alike_both_run(controller, kubelet, kubectl):
    """Training `voc` + stage `s16-vocaug` and training `voc-s16` + stage `vocaug` used to name their
    pods alike; the second one's creates got 409 and it waited until PendingTimeout."""
    ns = kubelet.ns
    stages = {"voc": "s16-vocaug", "voc-s16": "vocaug"}
    for training, stage in stages.items():
        apply(kubectl, training_manifest(training, ns, workers=2, stages=[
            {"name": stage, "dataFile": "d.mindrecord0", "epochs": 1}]))  # fmt: skip
    for training in stages:
        pods = wait_for(
            f"{training}'s 2 pods", lambda t=training: len(kubelet.pods(t)) == 2 and kubelet.pods(t)
        )
        assert all(p["metadata"]["name"].startswith("voc-s16-vocaug-") for p in pods)
        kubelet.place(pods, HOSTS)
    for training in stages:
        wait_for(f"{training} Running", lambda t=training: kubelet.status(t).get("phase") == "Running")
        table, ranks = kubelet.table(training)
        assert table["status"] == "completed" and len(ranks["ranks"]) == 2
    first, second = ({p["metadata"]["name"] for p in kubelet.pods(t)} for t in stages)
    assert not first & second


def test_a_foreign_rank_table_is_never_adopted_overwritten_or_deleted(controller, kubelet, kubectl, admin):
    """A MindX job's `rings-config-<job>` exists; a training of the same name must not take it over."""
    ns = kubelet.ns
    theirs = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names.configmap_name("mindx-job"), "namespace": ns},
        "data": {"hccl.json": '{"status": "completed", "server_count": "1"}', "version": "42"},
    }
    apply(kubectl, theirs)
    before = kubelet.configmap("mindx-job")
    apply(kubectl, training_manifest("mindx-job", ns, workers=2))
    wait_for("Failed", lambda: kubelet.status("mindx-job").get("phase") == "Failed")
    status = kubelet.status("mindx-job")
    assert status["reason"] == "NameConflict"
    assert (
        "ConfigMap rings-config-mindx-job already exists and is not owned by this training"
        in status["message"]
    )
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "NameConflict"
    # the status is written before the events: wait for the event rather than race it
    warnings = wait_for(
        "NameConflict event",
        lambda: [e for e in kubelet.events("mindx-job") if e["reason"] == "NameConflict"],
    )
    assert (
        warnings and warnings[0]["type"] == "Warning" and "rings-config-mindx-job" in warnings[0]["message"]
    )
    after = kubelet.configmap("mindx-job")
    assert (
        after["data"] == before["data"]
        and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    )
    assert "ownerReferences" not in after["metadata"]
    assert kubelet.pods("mindx-job") == []
    kubectl("delete", "deeplabtraining", "mindx-job", "-n", ns, "--wait=true", "--timeout=30s")
    assert kubelet.configmap("mindx-job") is not None, "deleting the training leaves their table alone"


def test_the_default_policy_refuses_host_path_and_secret_env(controller, kubelet, kubectl):
    ns = kubelet.ns
    host = training_manifest("host", ns)
    host["spec"]["volumes"]["checkpoints"] = {"hostPath": {"path": "/var/lib/other-team/checkpoints"}}
    secret = training_manifest("secret", ns, template={"env": [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]})  # fmt: skip
    for manifest in (host, secret):
        apply(kubectl, manifest)
    for name, field in (("host", "spec.volumes.checkpoints.hostPath"), ("secret", "spec.template.env[0]")):
        wait_for(f"{name} Failed", lambda n=name: kubelet.status(n).get("phase") == "Failed")
        status = kubelet.status(name)
        assert status["reason"] == "PolicyViolation" and status["message"].startswith(field), status
        assert kubelet.pods(name) == []


def test_a_pod_name_taken_between_read_and_create_stops_the_training(controller, kubelet, kubectl, admin):
    """The create's 409 path: someone else's pod already holds a worker's name (it can only be
    guessed once the training exists). The operator stops, frees its own pods, leaves that one alone."""
    ns = kubelet.ns
    apply(kubectl, training_manifest("taken", ns, workers=2, suspend=True))
    wait_for("Suspended", lambda: kubelet.status("taken").get("phase") == "Suspended")
    name = kubelet.pod_name("taken", "s16", 2, 1)  # resuming starts attempt 2
    squatter = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "squatter"}},
        "spec": {"containers": [{"name": "c", "image": "squatter:1"}]},
    }
    apply(kubectl, squatter)
    before = kubectl("get", "pod", name, "-n", ns, "-o", "json")
    patched = kubectl("patch", "dlt", "taken", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    assert patched.returncode == 0, patched.stderr
    wait_for("Failed", lambda: kubelet.status("taken").get("phase") == "Failed")
    status = kubelet.status("taken")
    assert status["reason"] == "NameConflict" and f"Pod {name} already exists" in status["message"]
    assert [e["reason"] for e in kubelet.events("taken") if e["type"] == "Warning"] == ["NameConflict"]
    wait_for("its own pods freed", lambda: kubelet.pods("taken") == [])
    after = kubectl("get", "pod", name, "-n", ns, "-o", "json")
    assert json.loads(after.stdout)["metadata"] == json.loads(before.stdout)["metadata"], "left alone"
