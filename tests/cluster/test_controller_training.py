"""The operator against the real API server: the test plays kubelet and the Ascend device plugin."""

from __future__ import annotations

import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from kubelet import apply, result_message, training_manifest, wait_for

from envtest import audit

pytestmark = pytest.mark.cluster

HOSTS = ["172.16.0.1", "172.16.0.1", "172.16.0.2", "172.16.0.2"]


def phase_is(kubelet, name, phase):
    return lambda: kubelet.status(name).get("phase") == phase


def names_of(pods):
    return [p["metadata"]["name"] for p in pods]


def test_training_creates_children_builds_the_rank_table_and_chains_stages(controller, kubelet, kubectl):
    ns = kubelet.ns
    apply(kubectl, training_manifest("voc", ns))
    pods = wait_for("4 worker pods", lambda: len(kubelet.pods("voc")) == 4 and kubelet.pods("voc"))
    assert names_of(pods) == [kubelet.pod_name("voc", "s16", 1, i) for i in range(4)]
    pod = pods[0]
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "DeepLabTraining"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"huawei.com/Ascend910": "1"}
    assert kubectl("get", "service", "voc", "-n", ns).returncode != 0, "rankTable trainings need no Service"
    table, ranks = wait_for("initializing table", lambda: kubelet.table("voc")[0] and kubelet.table("voc"))
    assert table == {"status": "initializing"} and ranks["ranks"] == {}

    kubelet.place(pods, HOSTS)
    table, ranks = wait_for(
        "complete table",
        lambda: kubelet.table("voc")[0].get("status") == "completed" and kubelet.table("voc"),
    )
    # MindX's layout: one entry per pod, in rank order, server_id from the device plugin's annotation
    assert table["server_count"] == "4"
    servers = table["server_list"]
    assert [s["server_id"] for s in servers] == HOSTS
    assert [[d["rank_id"] for d in s["device"]] for s in servers] == [["0"], ["1"], ["2"], ["3"]]
    assert servers[3]["device"] == [{"device_id": "1", "device_ip": "192.168.1.2", "rank_id": "3"}]
    assert servers[0]["container_ip"] == "10.244.1.10"
    assert kubelet.configmap("voc")["data"]["version"].isdigit()
    assert ranks["ranks"] == {kubelet.pod_name("voc", "s16", 1, i): i for i in range(4)}
    assert ranks["attempt"] == kubelet.status("voc")["attemptId"]
    wait_for("Running", phase_is(kubelet, "voc", "Running"))

    table_view = kubectl("get", "deeplabtrainings", "-n", ns)
    header, row = table_view.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "STAGE", "PHASE", "EPOCH", "LOSS", "MIOU", "AGE"]
    assert row.split()[:4] == ["voc", "1/2", "s16", "Running"]

    for pod in pods:
        rank = pod["metadata"]["labels"]["deeplab.io/rank"]
        kubelet.terminate(
            pod["metadata"]["name"],
            0,
            result_message("/checkpoints/voc/s16/final.ckpt", 0.7123) if rank == "0" else "",
        )
    second = wait_for(
        "stage 2 pods", lambda: len(kubelet.pods("voc", stage="s8")) == 4 and kubelet.pods("voc", stage="s8")
    )
    mounts = second[0]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "checkpoints", "mountPath": "/init", "subPath": "voc/s16", "readOnly": True} in mounts
    command = second[0]["spec"]["containers"][0]["command"]
    assert command[command.index("--ckpt_pre_trained") + 1] == "/init/final.ckpt"
    wait_for("stage 1 pods cleaned up", lambda: not kubelet.pods("voc", stage="s16"))
    status = kubelet.status("voc")
    assert status["stage"] == "2/2 s8" and status["miou"] == 0.7123
    assert status["stages"][0]["checkpoint"] == "/checkpoints/voc/s16/final.ckpt"
    assert status["stages"][0]["phase"] == "Succeeded"
    wait_for(
        "a fresh table for stage 2", lambda: kubelet.table("voc")[1].get("attempt", "").endswith(".s8.1")
    )
    assert kubelet.table("voc")[0] == {"status": "initializing"}

    kubelet.place(second, HOSTS)
    wait_for("stage 2 table", lambda: kubelet.table("voc")[0].get("status") == "completed")
    for pod in second:
        rank = pod["metadata"]["labels"]["deeplab.io/rank"]
        kubelet.terminate(
            pod["metadata"]["name"],
            0,
            result_message("/checkpoints/voc/s8/final.ckpt", 0.78) if rank == "0" else "",
        )
    wait_for("Succeeded", phase_is(kubelet, "voc", "Succeeded"))
    row = kubectl("get", "dlt", "voc", "-n", ns, "--no-headers").stdout.split()
    assert row[:4] == ["voc", "2/2", "s8", "Succeeded"] and "0.78" in row
    # by reason, through the API (the status is written before the events: wait for the last one)
    wait_for("the Succeeded event", lambda: "Succeeded" in kubelet.reasons("voc"))
    reasons = kubelet.reasons("voc")
    assert sorted(reasons) == sorted(
        ["Started", "StageStarted", "Succeeded"] + ["RankTableReady", "Running", "StageSucceeded"] * 2
    ), reasons
    assert reasons[0] == "Started" and reasons[-1] == "Succeeded"


