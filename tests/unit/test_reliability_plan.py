"""The plan under faults, without a cluster: pods that cannot start, a controller that dies between
its status write and its actions, and names at the maximum length."""

from __future__ import annotations

import copy
import random
import re
from datetime import timedelta

import pytest
from sim import Sim, pod_name, result_message, stage, training_obj

from controller import names, resources
from controller.api import Training
from controller.plan import plan

HOSTS = ["172.16.0.1", "172.16.0.1", "172.16.0.2", "172.16.0.2"]
PVC_MISSING = '0/4 nodes are available: persistentvolumeclaim "voc-data" not found.'
NO_NPU = "0/4 nodes are available: 4 Insufficient huawei.com/Ascend910."


def condition(sim: Sim, type_: str) -> dict:
    return next(c for c in sim.status["conditions"] if c["type"] == type_)


def events(sim: Sim, reason: str) -> list[str]:
    return [e.message for p in sim.history for e in p.events if e.reason == reason]


def unschedulable(pod: dict, message: str) -> None:
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    ]


def waiting(pod: dict, reason: str, message: str) -> None:
    pod["status"]["containerStatuses"] = [
        {"name": "ascend", "state": {"waiting": {"reason": reason, "message": message}}}
    ]


def test_an_unschedulable_pod_is_reported_once_then_the_training_runs_when_it_fits():
    sim = Sim(training_obj(stages=[stage("only")]))
    sim.settle()
    assert condition(sim, "PodsPending")["status"] == "True"
    assert condition(sim, "PodsPending")["reason"] == "Waiting", "no cause known yet: no alarm"
    assert events(sim, "Unschedulable") == []

    unschedulable(sim.current()[1], PVC_MISSING)
    sim.settle()
    pending = condition(sim, "PodsPending")
    assert (
        pending["reason"] == "Unschedulable"
        and 'persistentvolumeclaim "voc-data" not found' in pending["message"]
    )
    assert (
        f"{pod_name('only', 1, 1)} (worker 1)" in pending["message"]
        and "4 of 4 pod(s) not running" in pending["message"]
    )
    assert len(events(sim, "Unschedulable")) == 1
    assert sim.status["phase"] == "Pending", "not failed: the claim may still appear"
    again = sim.step(advance=30)
    assert again.events == [] and not again.status_changed and again.actions == [], "no churn per resync"

    unschedulable(sim.current()[1], NO_NPU)  # a different cause is a new event
    sim.settle()
    assert "Insufficient huawei.com/Ascend910" in condition(sim, "PodsPending")["message"]
    assert len(events(sim, "Unschedulable")) == 2

    for pod in sim.current():
        pod["status"].pop("conditions", None)
    sim.place(HOSTS)
    sim.settle()
    sim.set_phase("Running")
    sim.settle()
    assert sim.status["phase"] == "Running"
    assert condition(sim, "PodsPending")["status"] == "False"
    assert condition(sim, "PodsPending")["reason"] == "PodsRunning"
    sim.step(advance=3600)  # long after the pending timeout: a running attempt never times out
    assert sim.status["phase"] == "Running"


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "InvalidImageName"])
def test_an_image_that_cannot_be_pulled_is_reported(reason):
    sim = Sim(training_obj(stages=[stage("only")], workers=2))
    sim.settle()
    sim.place(HOSTS[:2])
    waiting(sim.current()[0], reason, 'Back-off pulling image "registry.invalid/worker:1"')
    sim.settle()
    pending = condition(sim, "PodsPending")
    assert pending["reason"] == reason and "registry.invalid/worker:1" in pending["message"]
    assert len(events(sim, reason)) == 1 and sim.status["phase"] != "Failed"


def test_pending_past_the_timeout_fails_and_frees_the_placed_pods():
    sim = Sim(training_obj(stages=[stage("only")], pendingTimeoutSeconds=120))
    sim.settle()
    sim.place([*HOSTS[:3], None])  # a half-scheduled attempt: three NPUs held, one pod unschedulable
    sim.set_phase("Running")
    unschedulable(sim.current()[3], NO_NPU)
    sim.pods[sim.current()[3]["metadata"]["name"]]["status"]["phase"] = "Pending"
    sim.settle()
    assert sim.status["phase"] != "Failed" and sim.history[-1].requeue_after <= 120
    sim.step(advance=100)  # settle took a few simulated seconds of the 120
    assert sim.status["phase"] != "Failed"
    sim.step(advance=20)
    st = sim.status
    assert st["phase"] == "Failed" and st["reason"] == "PendingTimeout"
    assert (
        "pendingTimeoutSeconds (120s)" in st["message"]
        and "Insufficient huawei.com/Ascend910" in st["message"]
    )
    assert not sim.pods, "every pod of the attempt deleted: no NPU stays held"
    assert events(sim, "PendingTimeout")
    assert condition(sim, "Failed")["reason"] == "PendingTimeout"


def test_a_zero_pending_timeout_waits_forever():
    sim = Sim(training_obj(stages=[stage("only")], pendingTimeoutSeconds=0))
    sim.settle()
    unschedulable(sim.current()[0], NO_NPU)
    sim.step(advance=86400 * 7)
    assert sim.status["phase"] == "Pending" and condition(sim, "PodsPending")["reason"] == "Unschedulable"


