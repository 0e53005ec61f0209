"""template.terminationGracePeriodSeconds: the time a deleted worker has to save its checkpoint."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sim import running, stage, training_obj

from controller import names, resources
from controller.api import DEFAULT_TERMINATION_GRACE_SECONDS, DeepLabTrainingSpec, Training

CTX = resources.PodContext(sched_ip="10.96.0.10")


def graces(template: dict | None = None, **spec) -> dict[str, set[int]]:
    """Each role's terminationGracePeriodSeconds over every pod of a dynamicCluster attempt."""
    if template is not None:
        spec["template"] = template
    obj = training_obj(stages=[stage("one")], launcher="dynamicCluster", **spec)
    found: dict[str, set[int]] = {}
    for pod in resources.desired_pods(Training.from_obj(obj), 0, 1, CTX).values():
        role = pod["metadata"]["labels"][names.LABEL_ROLE]
        found.setdefault(role, set()).add(pod["spec"]["terminationGracePeriodSeconds"])
    return found


def test_without_the_field_every_pod_gets_the_default():
    assert DEFAULT_TERMINATION_GRACE_SECONDS == 60  # the value the README and the CRD document
    expected = {names.ROLE_WORKER: {60}, names.ROLE_SCHEDULER: {60}}
    assert graces() == expected
    assert graces(template={"env": []}) == expected  # a template without the field: the default too


def test_the_field_reaches_every_worker_and_the_scheduler():
    """The scheduler ignores SIGTERM and serves until its workers have left: killed before them, it would
    take down the workers still saving."""
    found = graces(template={"terminationGracePeriodSeconds": 900}, workers=8, npusPerServer=8)
    assert found == {names.ROLE_WORKER: {900}, names.ROLE_SCHEDULER: {900}}


@pytest.mark.parametrize("value", [0, -1, 3601, "60s"])
def test_out_of_bounds_values_are_refused(value):
    body = training_obj(template={"terminationGracePeriodSeconds": value})["spec"]
    with pytest.raises(ValidationError, match="terminationGracePeriodSeconds"):
        DeepLabTrainingSpec.model_validate(body)


def test_a_change_applies_to_the_next_attempt_only():
    """Running pods keep their grace period (the pod field is immutable); the attempt after a failure
    gets the new one."""
    sim = running()
    sim.obj["spec"]["template"] = {"terminationGracePeriodSeconds": 1200}
    sim.settle()
    first = sim.current()
    assert {p["spec"]["terminationGracePeriodSeconds"] for p in first} == {DEFAULT_TERMINATION_GRACE_SECONDS}
    sim.terminate(first[1], 1)
    sim.settle()
    second = sim.current()
    assert second and {p["metadata"]["labels"][names.LABEL_ATTEMPT] for p in second} == {"2"}
    assert {p["spec"]["terminationGracePeriodSeconds"] for p in second} == {1200}
