"""The plan's decisions, step by step against an in-memory cluster (no API server)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sim import CLUSTER_IP, HOSTS, Sim, pod_name, result_message, running, stage, training_obj

from controller import names
from controller.plan import Create, Delete, DeleteTraining, ReplaceConfigMap
from controller.ranktable import DEVICE_ANNOTATION, NPU_DEVICE_ANNOTATION


def kinds(plan) -> list[str]:
    return [
        type(a).__name__ + ":" + (a.manifest["kind"] if isinstance(a, Create) else "") for a in plan.actions
    ]


def reasons(sim: Sim) -> list[str]:
    return [e.reason for p in sim.history for e in p.events]


def running_sim(**spec) -> Sim:
    return running(training_obj(**spec))


def test_new_training_creates_service_initializing_table_and_pods():
    sim = Sim()
    first = sim.step()
    assert first.status_changed
    assert kinds(first) == ["Create:ConfigMap"] + ["Create:Pod"] * 4, "rankTable: no Service"
    st = sim.status
    assert st["phase"] == "Pending" and st["stage"] == "1/3 s16-vocaug" and st["attempt"] == 1
    assert st["attemptId"] == "01234567.s16-vocaug.1"
    assert [s["name"] for s in st["stages"]] == ["s16-vocaug", "s8-vocaug", "s8-voctrain"]
    assert st["stages"][0]["attempts"] == 1 and st["observedGeneration"] == 1
    table, ranks = sim.table()
    assert table == {"status": "initializing"}
    assert ranks == {"attempt": "01234567.s16-vocaug.1", "ranks": {}}
    assert sorted(sim.pods) == [pod_name("s16-vocaug", 1, i) for i in range(4)]
    assert "Started" in reasons(sim)


def test_replanning_an_unchanged_world_is_a_no_op():
    sim = Sim()
    sim.step()
    again = sim.step()
    assert again.actions == [] and not again.status_changed and again.events == []


def test_rank_table_complete_for_two_servers_with_device_plugin_annotations():
    sim = Sim()
    sim.settle()
    pods = sim.current()
    sim.place([*HOSTS[:3], None])  # the last worker is not placed yet
    sim.settle()
    assert sim.table()[0] == {"status": "initializing"}, "never a partial table"
    assert sim.status["phase"] == "Pending"
    sim.place(HOSTS)
    result = sim.settle()
    table, ranks = sim.table()
    # MindX's layout: one server_list entry per pod, server_id from the device plugin's annotation
    assert table["version"] == "1.0" and table["status"] == "completed" and table["server_count"] == "4"
    assert list(table) == ["status", "server_list", "server_count", "version"]
    servers = table["server_list"]
    assert [s["server_id"] for s in servers] == HOSTS
    assert [s["container_ip"] for s in servers] == [p["status"]["podIP"] for p in pods]
    assert [s["host_ip"] for s in servers] == HOSTS and "host_nic_ip" not in servers[0]
    assert [[d["rank_id"] for d in s["device"]] for s in servers] == [["0"], ["1"], ["2"], ["3"]]
    # device ids and NPU addresses come from the device plugin's annotation, not from the pod
    assert [s["device"][0]["device_id"] for s in servers] == ["4", "5", "4", "5"]
    assert servers[3]["device"][0]["device_ip"] == "192.168.1.2"
    assert all(isinstance(v, str) for s in servers for d in s["device"] for v in d.values())
    assert sim.configmap["data"]["version"].isdigit(), "MindX's change marker next to hccl.json"
    assert ranks["attempt"] == "01234567.s16-vocaug.1"
    assert ranks["ranks"] == {pod_name("s16-vocaug", 1, i): i for i in range(4)}
    assert sim.status["phase"] == "Initializing"
    assert "RankTableReady" in reasons(sim)
    assert not result.actions


def test_npu_workers_wait_for_the_device_plugin_and_never_get_a_made_up_table():
    sim = Sim()
    sim.settle()
    sim.place(HOSTS, device_plugin=False)
    sim.set_phase("Running")
    sim.settle()
    assert sim.table()[0] == {"status": "initializing"}, "no pod IP stands in for an NPU address"
    pending = next(c for c in sim.status["conditions"] if c["type"] == "PodsPending")
    assert pending["status"] == "True" and pending["reason"] == "WaitingForDeviceAllocation"
    assert pod_name("s16-vocaug", 1, 0) in pending["message"]
    assert reasons(sim).count("WaitingForDeviceAllocation") == 1, "one event, not one per resync"
    # a device the plugin could not read the address of ("-1") is refused like a missing one
    sim.place(HOSTS)
    broken = sim.current()[2]["metadata"]["annotations"]
    info = json.loads(broken[DEVICE_ANNOTATION])
    info["devices"][0]["device_ip"] = "-1"
    broken[DEVICE_ANNOTATION] = json.dumps(info)
    sim.settle()
    assert sim.table()[0] == {"status": "initializing"}
    pending = next(c for c in sim.status["conditions"] if c["type"] == "PodsPending")
    assert "no usable device_ip" in pending["message"] and pod_name("s16-vocaug", 1, 2) in pending["message"]
    # the other key MindX documents carries the same allocation
    info["devices"][0]["device_ip"] = "192.168.7.7"
    del broken[DEVICE_ANNOTATION]
    broken[NPU_DEVICE_ANNOTATION] = json.dumps(info)
    sim.settle()
    table, _ = sim.table()
    assert (
        table["status"] == "completed" and table["server_list"][2]["device"][0]["device_ip"] == "192.168.7.7"
    )


def test_cpu_workers_on_the_rank_table_launcher_use_their_pod_address():
    sim = Sim(training_obj(npuResource=""))
    sim.settle()
    sim.place(["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"], device_plugin=False)
    sim.settle()
    table, ranks = sim.table()
    assert ranks["ranks"] == {pod_name("s16-vocaug", 1, i): i for i in range(4)}
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    third = table["server_list"][2]["device"][0]
    assert third == {
        "device_id": "0",
        "device_ip": sim.pods[pod_name("s16-vocaug", 1, 2)]["status"]["podIP"],
        "rank_id": "2",
    }


def test_the_table_is_written_once_per_attempt():
    sim = running_sim()
    writes = sim.cm_writes
    sim.pods[pod_name("s16-vocaug", 1, 1)]["status"]["podIP"] = "10.7.7.7"  # cannot happen in one pod's life
    sim.settle()
    assert sim.cm_writes == writes


def test_running_resync_makes_no_writes_and_progress_only_changes_when_the_line_does():
    sim = running_sim()
    assert "Running" in reasons(sim)
    assert sim.status["stages"][0]["phase"] == "Running"
    line = {"event": "progress", "epoch": 3, "epochs": 10, "step": 30, "steps": 100, "loss": 0.5, "lr": 0.01,
            "images_per_second": 120.5, "eta_seconds": 700}  # fmt: skip
    logs = ["MindSpore noise", json.dumps(line), "{not json"]
    changed = sim.step(logs=logs)
    assert changed.status_changed and changed.actions == []
    assert sim.status["epoch"] == "3/10"
    progress = sim.status["progress"]
    assert progress["loss"] == 0.5 and progress["imagesPerSecond"] == 120.5 and progress["updateTime"]
    assert not sim.step(logs=logs).status_changed, "same line, no write"
    assert not sim.step(logs=None).status_changed, "logs not read this time, no write"
    assert not sim.step(logs=["unreadable"]).status_changed
    line.update(epoch=4, loss=0.4)
    assert sim.step(logs=[json.dumps(line)]).status_changed
    assert sim.status["epoch"] == "4/10"


def test_stage_success_chains_to_the_next_stage_with_the_previous_checkpoint():
    sim = running_sim()
    sim.succeed_all(result_message("/checkpoints/voc/s16-vocaug/final.ckpt", miou=0.71))
    result = sim.step()
    deleted = [a.name for a in result.actions if isinstance(a, Delete)]
    assert sorted(deleted) == [pod_name("s16-vocaug", 1, i) for i in range(4)]
    st = sim.status
    done = st["stages"][0]
    assert done["phase"] == "Succeeded" and done["checkpoint"] == "/checkpoints/voc/s16-vocaug/final.ckpt"
    assert done["miou"] == 0.71 and done["loss"] == 0.25 and done["completionTime"]
    assert st["miou"] == 0.71
    assert st["stage"] == "2/3 s8-vocaug" and st["attempt"] == 1 and st["phase"] == "Pending"
    assert "progress" not in st
    pod = sim.pods[pod_name("s8-vocaug", 1, 0)]
    container = pod["spec"]["containers"][0]
    assert {"name": "checkpoints", "mountPath": "/init", "subPath": "voc/s16-vocaug", "readOnly": True} in (
        container["volumeMounts"]
    )
    command = container["command"]
    assert command[command.index("--ckpt_pre_trained") + 1] == "/init/final.ckpt"
    assert command[command.index("--model") + 1] == "deeplab_v3_s8"
    assert sim.table()[1]["attempt"] == "01234567.s8-vocaug.1", "a new stage gets a new table"
    assert "StageSucceeded" in reasons(sim) and "StageStarted" in reasons(sim)


def test_last_stage_success_finishes_the_training():
    sim = running_sim(stages=[stage("only")])
    sim.succeed_all(result_message(miou=0.8))
    sim.settle()
    st = sim.status
    assert st["phase"] == "Succeeded" and st["completionTime"] and st["miou"] == 0.8
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Running"]["status"] == "False"
    assert sim.pods == {}, "nothing left running"
    assert reasons(sim)[-1] == "Succeeded"


def test_worker_failure_restarts_the_attempt_with_a_fresh_table():
    sim = running_sim()
    old = sim.table()[1]
    sim.terminate(sim.pods[pod_name("s16-vocaug", 1, 2)], 1, "Traceback...\nRuntimeError: HCCL timeout")
    result = sim.step()
    assert {a.name for a in result.actions if isinstance(a, Delete)} == {
        pod_name("s16-vocaug", 1, i) for i in range(4)
    }
    replaced = [a for a in result.actions if isinstance(a, ReplaceConfigMap)]
    assert replaced and json.loads(replaced[0].manifest["data"]["hccl.json"]) == {"status": "initializing"}
    st = sim.status
    assert st["attempt"] == 2 and st["attemptId"] == "01234567.s16-vocaug.2"
    assert st["stages"][0]["failures"] == 1 and st["stages"][0]["attempts"] == 2
    assert (
        "HCCL timeout" in st["stages"][0]["message"]
        and pod_name("s16-vocaug", 1, 2) in st["stages"][0]["message"]
    )
    assert sorted(sim.pods) == [pod_name("s16-vocaug", 2, i) for i in range(4)]
    assert sim.table()[1]["attempt"] != old["attempt"]
    env = {
        e["name"]: e.get("value")
        for e in sim.pods[pod_name("s16-vocaug", 2, 0)]["spec"]["containers"][0]["env"]
    }
    assert env["DEEPLAB_ATTEMPT"] == "01234567.s16-vocaug.2"
    # same train_dir: the job resumes from the newest checkpoint there
    command = sim.pods[pod_name("s16-vocaug", 2, 0)]["spec"]["containers"][0]["command"]
    assert command[command.index("--train_dir") + 1] == "/checkpoints/voc/s16-vocaug"
    assert "AttemptFailed" in reasons(sim) and "Restarting" in reasons(sim)
    # the new attempt reaches a complete table of its own
    sim.place(HOSTS)
    sim.settle()
    assert sim.table()[0]["status"] == "completed" and sim.table()[1]["attempt"] == st["attemptId"]


def test_exit_code_2_is_permanent():
    sim = running_sim()
    sim.terminate(
        sim.pods[pod_name("s16-vocaug", 1, 1)], 2, "deeplab-job: error: no such file: /data/x.mindrecord0"
    )
    sim.step()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "ConfigurationError"
    assert pod_name("s16-vocaug", 1, 1) in st["message"] and "no such file" in st["message"]
    assert st["attempt"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]}["Failed"] == "True"
    assert all(p["status"]["phase"] in ("Succeeded", "Failed") for p in sim.pods.values())


def test_exit_code_2_wins_over_collateral_failures():
    sim = running_sim()
    pods = sim.current()
    sim.terminate(pods[0], 143, "terminated")
    sim.terminate(pods[3], 2, "deeplab-job: error: bad flag")
    sim.step()
    assert sim.status["reason"] == "ConfigurationError" and "a1-w3" in sim.status["message"]


def test_backoff_limit_exceeded_fails_with_the_pod_and_reason():
    sim = running_sim(backoffLimit=1)
    for attempt in (1, 2):
        sim.place(HOSTS)
        sim.settle()
        sim.terminate(sim.pods[pod_name("s16-vocaug", attempt, 0)], 137, "", reason="OOMKilled")
        sim.step()
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "BackoffLimitExceeded"
    assert "2 failed attempt(s) (backoffLimit 1)" in st["message"]
    assert f"{pod_name('s16-vocaug', 2, 0)} (worker 0) exited with code 137 (OOMKilled)" in st["message"]
    assert reasons(sim)[-1] == "BackoffLimitExceeded"
    later = sim.settle()
    assert not later.actions or all(isinstance(a, Delete) for a in later.actions)


def test_evicted_pod_restarts_the_attempt():
    sim = running_sim()
    pod = sim.pods[pod_name("s16-vocaug", 1, 3)]
    pod["status"].update(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
    sim.step()
    assert sim.status["attempt"] == 2
    assert "Evicted" in sim.status["stages"][0]["message"]


def test_deleted_pod_after_launch_is_a_failure_before_launch_it_is_recreated():
    sim = Sim()
    sim.settle()
    del sim.pods[pod_name("s16-vocaug", 1, 1)]
    result = sim.step()
    assert [a.manifest["metadata"]["name"] for a in result.actions if isinstance(a, Create)] == [
        pod_name("s16-vocaug", 1, 1)
    ]
    assert sim.status["attempt"] == 1
    sim = running_sim()
    del sim.pods[pod_name("s16-vocaug", 1, 1)]
    sim.step()
    assert sim.status["attempt"] == 2 and "disappeared" in sim.status["stages"][0]["message"]
    sim = running_sim()
    sim.pods[pod_name("s16-vocaug", 1, 0)]["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    sim.step()
    assert sim.status["attempt"] == 2 and "was deleted" in sim.status["stages"][0]["message"]


def test_active_deadline_fails_the_training():
    sim = running_sim(activeDeadlineSeconds=60)
    assert sim.history[-1].requeue_after is not None and sim.history[-1].requeue_after <= 60
    sim.step(advance=120)
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "DeadlineExceeded"
    assert sim.pods == {}, "running pods are stopped"


def test_suspend_deletes_pods_and_resume_starts_a_new_attempt():
    sim = running_sim()
    sim.obj["spec"]["suspend"] = True
    sim.step()
    assert sim.status["phase"] == "Suspended" and sim.pods == {}
    assert sim.settle().actions == []
    sim.obj["spec"]["suspend"] = False
    sim.step()
    st = sim.status
    assert st["phase"] == "Pending" and st["attempt"] == 2 and st["stages"][0]["failures"] == 0
    assert sorted(sim.pods) == [pod_name("s16-vocaug", 2, i) for i in range(4)]
    assert {"Suspended", "Resumed"} <= set(reasons(sim))


def test_ttl_after_finished_deletes_the_training():
    sim = running_sim(stages=[stage("only")], ttlSecondsAfterFinished=30)
    sim.succeed_all(result_message())
    sim.settle()
    assert sim.history[-1].requeue_after == pytest.approx(29, abs=2)
    sim.step(advance=40)
    assert isinstance(sim.history[-1].actions[-1], DeleteTraining)


def test_stale_pods_of_other_attempts_are_deleted():
    sim = running_sim()
    stray = json.loads(json.dumps(sim.pods[pod_name("s16-vocaug", 1, 0)]))
    stray["metadata"]["name"] = pod_name("s16-vocaug", 0, 0)
    stray["metadata"]["labels"][names.LABEL_ATTEMPT] = "0"
    sim.pods[pod_name("s16-vocaug", 0, 0)] = stray
    result = sim.step()
    assert [a.name for a in result.actions if isinstance(a, Delete)] == [pod_name("s16-vocaug", 0, 0)]


def test_deleting_training_plans_nothing():
    sim = running_sim()
    sim.obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    result = sim.step()
    assert result.actions == [] and not result.status_changed


def test_dynamic_cluster_has_a_scheduler_pod_and_no_table():
    sim = Sim(training_obj(launcher="dynamicCluster", npuResource="", workers=2))
    first = sim.step()
    assert kinds(first) == ["Create:Service"], "no pod before the Service's ClusterIP is known"
    assert first.requeue_after is not None
    second = sim.step()
    assert kinds(second) == ["Create:Pod"] * 3
    assert sim.configmap is None
    svc = sim.service["spec"]
    assert svc["type"] == "ClusterIP" and svc["selector"]["deeplab.io/role"] == "scheduler"
    sched = sim.pods[pod_name("s16-vocaug", 1, None)]
    env = {e["name"]: e for e in sched["spec"]["containers"][0]["env"]}
    assert env["MS_ROLE"]["value"] == "MS_SCHED"
    # MindSpore wants an IP: the scheduler listens on its own pod IP, workers dial the Service's ClusterIP
    assert env["MS_SCHED_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    worker_env = {
        e["name"]: e.get("value")
        for e in sim.pods[pod_name("s16-vocaug", 1, 1)]["spec"]["containers"][0]["env"]
    }
    assert worker_env["MS_SCHED_HOST"] == CLUSTER_IP
    assert worker_env["MS_ROLE"] == "MS_WORKER" and worker_env["MS_NODE_ID"] == "1"
    assert worker_env["MS_NODE_RANK"] == "1" and worker_env["MS_LOCAL_WORKER"] == "1"
    assert worker_env["MS_WORKER_NUM"] == "2" and worker_env["MS_SERVER_NUM"] == "0"
    assert (
        "resources" not in sched["spec"]["containers"][0] or not sched["spec"]["containers"][0]["resources"]
    )
    sim.place(["10.0.0.1", "10.0.0.1"])
    sim.set_phase("Running")
    sim.set_phase("Running", names.ROLE_SCHEDULER)
    sim.settle()
    assert sim.status["phase"] == "Running"
    # all workers succeeded: the stage is done whatever the scheduler does
    sim.succeed_all(result_message())
    sim.terminate(sim.current(names.ROLE_SCHEDULER)[0], 1, "scheduler lost workers")
    sim.step()
    assert sim.status["stage"] == "2/3 s8-vocaug"


def test_volcano_gang_creates_a_podgroup_and_annotates_pods():
    sim = Sim(training_obj(gang="volcano"))
    first = sim.step()
    assert "Create:PodGroup" in kinds(first)
    group = next(a.manifest for a in first.actions if a.manifest.get("kind") == "PodGroup")
    assert group["spec"]["minMember"] == 4
    pod = sim.pods[pod_name("s16-vocaug", 1, 0)]
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "voc"
    assert pod["spec"]["schedulerName"] == "volcano"
    assert "Create:PodGroup" not in kinds(sim.step())


def test_conditions_keep_their_transition_time_while_status_holds():
    sim = running_sim()
    before = {c["type"]: c["lastTransitionTime"] for c in sim.status["conditions"]}
    sim.now += timedelta(hours=1)
    sim.settle()
    after = {c["type"]: c["lastTransitionTime"] for c in sim.status["conditions"]}
    assert before == after