def test_failure_restarts_with_a_fresh_table_until_the_backoff_limit(controller, kubelet, kubectl):
    apply(kubectl, training_manifest("flaky", kubelet.ns, workers=2, backoffLimit=1, stages=[
        {"name": "only", "dataFile": "d.mindrecord0", "epochs": 1}]))  # fmt: skip
    first = wait_for("attempt 1", lambda: len(kubelet.pods("flaky")) == 2 and kubelet.pods("flaky"))
    kubelet.place(first, HOSTS[:2])
    wait_for("table 1", lambda: kubelet.table("flaky")[0].get("status") == "completed")
    kubelet.terminate(
        kubelet.pod_name("flaky", "only", 1, 1),
        1,
        "Traceback (most recent call last):\nRuntimeError: HCCL link down",
    )
    second = wait_for(
        "attempt 2",
        lambda: len(kubelet.pods("flaky", attempt="2")) == 2 and kubelet.pods("flaky", attempt="2"),
    )
    wait_for("attempt 1 deleted", lambda: not kubelet.pods("flaky", attempt="1"))
    table, ranks = kubelet.table("flaky")
    assert table == {"status": "initializing"} and ranks["attempt"].endswith(".only.2"), (
        "never the stale table"
    )
    status = kubelet.status("flaky")
    assert status["attempt"] == 2 and status["stages"][0]["failures"] == 1
    assert "HCCL link down" in status["stages"][0]["message"]
    kubelet.place(second, ["172.16.0.3", "172.16.0.3"])
    table, ranks = wait_for(
        "table 2", lambda: kubelet.table("flaky")[0].get("status") == "completed" and kubelet.table("flaky")
    )
    assert table["server_list"][0]["server_id"] == "172.16.0.3" and ranks["attempt"].endswith(".only.2")
    kubelet.terminate(kubelet.pod_name("flaky", "only", 2, 0), 137, "", reason="OOMKilled")
    wait_for("Failed", phase_is(kubelet, "flaky", "Failed"))
    status = kubelet.status("flaky")
    assert status["reason"] == "BackoffLimitExceeded"
    assert (
        f"{kubelet.pod_name('flaky', 'only', 2, 0)} (worker 0) exited with code 137 (OOMKilled)"
        in status["message"]
    )
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (
        conditions["Failed"]["status"] == "True" and conditions["Failed"]["reason"] == "BackoffLimitExceeded"
    )
    wait_for("the failure event", lambda: "BackoffLimitExceeded" in kubelet.reasons("flaky"))
    reasons = kubelet.reasons("flaky")
    assert reasons.count("AttemptFailed") == 1 and reasons.count("Restarting") == 1, reasons