def test_the_pending_clock_restarts_with_each_attempt():
    sim = Sim(training_obj(stages=[stage("only")], workers=2, pendingTimeoutSeconds=100))
    sim.settle()
    sim.place(HOSTS[:2])
    sim.set_phase("Running")
    sim.settle()
    started = sim.status["attemptStartTime"]
    sim.step(advance=500)  # runs for a long time, then a worker dies
    sim.terminate(sim.current()[1], 1, "RuntimeError: HCCL")
    sim.settle()
    assert sim.status["attempt"] == 2 and sim.status["attemptStartTime"] > started
    sim.step(advance=50)
    assert sim.status["phase"] == "Pending", "attempt 2 has its own 100s, not attempt 1's"


# -- crash consistency ------------------------------------------------------------------------------
class CrashingSim(Sim):
    """Reconcile number ``crash_at`` dies after writing the status and ``keep`` of its actions."""

    def __init__(self, obj, crash_at: int, keep: int):
        super().__init__(obj)
        self.crash_at, self.keep, self.count, self.crashed = crash_at, keep, 0, False

    def step(self, logs=None, advance=1.0):
        self.count += 1
        if self.count != self.crash_at:
            return super().step(logs, advance)
        self.crashed = True
        self.now += timedelta(seconds=advance)
        result = plan(self.training(), self.observe(logs), self.now)
        self.obj["status"] = result.status
        for action in result.actions[: self.keep]:
            self.apply(action)
        self.history.append(result)
        return result


def scenario(sim: Sim) -> dict:
    """Two stages; stage 1 loses a worker while training, stage 2 succeeds."""
    sim.settle()
    sim.place(HOSTS)
    sim.settle()
    sim.set_phase("Running")
    sim.settle()
    sim.terminate(sim.current()[2], 137, "", reason="OOMKilled")
    sim.settle()
    sim.place(HOSTS)
    sim.settle()
    sim.set_phase("Running")
    sim.settle()
    sim.succeed_all(result_message("/checkpoints/voc/one/final.ckpt"))
    sim.settle()
    sim.place(HOSTS)
    sim.settle()
    sim.set_phase("Running")
    sim.settle()
    sim.succeed_all(result_message("/checkpoints/voc/two/final.ckpt", 0.8))
    sim.settle()
    return sim.status


def summary(status: dict) -> tuple:
    return (
        status["phase"],
        status.get("reason"),
        [
            (s["name"], s["phase"], s["attempts"], s["failures"], s.get("checkpoint"))
            for s in status["stages"]
        ],
    )


def test_a_controller_killed_between_status_and_actions_at_any_reconcile_ends_the_same():
    obj = training_obj(stages=[stage("one"), stage("two")])
    reference = Sim(copy.deepcopy(obj))
    expected = summary(scenario(reference))
    assert expected[0] == "Succeeded" and expected[2][0][2:4] == (2, 1)
    rng = random.Random(7)
    reconciles = len(reference.history)
    assert reconciles >= 15
    for crash_at in range(1, reconciles + 1):
        sim = CrashingSim(copy.deepcopy(obj), crash_at, keep=rng.randint(0, 3))
        assert summary(scenario(sim)) == expected, f"crash at reconcile {crash_at}"
        assert sim.crashed
        # success cleans up, even when the crash fell between the status write and the deletions
        assert not sim.pods, sorted(sim.pods)


# -- names at the limit -----------------------------------------------------------------------------
LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_maximum_length_and_dotted_names_give_valid_distinct_children():
    longest = ("a" * 62 + ".") * 3 + "b" * 64  # 253 characters, a DNS subdomain with dots
    assert len(longest) == 253
    twins = [longest, longest.replace(".", "-"), longest[:-1] + "c"]
    seen: dict[str, set[str]] = {}
    for name in twins:
        obj = training_obj(name, stages=[stage("s16-vocaug-with-a-long-stage-name-0123")])
        obj["metadata"]["uid"] = f"uid-{name[-3:]}"
        t = Training.from_obj(obj)
        pods = resources.desired_pods(t, 0, 999, resources.PodContext(sched_ip="10.96.0.10"))
        for child, pod in pods.items():
            assert len(child) <= 63 and LABEL.match(child), child
            for value in pod["metadata"]["labels"].values():
                assert len(value) <= 63 and LABEL_VALUE.match(value), value
        service = resources.service(t)["metadata"]["name"]
        assert len(service) <= 63 and LABEL.match(service)
        assert len(names.configmap_name(name)) <= 253
        seen[name] = {*pods, service, names.configmap_name(name), names.training_label(name)}
    assert not (seen[twins[0]] & seen[twins[1]]) and not (seen[twins[0]] & seen[twins[2]])
    assert names.worker_name("voc.v2", "u", "s", 1, 0) != names.worker_name("voc-v2", "u", "s", 1, 0)
    tag = names.child_tag("u", "s")
    assert names.worker_name("voc-v2", "u", "s", 1, 0) == f"voc-v2-s-{tag}-a1-w0", "plain names stay readable"


def test_a_failed_training_keeps_its_finished_pods_for_kubectl_logs():
    sim = Sim(training_obj(stages=[stage("only")], backoffLimit=0))
    sim.settle()
    sim.place(HOSTS)
    sim.settle()
    sim.set_phase("Running")
    for pod in sim.current():
        sim.terminate(pod, 1, "boom")
    sim.settle()
    assert sim.status["phase"] == "Failed"
    assert sim.pods and all(p["status"]["phase"] == "Failed" for p in sim.pods.values())
