"""dynamicCluster: a new attempt's pods wait until the earlier attempt's scheduler pod is gone.

Seen on the real node (tests/node/test_node_resume.py): the scheduler ignores SIGTERM until its workers
have left, the training's Service selects every scheduler pod of the training, and a worker of the next
attempt registered with the old scheduler ("Repeated registration node: 1 to the scheduler")."""

from __future__ import annotations

import copy

from sim import Sim, pod_name, result_message, training_obj

from controller import names
from controller.plan import Create

STAGE = "s16-vocaug"


def created_pods(plan) -> list[str]:
    return [
        a.manifest["metadata"]["name"]
        for a in plan.actions
        if isinstance(a, Create) and a.manifest["kind"] == "Pod"
    ]


def test_the_next_attempt_waits_for_the_earlier_scheduler_to_be_gone():
    sim = Sim(training_obj(launcher="dynamicCluster", npuResource="", workers=2, backoffLimit=2))
    sim.settle()
    sim.place(["10.0.0.1", "10.0.0.1"])
    sim.set_phase("Running")
    sim.set_phase("Running", names.ROLE_SCHEDULER)
    sim.settle()
    scheduler = copy.deepcopy(sim.pods[pod_name(STAGE, 1, None)])
    sim.terminate(sim.pods[pod_name(STAGE, 1, 0)], 1, "boom")
    sim.step()  # attempt 1 failed: its pods are deleted, attempt 2 begins
    assert sim.status["attempt"] == 2
    scheduler["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"  # still terminating
    sim.pods = {scheduler["metadata"]["name"]: scheduler}
    waiting = sim.step()
    assert created_pods(waiting) == [] and waiting.requeue_after is not None

    sim.pods = {}  # it is gone: the next attempt's pods are created
    assert sorted(created_pods(sim.step())) == sorted(
        [pod_name(STAGE, 2, 0), pod_name(STAGE, 2, 1), pod_name(STAGE, 2, None)]
    )


def test_a_finished_scheduler_of_an_earlier_stage_does_not_hold_the_next_one():
    sim = Sim(training_obj(launcher="dynamicCluster", npuResource="", workers=2))
    sim.settle()
    sim.place(["10.0.0.1", "10.0.0.1"])
    sim.set_phase("Running")
    sim.set_phase("Succeeded", names.ROLE_SCHEDULER)
    sim.succeed_all(result_message())
    sim.settle()
    second = sim.current()
    assert second and all(p["metadata"]["labels"][names.LABEL_STAGE] != STAGE for p in second)
