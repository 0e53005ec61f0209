"""Plan decisions that used to be tested only in the simulator, now driven through the real API server
with the controller running: a configuration error, suspend and resume, the active deadline, TTL
deletion with garbage collection, and deleting a training while its attempt starts."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from kubelet import apply, one_stage_manifest, result_message, wait_for

pytestmark = pytest.mark.cluster


def seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").timestamp()


def children(kubectl, ns: str, name: str) -> list[str]:
    selector = f"deeplab.io/training={name}"
    listed = kubectl("get", "pods,configmaps,services", "-n", ns, "-l", selector, "-o", "name")
    return listed.stdout.split()


def test_exit_2_fails_with_the_configuration_reason_and_starts_no_new_attempt(controller, kubelet, kubectl):
    apply(kubectl, one_stage_manifest("badcfg", kubelet.ns, backoffLimit=3))
    pods = kubelet.run_attempt("badcfg")
    kubelet.terminate(pods[1]["metadata"]["name"], 2, "train: error: --crop_size 0: must be positive")
    wait_for("Failed", lambda: kubelet.status("badcfg").get("phase") == "Failed")
    status = kubelet.status("badcfg")
    assert status["reason"] == "ConfigurationError" and "--crop_size 0" in status["message"]
    assert status["attempt"] == 1 and status["stages"][0]["attempts"] == 1  # the status is written first
    assert kubelet.pods("badcfg", attempt="2") == []
    wait_for("event", lambda: "ConfigurationError" in kubelet.reasons("badcfg"))
    assert "Restarting" not in kubelet.reasons("badcfg")


def test_suspend_deletes_the_pods_and_resume_starts_a_new_attempt(controller, kubelet, kubectl):
    apply(kubectl, one_stage_manifest("nap", kubelet.ns))
    kubelet.run_attempt("nap")
    patch = json.dumps({"spec": {"suspend": True}})
    assert kubectl("patch", "dlt", "nap", "-n", kubelet.ns, "--type=merge", "-p", patch).returncode == 0
    wait_for("Suspended", lambda: kubelet.status("nap").get("phase") == "Suspended")
    wait_for("pods deleted", lambda: kubelet.pods("nap") == [])
    suspended = {c["type"]: c for c in kubelet.status("nap")["conditions"]}
    assert suspended["Suspended"]["status"] == "True" and suspended["Running"]["status"] == "False"
    patch = json.dumps({"spec": {"suspend": False}})
    assert kubectl("patch", "dlt", "nap", "-n", kubelet.ns, "--type=merge", "-p", patch).returncode == 0
    kubelet.run_attempt("nap", attempt=2)
    status = kubelet.status("nap")
    assert status["attempt"] == 2 and status["stages"][0]["failures"] == 0
    reasons = kubelet.reasons("nap")
    assert reasons.index("Suspended") < reasons.index("Resumed"), reasons


def test_the_active_deadline_counts_from_the_start(controller, kubelet, kubectl):
    # Long enough to reach Running first: apply to Running took 0.7-2.6 s in 19 of 20 runs at load 12 on the
    # 2 cores, and over 3 s once (the old 3 s deadline then failed the training before it ever ran).
    deadline = 10
    apply(kubectl, one_stage_manifest("late", kubelet.ns, activeDeadlineSeconds=deadline))
    kubelet.run_attempt("late")
    wait_for("Failed", lambda: kubelet.status("late").get("phase") == "Failed", timeout=30)
    status = kubelet.status("late")
    assert status["reason"] == "DeadlineExceeded"
    took = seconds(status["completionTime"]) - seconds(status["startTime"])
    assert deadline <= took <= deadline + 12, took  # plus a requeue's lateness (measured: 0 s in 19 runs)
    wait_for("pods freed", lambda: all(p["status"].get("phase") != "Running" for p in kubelet.pods("late")))


def test_ttl_deletes_the_training_and_garbage_collection_its_children(controller, kubelet, kubectl):
    apply(kubectl, one_stage_manifest("brief", kubelet.ns, ttlSecondsAfterFinished=1))
    pods = kubelet.run_attempt("brief")
    for pod in pods:
        rank = pod["metadata"]["labels"]["deeplab.io/rank"]
        message = result_message("/checkpoints/brief/only/final.ckpt", 0.5) if rank == "0" else ""
        kubelet.terminate(pod["metadata"]["name"], 0, message)
    gone = wait_for(
        "training deleted",
        lambda: kubectl("get", "dlt", "brief", "-n", kubelet.ns).returncode != 0,
        timeout=30,
    )
    assert gone
    # the garbage collector discovers the CRD on its next sync: a generous timeout
    wait_for("children collected", lambda: children(kubectl, kubelet.ns, "brief") == [], timeout=75)


def test_deleting_a_training_while_its_attempt_starts_leaves_nothing_behind(controller, kubelet, kubectl):
    manifest = one_stage_manifest("fleeting", kubelet.ns, workers=8, npusPerServer=8)
    apply(kubectl, manifest)
    wait_for("the first pods", lambda: kubelet.pods("fleeting"))
    assert kubectl("delete", "dlt", "fleeting", "-n", kubelet.ns, "--wait=false").returncode == 0
    wait_for("children collected", lambda: children(kubectl, kubelet.ns, "fleeting") == [], timeout=75)
    assert controller.healthy()
    # the controller brings nothing back for a training that is gone, however often it looks
    for _ in range(3):
        controller.queue.add((kubelet.ns, "fleeting"))
        wait_for("queue drained", lambda: len(controller.queue) == 0)
    assert children(kubectl, kubelet.ns, "fleeting") == []
