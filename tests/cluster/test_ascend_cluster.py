"""Issue #14 against the real API server, with the controller under its own RBAC: device allocation,
MindX's table layout, multi-NPU pods, ClusterIP addresses, disruptions through the Eviction API,
failure rules and faulty nodes (bound through the binding subresource, as a scheduler does)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from kubelet import MERGE, TWO_HOSTS, apply, one_stage_manifest, terminated_status, wait_for
from kubernetes import client

from controller.ranktable import DEVICE_ANNOTATION

pytestmark = pytest.mark.cluster

HOSTS = list(TWO_HOSTS)


def condition(kubelet, name: str, kind: str) -> dict:
    return next((c for c in kubelet.status(name).get("conditions") or [] if c["type"] == kind), {})


@pytest.fixture
def nodes(admin, kubelet, kubectl) -> Iterator[callable]:
    """Node objects a test creates (cluster-scoped), removed afterwards with the pods bound to them
    (a bound pod waits for its kubelet to confirm deletion: there is none)."""
    core, made = client.CoreV1Api(admin), []

    def make() -> str:
        name = f"atlas-{uuid.uuid4().hex[:6]}"
        core.create_node(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}, _preload_content=False
        )
        made.append(name)
        return name

    yield make
    kubectl("delete", "pods", "--all", "-n", kubelet.ns, "--force", "--grace-period=0")
    for name in made:
        core.delete_node(name, _preload_content=False)


def test_npu_workers_wait_for_the_device_plugin_then_get_mindx_s_table(controller, kubelet, kubectl):
    apply(kubectl, one_stage_manifest("alloc", kubelet.ns))
    pods = wait_for("2 pods", lambda: len(kubelet.pods("alloc")) == 2 and kubelet.pods("alloc"))
    assert [p["metadata"]["annotations"]["hccl/rankIndex"] for p in pods] == ["0", "1"]
    assert {p["spec"]["containers"][0]["name"] for p in pods} == {"ascend"}
    kubelet.place(pods, HOSTS, device_plugin=False)
    waiting = wait_for(
        "WaitingForDeviceAllocation",
        lambda: (
            condition(kubelet, "alloc", "PodsPending").get("reason") == "WaitingForDeviceAllocation"
            and condition(kubelet, "alloc", "PodsPending")
        ),
    )
    assert pods[0]["metadata"]["name"] in waiting["message"]
    assert kubelet.table("alloc")[0] == {"status": "initializing"}, "no pod IP stands in for an NPU"
    # one event for the cause, however many resyncs pass (log interval 1 s here)
    wait_for("the event", lambda: "WaitingForDeviceAllocation" in kubelet.reasons("alloc"))
    kubelet.annotate_devices(pods[0]["metadata"]["name"], HOSTS[0], [(3, "192.168.3.1")])
    kubelet.annotate_devices(pods[1]["metadata"]["name"], HOSTS[1], [(5, "192.168.5.2")])
    table, _ = wait_for(
        "complete table",
        lambda: kubelet.table("alloc")[0].get("status") == "completed" and kubelet.table("alloc"),
    )
    assert kubelet.reasons("alloc").count("WaitingForDeviceAllocation") == 1
    assert table["server_list"] == [
        {
            "device": [{"device_id": "3", "device_ip": "192.168.3.1", "rank_id": "0"}],
            "server_id": HOSTS[0],
            "host_ip": HOSTS[0],
            "container_ip": "10.244.1.10",
        },
        {
            "device": [{"device_id": "5", "device_ip": "192.168.5.2", "rank_id": "1"}],
            "server_id": HOSTS[1],
            "host_ip": HOSTS[1],
            "container_ip": "10.244.2.11",
        },
    ]
    assert kubelet.configmap("alloc")["data"]["version"].isdigit()


def test_two_npus_per_pod_one_pod_per_server(controller, kubelet, kubectl):
    apply(kubectl, one_stage_manifest("multi", kubelet.ns, workers=4, npusPerPod=2, npusPerServer=2))
    pods = wait_for("2 pods for 4 ranks", lambda: len(kubelet.pods("multi")) == 2 and kubelet.pods("multi"))
    limits = pods[0]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"huawei.com/Ascend910": "2"}
    kubelet.place(pods, HOSTS, device_plugin=False)
    for pod, host in zip(pods, HOSTS, strict=True):
        kubelet.annotate_devices(
            pod["metadata"]["name"], host, [(4, f"192.168.4.{host[-1]}"), (5, "192.168.5.9")]
        )
    table, ranks = wait_for(
        "complete table",
        lambda: kubelet.table("multi")[0].get("status") == "completed" and kubelet.table("multi"),
    )
    assert [[d["rank_id"] for d in s["device"]] for s in table["server_list"]] == [["0", "1"], ["2", "3"]]
    assert sorted(ranks["ranks"].values()) == [0, 2]


def test_refused_odd_npus_per_pod(kubelet, kubectl, operator_installed):
    refused = kubectl(
        "apply", "-f", "-", stdin=json.dumps(one_stage_manifest("odd", kubelet.ns, workers=3, npusPerPod=2))
    )
    assert refused.returncode != 0 and "npusPerPod" in refused.stderr


def test_dynamic_cluster_workers_dial_the_scheduler_by_cluster_ip(controller, kubelet, kubectl):
    apply(kubectl, one_stage_manifest("dyn", kubelet.ns, launcher="dynamicCluster", npuResource=""))
    pods = wait_for("3 pods", lambda: len(kubelet.pods("dyn")) == 3 and kubelet.pods("dyn"))
    svc = json.loads(kubectl("get", "service", "dyn", "-n", kubelet.ns, "-o", "json").stdout)
    ip = svc["spec"]["clusterIP"]
    assert svc["spec"]["type"] == "ClusterIP" and ip not in ("", "None")
    by_role = {}
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        by_role.setdefault(pod["metadata"]["labels"]["deeplab.io/role"], []).append(env)
    assert all(env["MS_SCHED_HOST"]["value"] == ip for env in by_role["worker"])
    assert by_role["scheduler"][0]["MS_SCHED_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    selector = ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())
    selected = kubectl("get", "pods", "-n", kubelet.ns, "-l", selector, "-o", "name").stdout.split()
    assert len(selected) == 1 and "sched" in selected[0], "the Service leads to the scheduler pod only"


def test_an_eviction_through_the_eviction_api_does_not_use_up_backoff(controller, kubelet, kubectl, admin):
    apply(kubectl, one_stage_manifest("evicted", kubelet.ns, backoffLimit=0))
    pods = kubelet.run_attempt("evicted")
    victim = pods[1]["metadata"]["name"]
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": victim, "namespace": kubelet.ns},
    }
    client.CoreV1Api(admin).create_namespaced_pod_eviction(victim, kubelet.ns, body, _preload_content=False)
    wait_for("attempt 2", lambda: kubelet.status("evicted").get("attempt") == 2)
    record = kubelet.status("evicted")["stages"][0]
    assert record["failures"] == 0 and record["disruptions"] == 1
    assert kubelet.status("evicted")["phase"] != "Failed"
    assert "Disrupted" in kubelet.reasons("evicted") and "AttemptFailed" not in kubelet.reasons("evicted")


def test_a_fail_training_rule_stops_at_once(controller, kubelet, kubectl):
    rules = [{"action": "FailTraining", "onExitCodes": {"values": [137]}}]
    apply(kubectl, one_stage_manifest("ruled", kubelet.ns, backoffLimit=5, failurePolicy={"rules": rules}))
    pods = kubelet.run_attempt("ruled")
    kubelet.terminate(pods[0]["metadata"]["name"], 137, "", reason="OOMKilled")
    wait_for("Failed", lambda: kubelet.status("ruled").get("phase") == "Failed")
    status = kubelet.status("ruled")
    assert status["reason"] == "PodFailurePolicy" and status["attempt"] == 1
    wait_for("event", lambda: "PodFailurePolicy" in kubelet.reasons("ruled"))


def test_a_worker_with_an_hccl_error_keeps_the_next_attempt_off_its_node(controller, kubelet, kubectl, nodes):
    apply(kubectl, one_stage_manifest("hccl", kubelet.ns))
    pods = kubelet.run_attempt("hccl")
    bad, good = nodes(), nodes()
    kubelet.bind(pods[0]["metadata"]["name"], good)
    kubelet.bind(pods[1]["metadata"]["name"], bad)
    message = "Traceback ...\nRuntimeError: EI0006: Getting socket times out. HCCL init failed"
    kubelet.patch_status(pods[1]["metadata"]["name"], terminated_status(1, message))
    wait_for("attempt 2", lambda: kubelet.status("hccl").get("attempt") == 2)
    avoided = kubelet.status("hccl")["avoidedNodes"]
    assert [n["name"] for n in avoided] == [bad] and "EI0006" in avoided[0]["reason"]
    fresh = wait_for("attempt 2 pods", lambda: kubelet.pods("hccl", attempt="2") or None)
    term = fresh[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchFields"][0] == {
        "key": "metadata.name",
        "operator": "NotIn",
        "values": [bad],
    }
    wait_for("NodeAvoided event", lambda: "NodeAvoided" in kubelet.reasons("hccl"))
    assert any(bad in e["message"] for e in kubelet.events("hccl") if e["reason"] == "NodeAvoided")


def test_the_device_plugins_health_report_in_kube_system_marks_a_node(
    controller, kubelet, kubectl, nodes, admin
):
    core = client.CoreV1Api(admin)
    sick = nodes()
    report = {
        "DeviceInfo": {"DeviceList": {"huawei.com/Ascend910-Unhealthy": "Ascend910-2"}, "UpdateTime": 1}
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"mindx-dl-deviceinfo-{sick}", "namespace": "kube-system"},
        "data": {"DeviceInfoCfg": json.dumps(report)},
    }
    core.create_namespaced_config_map("kube-system", cm, _preload_content=False)
    try:
        apply(kubectl, one_stage_manifest("sick", kubelet.ns))
        pods = kubelet.run_attempt("sick")
        kubelet.bind(pods[0]["metadata"]["name"], sick)
        kubelet.patch_status(pods[0]["metadata"]["name"], terminated_status(139, "Segmentation fault"))
        wait_for("attempt 2", lambda: kubelet.status("sick").get("attempt") == 2)
        avoided = kubelet.status("sick")["avoidedNodes"]
        assert avoided[0]["name"] == sick and "Ascend910-Unhealthy=Ascend910-2" in avoided[0]["reason"]
    finally:
        core.delete_namespaced_config_map(cm["metadata"]["name"], "kube-system", _preload_content=False)


def test_a_rank_0_that_stops_printing_progress_is_hung(controller, kubelet, kubectl, admin, tmp_path):
    """The log path is real (API server -> kubelet endpoint -> controller): rank 0 printed one line,
    then nothing while every worker runs: after progressTimeoutSeconds the attempt restarts."""
    from fake_kubelet import FakeKubelet, progress_line

    fake = FakeKubelet(tmp_path)
    fake.start()
    node = f"node-{kubelet.ns}"
    try:
        fake.register_node(admin, node)
        apply(kubectl, one_stage_manifest("stuck", kubelet.ns, npusPerServer=2, progressTimeoutSeconds=4))
        pods = wait_for("pods", lambda: len(kubelet.pods("stuck")) == 2 and kubelet.pods("stuck"))
        for pod in pods:
            kubelet.bind(pod["metadata"]["name"], node)
        fake.logs[(kubelet.ns, kubelet.pod_name("stuck", "only", 1, 0))] = [progress_line(3, 10, 0.43)]
        kubelet.place(pods, HOSTS)
        wait_for("progress", lambda: kubelet.status("stuck").get("epoch") == "3/10")
        assert kubelet.status("stuck")["attempt"] == 1
        wait_for("attempt 2", lambda: kubelet.status("stuck").get("attempt") == 2, timeout=30)
        hung = wait_for("Hung event", lambda: [e for e in kubelet.events("stuck") if e["reason"] == "Hung"])
        assert "progressTimeoutSeconds" in hung[0]["message"] and "step 30/100" in hung[0]["message"]
        assert kubelet.status("stuck")["stages"][0]["failures"] == 1
    finally:
        fake.stop()
        kubectl("delete", "pods", "--all", "-n", kubelet.ns, "--force", "--grace-period=0")
        kubectl("delete", "node", node, "--wait=false")


def test_rank_table_1_2_from_super_pod_annotations(controller, kubelet, kubectl):
    apply(kubectl, one_stage_manifest("a3", kubelet.ns, rankTableVersion="1.2"))
    pods = wait_for("2 pods", lambda: len(kubelet.pods("a3")) == 2 and kubelet.pods("a3"))
    kubelet.place(pods, HOSTS, device_plugin=False)
    for index, (pod, host) in enumerate(zip(pods, HOSTS, strict=True)):
        value = {
            "pod_name": pod["metadata"]["name"],
            "server_id": host,
            "super_pod_id": 0,
            "devices": [
                {
                    "device_id": "0",
                    "device_ip": f"192.168.0.{index + 1}",
                    "super_device_id": str(37748736 + index),
                }
            ],
        }
        patch = {"metadata": {"annotations": {DEVICE_ANNOTATION: json.dumps(value)}}}
        kubelet.core.patch_namespaced_pod(pod["metadata"]["name"], kubelet.ns, patch, _content_type=MERGE)
    table, _ = wait_for(
        "complete table", lambda: kubelet.table("a3")[0].get("status") == "completed" and kubelet.table("a3")
    )
    assert table["version"] == "1.2"
    assert [s["device"][0]["super_device_id"] for s in table["server_list"]] == ["37748736", "37748737"]
    assert table["super_pod_list"] == [
        {"super_pod_id": "0", "server_list": [{"server_id": h} for h in HOSTS]}
    ]
