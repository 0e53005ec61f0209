"""Whatever rank 0 prints, the real API server accepts the status the plan makes of it (issue 15).

A refused status write freezes a training: its status no longer moves, so its deadline and its
backoff are no longer enforced. The plan runs in memory (tests/sim.py plays the pods) on a
training that exists in the API server; every status it produces is written there with the
controller's own client and read back.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubelet import apply, training_manifest
from kubernetes.client.rest import ApiException
from nasty_input import log_tails, termination_messages
from sim import Sim, running

from controller.api import DeepLabTrainingStatus
from controller.kube import Kube

pytestmark = pytest.mark.cluster


class Written:
    """The training in the API server, and the freshest copy of it (its resourceVersion)."""

    def __init__(self, admin, kubectl, namespace: str, name: str = "fuzz"):
        apply(kubectl, training_manifest(name, namespace))
        self.kube = Kube(admin)
        self.namespace, self.name = namespace, name
        self.obj = self.kube.get_training(namespace, name)

    def write(self, status: dict) -> dict:
        """PUT the status (the server answers 200, else ApiException); return it as the controller
        reads it back: through the model, since the server re-encodes numbers (an integral float
        1.8446744073709552e+19 comes back as the integer literal 18446744073709552000)."""
        self.obj = self.kube.replace_status(self.obj, status)
        assert as_read(self.obj["status"]) == status
        return as_read(self.kube.get_training(self.namespace, self.name)["status"])

    def running(self) -> Sim:
        """The plan of this training with its first attempt running (pods played in memory)."""
        return running(copy.deepcopy(self.obj))


def as_read(status: dict) -> dict:
    return DeepLabTrainingStatus.model_validate(status).wire()


def progress_line(**fields) -> str:
    return json.dumps({"event": "progress", **fields})


def test_an_integer_beyond_int64_was_refused_and_is_now_clamped(admin, kubectl, namespace):
    training = Written(admin, kubectl, namespace)
    sim = training.running()
    training.write(sim.status)
    # What the old parser passed through for `"epoch": 18446744073709551616`: the write is refused,
    # and every later status of the training with it.
    refused = copy.deepcopy(sim.status)
    refused["progress"] = {"epoch": 2**64, "epochs": 10}
    with pytest.raises(ApiException) as error:
        training.kube.replace_status(training.obj, refused)
    assert error.value.status in (400, 422), error.value.body
    sim.step(logs=[progress_line(epoch=2**64, epochs=10, loss=10**30, lr=1e308, step=1e300)])
    stored = training.write(sim.status)
    assert stored["progress"]["epoch"] == 2**63 - 1 and stored["progress"]["step"] == 2**63 - 1
    assert stored["progress"]["loss"] == 1e30 and stored["progress"]["lr"] == 1e308


def test_the_api_server_accepts_every_status_the_plan_makes_of_rank_0s_output(admin, kubectl, namespace):
    training = Written(admin, kubectl, namespace)
    template = training.running()
    training.write(template.status)
    seen = {"progress": 0, "result": 0, "failure": 0}

    @settings(max_examples=60, deadline=None)
    @given(tail=log_tails, message=termination_messages, exit_code=st.sampled_from([0, 1, 2]))
    def check(tail, message, exit_code):
        sim = copy.deepcopy(template)
        sim.step(logs=tail)  # the progress path: rank 0's log tail
        seen["progress"] += "progress" in sim.status
        assert training.write(sim.status) == sim.status
        if exit_code == 0:
            sim.succeed_all(message)  # the result path: rank 0's termination message
        else:
            sim.terminate(sim.current()[0], exit_code, message)  # the failure path: its last line
        sim.step(logs=tail)
        seen["result" if exit_code == 0 else "failure"] += 1
        assert training.write(sim.status) == sim.status

    check()
    assert all(seen.values()), seen  # every path was written at least once