def test_deleted_children_come_back_and_deleting_the_training_removes_everything(
    controller, kubelet, kubectl
):
    ns = kubelet.ns
    apply(kubectl, training_manifest("gc", ns, workers=2))
    wait_for("pods", lambda: len(kubelet.pods("gc")) == 2)
    assert kubectl("delete", "configmap", "rings-config-gc", "-n", ns).returncode == 0
    wait_for("table restored", lambda: kubelet.configmap("gc") is not None)
    dynamic = training_manifest("gcd", ns, workers=2, launcher="dynamicCluster", npuResource="")
    apply(kubectl, dynamic)
    wait_for("scheduler and workers", lambda: len(kubelet.pods("gcd")) == 3)
    assert kubectl("delete", "service", "gcd", "-n", ns).returncode == 0
    wait_for("service restored", lambda: kubectl("get", "service", "gcd", "-n", ns).returncode == 0)
    assert kubectl("delete", "dlt", "gcd", "-n", ns, "--wait=false").returncode == 0
    assert (
        kubectl("delete", "pod", kubelet.pod_name("gc", "s16", 1, 1), "-n", ns, "--wait=false").returncode
        == 0
    )
    # before training began (no complete table) a lost pod is simply recreated in the same attempt
    wait_for(
        "pod recreated",
        lambda: names_of(kubelet.pods("gc")) == [kubelet.pod_name("gc", "s16", 1, r) for r in (0, 1)],
    )
    assert kubelet.status("gc")["attempt"] == 1

    assert kubectl("delete", "dlt", "gc", "-n", ns, "--wait=false").returncode == 0

    def leftovers():
        return [
            kind for kind, args in [("pods", ["pods", "-l", "deeplab.io/training=gc"]),
                                    ("service", ["services", "-l", "deeplab.io/training=gc"]),
                                    ("configmap", ["configmaps", "-l", "deeplab.io/training=gc"])]
            if kubectl("get", *args, "-n", ns, "-o", "name").stdout.strip()
        ]  # fmt: skip

    # the GC discovers a new CRD on its next sync (up to ~30s after install): generous timeout
    wait_for("the garbage collector to remove every child", lambda: not leftovers(), timeout=75)


def test_health_readiness_and_metrics(controller, kubelet, kubectl):
    apply(kubectl, training_manifest("metered", kubelet.ns, workers=1))
    wait_for("status", lambda: kubelet.status("metered").get("phase"))
    base = f"http://127.0.0.1:{controller.health_port}"
    assert urllib.request.urlopen(base + "/healthz").read() == b"ok"
    assert urllib.request.urlopen(base + "/readyz").read() == b"ok"
    metrics = urllib.request.urlopen(base + "/metrics").read().decode()
    assert 'deeplab_reconcile_total{result="success"}' in metrics
    assert "deeplab_reconcile_duration_seconds_bucket" in metrics
    assert 'deeplab_trainings{phase="Pending"}' in metrics
    assert 'deeplab_api_writes_total{resource="pods",verb="create"}' in metrics
    assert "deeplab_leader 1.0" in metrics


