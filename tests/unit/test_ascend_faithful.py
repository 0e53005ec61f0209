"""What MindX's ascend-operator does, decided by the pure plan (issue #14): multi-NPU pods, rank table
1.2, MindSpore addresses as IPs, hangs, disruptions, failure rules and faulty nodes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sim import CLUSTER_IP, HOSTS, Sim, node_name, pod_name, running, training_obj

from controller import faults, names, resources
from controller.api import Training
from controller.plan import Delete
from controller.ranktable import DEVICE_ANNOTATION

STAGE = "s16-vocaug"


def reasons(sim: Sim) -> list[str]:
    return [e.reason for p in sim.history for e in p.events]


def env_of(pod: dict) -> dict[str, dict]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def progress_line(step: int) -> str:
    return json.dumps(
        {"event": "progress", "epoch": 1, "epochs": 10, "step": step, "steps": 100, "loss": 0.5}
    )


def condition(sim: Sim, kind: str) -> dict:
    return next(c for c in sim.status["conditions"] if c["type"] == kind)


# -- multi-NPU pods ---------------------------------------------------------------------------------
def test_two_npus_per_pod_one_pod_per_server_and_a_table_entry_per_pod():
    sim = Sim(training_obj(workers=4, npusPerPod=2))
    sim.settle()
    assert sorted(sim.pods) == [pod_name(STAGE, 1, i) for i in range(2)], "4 ranks in 2 pods"
    first = sim.current()[0]
    limits = first["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"huawei.com/Ascend910": "2"}
    assert [p["metadata"]["annotations"]["hccl/rankIndex"] for p in sim.current()] == ["0", "1"]
    sim.place(["10.0.0.1", "10.0.0.2"])
    sim.settle()
    table, ranks = sim.table()
    assert table["server_count"] == "2" and ranks["ranks"] == {
        pod_name(STAGE, 1, 0): 0,
        pod_name(STAGE, 1, 1): 2,
    }
    devices = [[(d["device_id"], d["rank_id"]) for d in s["device"]] for s in table["server_list"]]
    assert devices == [[("0", "0"), ("1", "1")], [("0", "2"), ("1", "3")]]
    assert "4 rank(s) in 2 pod(s)" in next(
        e.message for p in sim.history for e in p.events if e.reason == "RankTableReady"
    )


def test_a_pod_with_fewer_chips_than_npus_per_pod_waits():
    sim = Sim(training_obj(workers=4, npusPerPod=2))
    sim.settle()
    sim.place(["10.0.0.1", "10.0.0.2"])
    pod = sim.current()[1]
    info = json.loads(pod["metadata"]["annotations"][DEVICE_ANNOTATION])
    info["devices"] = info["devices"][:1]
    pod["metadata"]["annotations"][DEVICE_ANNOTATION] = json.dumps(info)
    sim.settle()
    assert sim.table()[0] == {"status": "initializing"}
    assert "1 device(s) allocated, 2 expected" in condition(sim, "PodsPending")["message"]


def test_dynamic_cluster_multi_process_pods_get_mindx_variables():
    t = Training.from_obj(training_obj(workers=4, npusPerPod=2, launcher="dynamicCluster", npuResource=""))
    pods = resources.desired_pods(t, 0, 1, resources.PodContext(sched_ip=CLUSTER_IP))
    assert len(pods) == 3
    second = env_of(pods[pod_name(STAGE, 1, 1)])
    assert {k: second[k]["value"] for k in ("MS_NODE_RANK", "MS_LOCAL_WORKER", "MS_WORKER_NUM")} == {
        "MS_NODE_RANK": "1",
        "MS_LOCAL_WORKER": "2",
        "MS_WORKER_NUM": "4",
    }
    assert "MS_NODE_ID" not in second, "the launcher numbers the processes of a multi-process pod"
    assert second["MS_SCHED_HOST"]["value"] == CLUSTER_IP


def test_the_crd_refuses_workers_that_do_not_fill_whole_pods():
    from controller.api import _SPEC_RULES

    rules = [r["rule"] for r in _SPEC_RULES["x-kubernetes-validations"]]
    assert any("self.workers % self.npusPerPod == 0" in r for r in rules)


def test_volcano_pods_take_their_visible_devices_from_volcanos_annotation():
    pods = resources.desired_pods(Training.from_obj(training_obj(gang="volcano")), 0, 1)
    env = env_of(next(iter(pods.values())))
    ref = env["ASCEND_VISIBLE_DEVICES"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ref == "metadata.annotations['huawei.com/Ascend910']"
    plain = resources.desired_pods(Training.from_obj(training_obj()), 0, 1)
    assert "ASCEND_VISIBLE_DEVICES" not in env_of(next(iter(plain.values()))), "the device plugin sets it"


# -- rank table 1.2 ---------------------------------------------------------------------------------
def test_rank_table_1_2_carries_super_pods_from_the_annotation():
    sim = Sim(training_obj(workers=2, npusPerServer=1, rankTableVersion="1.2"))
    sim.settle()
    sim.place(["10.0.0.1", "10.0.0.2"])
    sim.settle()
    assert sim.table()[0] == {"status": "initializing"}, "1.2 needs super_device_id and super_pod_id"
    for index, pod in enumerate(sim.current()):
        info = json.loads(pod["metadata"]["annotations"][DEVICE_ANNOTATION])
        info["super_pod_id"] = index // 2  # both servers in super pod 0
        info["devices"][0]["super_device_id"] = str(37748736 + index)
        pod["metadata"]["annotations"][DEVICE_ANNOTATION] = json.dumps(info)
    sim.settle()
    table, _ = sim.table()
    assert table["version"] == "1.2" and table["status"] == "completed"
    assert [s["device"][0]["super_device_id"] for s in table["server_list"]] == ["37748736", "37748737"]
    assert table["super_pod_list"] == [
        {"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"}, {"server_id": "10.0.0.2"}]}
    ]


# -- addresses --------------------------------------------------------------------------------------
def test_a_headless_service_of_an_earlier_version_is_replaced_before_pods_start():
    sim = Sim(training_obj(launcher="dynamicCluster", npuResource="", workers=2))
    sim.step()
    sim.service["spec"]["clusterIP"] = "None"  # what earlier versions created
    old_uid = sim.service["metadata"]["uid"]
    result = sim.step()
    assert [(type(a).__name__, getattr(a, "kind", "")) for a in result.actions] == [("Delete", "Service")]
    assert sim.pods == {} and sim.service is None
    sim.settle()
    assert sim.service["metadata"]["uid"] != old_uid and sim.service["spec"]["clusterIP"] == CLUSTER_IP
    assert len(sim.pods) == 3


# -- hangs ------------------------------------------------------------------------------------------
def test_no_progress_for_progress_timeout_seconds_restarts_the_attempt_as_hung():
    sim = running(training_obj(progressTimeoutSeconds=600))
    sim.step(logs=[progress_line(5)])
    sim.step(logs=[progress_line(6)], advance=500)  # progress: the clock starts again
    assert sim.status["attempt"] == 1
    sim.step(logs=[progress_line(6)], advance=500)  # 500 s without a new line
    assert sim.status["attempt"] == 1
    assert not sim.step(logs=None, advance=300).actions, "an unreadable log never means hung"
    result = sim.step(logs=[progress_line(6)], advance=1)
    assert sim.status["attempt"] == 2 and sim.status["stages"][0]["failures"] == 1
    hung = next(e for e in result.events if e.reason == "Hung")
    assert "600s" in hung.message and "step 6/100" in hung.message
    assert sorted(a.name for a in result.actions if isinstance(a, Delete)) == [
        pod_name(STAGE, 1, i) for i in range(4)
    ]


def test_a_hang_before_the_first_progress_line_counts_from_running():
    sim = running(training_obj(progressTimeoutSeconds=60))
    sim.step(logs=["compiling..."], advance=50)
    assert sim.status["attempt"] == 1
    sim.step(logs=["compiling..."], advance=15)
    assert sim.status["attempt"] == 2 and "no progress line yet" in sim.status["stages"][0]["message"]


def test_progress_timeout_zero_never_calls_a_training_hung():
    sim = running(training_obj(progressTimeoutSeconds=0))
    sim.step(logs=["silence"], advance=10**6)
    assert sim.status["attempt"] == 1 and sim.status["phase"] == "Running"


# -- disruptions and failure rules ------------------------------------------------------------------
def evict(sim: Sim, rank: int, reason: str = "EvictionByEvictionAPI") -> None:
    pod = sim.current()[rank]
    pod["status"]["conditions"] = [{"type": faults.DISRUPTION_TARGET, "status": "True", "reason": reason}]
    sim.terminate(pod, 143, "saved step 40; stopping")


def test_an_eviction_restarts_without_using_up_the_backoff_limit():
    sim = running(training_obj(backoffLimit=0))
    evict(sim, 1)
    result = sim.step()
    record = sim.status["stages"][0]
    assert sim.status["phase"] != "Failed" and sim.status["attempt"] == 2
    assert record["failures"] == 0 and record["disruptions"] == 1
    event = next(e for e in result.events if e.reason == "Disrupted")
    assert "EvictionByEvictionAPI" in event.message and "backoffLimit not used" in event.message


def test_disruptions_have_their_own_cap():
    sim = running(training_obj(failurePolicy={"maxDisruptions": 1}))
    evict(sim, 0, "PreemptionByScheduler")
    sim.settle()
    sim.place(HOSTS)
    sim.set_phase("Running")
    sim.settle()
    evict(sim, 2, "DeletionByTaintManager")
    sim.step()
    assert sim.status["phase"] == "Failed" and sim.status["reason"] == "DisruptionLimitExceeded"


def test_a_pod_deleted_by_someone_else_is_a_disruption():
    sim = running(training_obj(backoffLimit=0))
    sim.pods[pod_name(STAGE, 1, 3)]["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    sim.step()
    assert sim.status["attempt"] == 2 and sim.status["stages"][0]["disruptions"] == 1


@pytest.mark.parametrize(
    ("code", "reason", "disrupted"), [(143, None, True), (137, None, True), (137, "OOMKilled", False)]
)
def test_a_deleted_pod_killed_after_its_grace_period_is_a_disruption_unless_out_of_memory(
    code, reason, disrupted
):
    """Deleted by someone else: the job saves on SIGTERM and exits 143, or the kubelet kills it (137) when
    saving outlasts the grace period; neither is the training's fault. The OOM killer's 137 is."""
    sim = running(training_obj(backoffLimit=1))
    pod = sim.pods[pod_name(STAGE, 1, 3)]
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    sim.terminate(pod, code, "stopped by SIGTERM after step 4", reason=reason)
    sim.step()
    record = sim.status["stages"][0]
    assert sim.status["attempt"] == 2
    assert (record["disruptions"], record["failures"]) == ((1, 0) if disrupted else (0, 1))


def test_failure_rules_decide_in_order_then_exit_2_fails():
    rules = [
        {"action": "Ignore", "onExitCodes": {"values": [42]}},
        {"action": "FailTraining", "onExitCodes": {"values": [137]}},
        {"action": "RestartAttempt", "onExitCodes": {"operator": "NotIn", "values": [2, 42, 137]}},
    ]
    sim = running(training_obj(backoffLimit=5, failurePolicy={"rules": rules}))
    sim.terminate(sim.current()[0], 42, "flaky storage")
    sim.step()
    record = sim.status["stages"][0]
    assert sim.status["attempt"] == 2 and record["failures"] == 0 and record["disruptions"] == 1
    sim.settle()
    sim.place(HOSTS)
    sim.set_phase("Running")
    sim.settle()
    sim.terminate(sim.current()[1], 1, "Traceback ...")
    sim.step()
    assert sim.status["attempt"] == 3 and sim.status["stages"][0]["failures"] == 1
    sim.settle()
    sim.place(HOSTS)
    sim.set_phase("Running")
    sim.settle()
    sim.terminate(sim.current()[2], 137, "OOMKilled")
    sim.step()
    assert sim.status["phase"] == "Failed" and sim.status["reason"] == "PodFailurePolicy"
    built_in = running(training_obj())
    built_in.terminate(built_in.current()[0], 2, "launch: error: bad table")
    built_in.step()
    assert built_in.status["reason"] == "ConfigurationError"


# -- faulty nodes -----------------------------------------------------------------------------------
def test_an_hccl_error_keeps_the_next_attempts_off_that_node():
    sim = running(training_obj(failurePolicy={"avoidFaultyNodeSeconds": 600}))
    sim.terminate(sim.current()[2], 1, "RuntimeError: EI0006: Getting socket times out. HCCL init failed")
    result = sim.step()
    bad = node_name(HOSTS[2])
    avoided = sim.status["avoidedNodes"]
    assert [n["name"] for n in avoided] == [bad] and "EI0006" in avoided[0]["reason"]
    assert any(e.reason == "NodeAvoided" and bad in e.message for e in result.events)
    sim.settle()
    term = sim.current()[0]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["nodeSelectorTerms"][0]["matchFields"] == [
        {"key": "metadata.name", "operator": "NotIn", "values": [bad]}
    ]
    # later attempts, after the time is up, may use the node again
    sim.place(HOSTS)
    sim.set_phase("Running")
    sim.settle()
    sim.now += timedelta(seconds=601)
    sim.terminate(sim.current()[0], 1, "ValueError: a bug")
    sim.settle()
    assert "nodeAffinity" not in sim.current()[0]["spec"]["affinity"]


def test_the_device_plugins_unhealthy_report_marks_the_node_too():
    sim = running()
    bad = node_name(HOSTS[0])
    sim.nodes = {
        bad: {"metadata": {"name": bad, "annotations": {"huawei.com/Ascend910-Unhealthy": "Ascend910-4"}}}
    }
    sim.terminate(sim.current()[0], 1, "Segmentation fault")
    sim.step()
    assert sim.status["avoidedNodes"][0]["name"] == bad
    assert "Ascend910-Unhealthy=Ascend910-4" in sim.status["avoidedNodes"][0]["reason"]


def test_an_ordinary_bug_avoids_no_node():
    sim = running()
    sim.terminate(sim.current()[0], 1, "ZeroDivisionError: division by zero")
    sim.step()
    assert "avoidedNodes" not in sim.status


def test_device_info_configmap_and_fault_patterns():
    data = {
        faults.DEVICE_INFO_KEY: json.dumps(
            {"DeviceInfo": {"DeviceList": {"huawei.com/Ascend910-NetworkUnhealthy": "Ascend910-1", "x": 3}}}
        )
    }
    listed = faults.device_list(data)
    assert listed == {"huawei.com/Ascend910-NetworkUnhealthy": "Ascend910-1"}
    assert faults.unhealthy_npus({"metadata": {"annotations": listed}}) == listed_text(listed)
    assert faults.device_list({faults.DEVICE_INFO_KEY: "[" * 10_000}) == {}
    assert faults.device_fault("EL0004: Failed to allocate memory") == "EL0004"
    assert faults.device_fault("EZ9999: Inner Error (an operator bug)") == ""
    assert faults.device_fault("KeyError: 'hccl_time'") == ""


def listed_text(listed: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in listed.items())


def test_pod_names_match_the_pods_built():
    for spec in ({}, {"launcher": "dynamicCluster", "npuResource": ""}, {"workers": 8, "npusPerPod": 4}):
        t = Training.from_obj(training_obj(**spec))
        built = resources.desired_pods(t, 1, 3, resources.PodContext(sched_ip=CLUSTER_IP))
        assert resources.pod_names(t, 1, 3) == list(built)
        assert all(n.startswith("voc-s8-vocaug") for n in built)
        assert sum(
            p["metadata"]["labels"][names.LABEL_ROLE] == "worker" for p in built.values()
        ) == resources.worker_pods(t)


# -- placement by construction (issue #13) ------------------------------------------------------------
def worker_pods_of(**spec) -> list[dict]:
    t = Training.from_obj(training_obj(**spec))
    pods = resources.desired_pods(t, 0, 1, resources.PodContext(sched_ip=CLUSTER_IP))
    return [p for p in pods.values() if p["metadata"]["labels"][names.LABEL_ROLE] == names.ROLE_WORKER]


def test_the_workers_of_one_server_go_to_one_node_and_servers_to_different_nodes():
    pods = worker_pods_of(workers=16, npusPerServer=8)
    assert [p["metadata"]["labels"][names.LABEL_SERVER] for p in pods] == ["0"] * 8 + ["1"] * 8
    affinity = pods[0]["spec"]["affinity"]
    together = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert together["topologyKey"] == "kubernetes.io/hostname"
    assert together["matchLabelKeys"] == [names.LABEL_SERVER], "with the pods of its own server"
    apart = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert apart["mismatchLabelKeys"] == [names.LABEL_SERVER], "away from the other servers' pods"
    assert apart["labelSelector"]["matchLabels"][names.LABEL_ATTEMPT] == "1"
    # one affinity for every worker (Kueue groups a pod group's pods by their spec)
    assert all(p["spec"]["affinity"] is affinity for p in pods)


def test_one_pod_per_server_needs_only_anti_affinity_and_a_single_server_none():
    per_server = worker_pods_of(workers=4, npusPerServer=2, npusPerPod=2)
    assert all("podAffinity" not in p["spec"]["affinity"] for p in per_server)
    assert all("podAntiAffinity" in p["spec"]["affinity"] for p in per_server)
    single = worker_pods_of(workers=2, npusPerServer=8)
    assert "podAntiAffinity" not in single[0]["spec"]["affinity"]
    cpu = worker_pods_of(workers=4, npuResource="", launcher="dynamicCluster")
    assert all("affinity" not in p["spec"] for p in cpu), "CPU workers go anywhere"


def test_a_placement_that_breaks_a_rule_restarts_the_attempt_saying_where_pods_landed():
    sim = Sim(training_obj(workers=4, npusPerServer=2))
    sim.settle()
    sim.place(["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"])  # a scheduler ignoring the affinity
    sim.set_phase("Running")
    sim.settle()
    assert sim.status["attempt"] == 2 and sim.status["stages"][0]["failures"] == 1
    rejected = [e for p in sim.history for e in p.events if e.reason == "PlacementRejected"]
    assert len(rejected) == 1 and "server 0 landed on 2 nodes" in rejected[0].message
    assert "node-1" in rejected[0].message and "node-2" in rejected[0].message
    assert condition(sim, "PlacementValid")["status"] == "False"
    sim.place(HOSTS)  # two per node, as the affinity asks
    sim.set_phase("Running")
    sim.settle()
    assert sim.table()[0]["status"] == "completed"
    assert condition(sim, "PlacementValid")["status"] == "True"


def test_two_npus_of_a_server_outside_one_ring_are_refused():
    sim = Sim(training_obj(workers=4, npusPerServer=2, npusPerPod=2))
    sim.settle()
    sim.place(["10.0.0.1", "10.0.0.2"])
    pod = sim.current()[1]
    info = json.loads(pod["metadata"]["annotations"][DEVICE_ANNOTATION])
    info["devices"] = [
        {"device_id": "3", "device_ip": "192.168.3.2"},
        {"device_id": "4", "device_ip": "192.168.4.2"},
    ]
    pod["metadata"]["annotations"][DEVICE_ANNOTATION] = json.dumps(info)
    sim.set_phase("Running")
    sim.settle()
    rejected = [e.message for p in sim.history for e in p.events if e.reason == "PlacementRejected"]
    assert rejected and "NPUs [3, 4], not within one HCCS ring" in rejected[0]


def test_kueue_gang_puts_each_attempt_in_its_own_pod_group():
    pods = resources.desired_pods(Training.from_obj(training_obj(gang="kueue", queue="team-a")), 0, 2)
    groups = {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods.values()}
    assert len(groups) == 1 and next(iter(groups)).endswith("-a2")
    assert {p["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for p in pods.values()} == {"team-a"}
    assert {p["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] for p in pods.values()} == {
        "4"
    }
    assert all("schedulerName" not in p["spec"] for p in pods.values()), "kube-scheduler places them"
    sim = Sim(training_obj(gang="kueue", queue="team-a"))
    sim.settle()
    assert sim.podgroup is None, "no Volcano PodGroup"


def test_volcano_podgroup_carries_queue_and_min_resources():
    group = resources.podgroup(Training.from_obj(training_obj(gang="volcano", queue="research", workers=8)))
    assert group["spec"] == {
        "minMember": 8,
        "queue": "research",
        "minResources": {"huawei.com/Ascend910": "8"},
    }
