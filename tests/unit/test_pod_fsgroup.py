"""fsGroup: the volumes the kubelet can hand over are writable for the non-root worker (issue #12 §4/§6)."""

from __future__ import annotations

from sim import stage, training_obj

from controller import resources
from controller.api import Training

CTX = resources.PodContext(sched_ip="10.96.0.10")


def pods_of(**spec) -> list[dict]:
    t = Training.from_obj(training_obj(stages=[stage("one")], **spec))
    return list(resources.desired_pods(t, 0, 1, CTX).values())


def role(pod: dict) -> str:
    return pod["metadata"]["labels"]["deeplab.io/role"]


def test_non_root_pods_get_the_workers_group_on_their_volumes():
    """CPU workers and every scheduler pod run as uid/gid 1000: fsGroup 1000 makes a fresh, root-owned
    PVC group-writable for them, changed only when its root does not match yet."""
    cpu = pods_of(npuResource="", launcher="dynamicCluster")
    npu = pods_of(launcher="dynamicCluster")
    for pod in [*cpu, *(p for p in npu if role(p) == "scheduler")]:
        user = pod["spec"]["containers"][0]["securityContext"]["runAsGroup"]
        assert pod["spec"]["securityContext"] == {"fsGroup": user, "fsGroupChangePolicy": "OnRootMismatch"}
    assert {role(p) for p in cpu} == {"worker", "scheduler"}


def test_npu_workers_run_as_root_and_get_no_pod_security_context():
    workers = [p for p in pods_of(launcher="dynamicCluster") if role(p) == "worker"]
    assert workers and all("securityContext" not in p["spec"] for p in workers)
    assert all("securityContext" not in p["spec"] for p in pods_of())  # rankTable: workers only