def test_an_unchanged_training_costs_no_writes(controller, kubelet, kubectl, control_plane):
    """Resyncs of a running training read, but write nothing: no status, table, pod or event churn.
    Proven by the API server's audit log over more than one full resync period (and many log-interval
    requeues), not by the controller's word or a short sleep."""
    apply(kubectl, training_manifest("quiet", kubelet.ns, workers=2))
    pods = wait_for("pods", lambda: len(kubelet.pods("quiet")) == 2 and kubelet.pods("quiet"))
    kubelet.place(pods, HOSTS[:2])
    wait_for("Running", phase_is(kubelet, "quiet", "Running"))
    agent = f"deeplab-operator/{controller.identity}"

    def settled():  # the Running transition's own writes (status, events) have landed
        found = audit.events(control_plane.audit_log)
        return all(
            audit.stamp(e) < datetime.now(timezone.utc) - timedelta(seconds=1)
            for e in audit.writes(found, user_agent=agent, namespace=kubelet.ns)
        )

    wait_for("the Running writes", settled, timeout=10)
    quiet_since = datetime.now(timezone.utc)
    reconciles = controller.metrics.reconciles.labels("success")._value.get()
    time.sleep(controller.options.resync_seconds * 1.5)  # a full resync period and ~15 log-interval requeues
    assert controller.metrics.reconciles.labels("success")._value.get() >= reconciles + 10, "it did look"
    found = audit.events(control_plane.audit_log)
    churn = audit.writes(found, user_agent=agent, namespace=kubelet.ns, since=quiet_since, succeeded=False)
    assert churn == [], audit.describe(churn)


def test_progress_from_rank0_logs_shows_in_kubectl_get(controller, kubelet, kubectl, admin, tmp_path):
    """The log path end to end: API server -> (fake) kubelet -> controller -> status -> printer columns."""
    from fake_kubelet import FakeKubelet, progress_line

    fake = FakeKubelet(tmp_path)
    fake.start()
    node = f"node-{kubelet.ns}"
    try:
        fake.register_node(admin, node)
        apply(kubectl, training_manifest("chatty", kubelet.ns, workers=2, stages=[
            {"name": "only", "dataFile": "d.mindrecord0", "epochs": 10}]))  # fmt: skip
        pods = wait_for("pods", lambda: len(kubelet.pods("chatty")) == 2 and kubelet.pods("chatty"))
        for pod in pods:
            kubelet.bind(pod["metadata"]["name"], node)
        fake.logs[(kubelet.ns, kubelet.pod_name("chatty", "only", 1, 0))] = [
            "MindSpore warning",
            progress_line(3, 10, 0.4321),
        ]
        kubelet.place(pods, ["172.16.2.1", "172.16.2.1"])
        wait_for("progress in status", lambda: kubelet.status("chatty").get("epoch") == "3/10")
        progress = kubelet.status("chatty")["progress"]
        assert progress["loss"] == 0.4321 and progress["imagesPerSecond"] == 131.0 and progress["updateTime"]
        assert any("tailLines" in request for request in fake.requests), "bounded read of the log tail"
        row = kubectl("get", "deeplabtrainings", "chatty", "-n", kubelet.ns, "--no-headers").stdout.split()
        assert row[:6] == ["chatty", "1/1", "only", "Running", "3/10", "0.4321"]
        fake.logs[(kubelet.ns, kubelet.pod_name("chatty", "only", 1, 0))].append(progress_line(4, 10, 0.39))
        wait_for("live update", lambda: kubelet.status("chatty").get("epoch") == "4/10", timeout=10)
    finally:
        fake.stop()
        # bound pods wait for a kubelet to confirm deletion: force them out so the namespace can go
        kubectl("delete", "pods", "--all", "-n", kubelet.ns, "--force", "--grace-period=0")
        kubectl("delete", "node", node, "--wait=false")


def test_a_refused_action_is_reported_on_the_training(controller, kubelet, kubectl):
    """gang: volcano without Volcano installed: the PodGroup create fails; the user sees why."""
    apply(kubectl, training_manifest("gang", kubelet.ns, workers=2, gang="volcano"))

    def reported():
        refused = [e for e in kubelet.events("gang") if e["reason"] == "ActionFailed"]
        return refused and "Create PodGroup gang" in refused[0]["message"]

    wait_for("an ActionFailed event", reported)
    assert kubelet.pods("gang") == [], "no pods without their PodGroup: Volcano would never bind them"
    assert (
        'deeplab_reconcile_total{result="error"}'
        in urllib.request.urlopen(f"http://127.0.0.1:{controller.health_port}/metrics").read().decode()
    )
