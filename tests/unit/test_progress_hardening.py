"""What a tenant's worker prints cannot freeze its training nor reach a terminal raw (issue 15).

Rank 0's log lines and termination message are parsed into the training's status; a parser that
raises, or a status the API server refuses, stops the status from being written at all (and with
it the deadline and the backoff). Text copied from a pod reaches `kubectl describe`.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nasty_input import any_text, log_tails, termination_messages
from sim import HOSTS, Sim, running, training_obj

from controller import kube, progress
from controller.api import DeepLabTrainingStatus
from controller.plan import Event, PodInfo, describe_failure
from controller.ranktable import DEVICE_ANNOTATION

# What no cleaned text may contain: C0/C1 controls, DEL, lone surrogates, bidirectional overrides.
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
INT64 = range(-(2**63), 2**63)


def progress_line(**fields: Any) -> str:
    return json.dumps({"event": "progress", **fields})


RUNNING = running(training_obj())


def running() -> Sim:
    return copy.deepcopy(RUNNING)


def rank0(sim: Sim) -> dict:
    return sim.current()[0]


def assert_clean(text: str, limit: int | None = None) -> None:
    assert not UNPRINTABLE.search(text), repr(text)
    text.encode("utf-8")  # no lone surrogate
    if limit is not None:
        assert len(text) <= limit


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def numbers(node: Any) -> list[int | float]:
    if isinstance(node, bool):
        return []
    if isinstance(node, int | float):
        return [node]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return [n for child in children for n in numbers(child)]


def assert_storable(status: dict[str, Any]) -> None:
    """What the API server stores: strict JSON (no NaN), int64 integers, valid UTF-8; and the model."""
    text = json.dumps(status, allow_nan=False)
    assert json.loads(text) == status
    assert DeepLabTrainingStatus.model_validate(json.loads(text)).wire() == status
    assert all(n in INT64 for n in numbers(status) if isinstance(n, int))
    for value in strings(status):
        assert_clean(value)


# -- one regression test per finding: each failed before ------------------------------------------
def test_deeply_nested_json_is_skipped_not_a_recursion_error():
    nested = "[" * 5_000 + "]" * 5_000  # within the line limit
    # MindSpore raises the interpreter's recursion limit when it is imported (as in the job tests of the
    # same session); at the default limit json.loads recurses too deep on this line, as in the controller
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        with pytest.raises(RecursionError):
            json.loads(nested)
        lines = [progress_line(epoch=2, epochs=5), '{"event": "progress", "loss": ' + nested + "}"]
        assert progress.last_progress(lines)["epoch"] == 2  # was: RecursionError
        message = '{"event": "result", "checkpoint": "/c.ckpt"}\n{"event": "result", "x": ' + nested + "}"
        assert progress.result(message)["checkpoint"] == "/c.ckpt"
    finally:
        sys.setrecursionlimit(limit)


def test_a_4000_digit_integer_is_dropped_not_an_overflow_error():
    line = '{"event": "progress", "epoch": 1, "loss": ' + "9" * 4_000 + ', "miou": 1}'
    assert progress.last_progress([line]) == {**dict.fromkeys(progress.PROGRESS_FIELDS), "epoch": 1}
    message = '{"event": "result", "loss": ' + "9" * 4_000 + ', "miou": 0.5}'
    assert progress.result(message) == {"checkpoint": None, "loss": None, "miou": 0.5}  # was: OverflowError
    beyond_str_limit = '{"event": "progress", "epoch": ' + "1" * 5_000 + "}"  # json.loads: ValueError
    assert progress.last_progress([progress_line(step=3), beyond_str_limit])["step"] == 3


def test_integers_beyond_int64_are_clamped():
    latest = progress.last_progress([progress_line(epoch=2**64, epochs=2**63, step=-(2**70), steps=10**30)])
    assert latest["epoch"] == latest["epochs"] == latest["steps"] == 2**63 - 1  # was: 2**64, refused
    assert latest["step"] == -(2**63)
    sim = running()
    sim.step(logs=[progress_line(epoch=2**64, epochs=2**64, loss=10**30)])
    assert sim.status["progress"]["epoch"] == 2**63 - 1 and sim.status["progress"]["loss"] == 1e30
    assert sim.status["epoch"] == f"{2**63 - 1}/{2**63 - 1}"
    assert_storable(sim.status)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"epoch": 3.7, "step": 3.0}, {"epoch": None, "step": 3}),  # fractional: dropped, integral: kept
        ({"epoch": True, "loss": False}, {"epoch": None, "loss": None}),  # bools are not numbers
        ({"epoch": "3", "loss": "0.5"}, {"epoch": None, "loss": None}),  # nor strings
        ({"epoch": 1e300, "lr": 10**400}, {"epoch": 2**63 - 1, "lr": None}),
        ({"loss": float("nan"), "lr": float("inf"), "eta_seconds": -float("inf")}, {}),
    ],
)
def test_progress_numbers_come_out_as_the_status_types_them(fields, expected):
    latest = progress.last_progress([progress_line(**fields)])
    assert latest == {**dict.fromkeys(progress.PROGRESS_FIELDS), **expected}
    assert all(type(latest[k]) in (int, type(None)) for k in progress.INT_FIELDS)
    assert all(type(latest[k]) in (float, type(None)) for k in progress.FLOAT_FIELDS)


def test_a_fractional_epoch_does_not_crash_the_plan():
    sim = running()
    sim.step(logs=[progress_line(epoch=3.7, epochs=10, step=3.0, loss=0.5)])  # was: ValidationError
    shown = sim.status["progress"]
    assert shown == {"epochs": 10, "step": 3, "loss": 0.5, "updateTime": shown["updateTime"]}


def test_control_characters_never_reach_describe():
    sim = running()
    crash = "loading...\n\x1b]0;pwned\x07\x1b[2J\x1b[1;1HTraceback:\tboom\x00\u202etxt.exe\r\n\x1b[0m\n\x07\n"
    sim.terminate(rank0(sim), 1, crash)
    sim.step()
    failed = [e.message for e in sim.history[-1].events if e.reason == "AttemptFailed"]
    assert failed and "exited with code 1 (Error): Traceback: boomtxt.exe" in failed[0], failed
    for text in [*failed, *strings(sim.status)]:
        assert_clean(text)  # was: ESC, BEL, NUL and the override copied into status and event


def test_an_evicted_pods_message_is_cleaned_and_bounded():
    pod = copy.deepcopy(rank0(running()))
    pod["status"] = {
        "phase": "Failed",
        "reason": "Evicted\x1b[31m",
        "message": "low on memory\x1b[2J" * 50_000,
    }
    text = describe_failure(PodInfo.from_obj(pod))
    # the tail of an absurd message is kept (progress.TAIL_MAX), then a line's worth of it
    assert text.startswith("pod voc-") and re.search(r" failed: Evicted: [a-z ]*on memorylow on memory", text)
    assert_clean(text, progress.DETAIL_MAX)
    assert len(text) < 500  # the detail is a line's worth (MESSAGE_MAX), not 700 KiB


def test_pending_messages_are_cleaned():
    sim = Sim(training_obj())
    sim.settle()
    for pod in sim.current():
        pod["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable\x1b[5m",
             "message": "0/4 nodes\x1b]8;;http://evil\x1b\\ are\nava\u202eilable" + "!" * 5_000}
        ]  # fmt: skip
    sim.step()
    condition = next(c for c in sim.status["conditions"] if c["type"] == "PodsPending")
    assert condition["reason"] == "Unschedulable"
    assert "0/4 nodes are ava" in condition["message"] and len(condition["message"]) < 600
    warnings = [e for e in sim.history[-1].events if e.reason == "Unschedulable"]
    assert warnings
    for text in [condition["message"], warnings[0].message]:
        assert_clean(text)


def test_the_result_keeps_only_parsed_fields_cleaned():
    secret = "AKIA" + "S" * 36
    message = json.dumps(
        {"event": "result", "checkpoint": "/ckpt/\x1b[8m" + "a" * 5_000, "miou": 0.7, "token": secret}
    )
    found = progress.result(message)
    assert set(found) == {"checkpoint", "loss", "miou"} and secret not in json.dumps(found)
    assert found["checkpoint"].startswith("/ckpt/aaa") and found["checkpoint"].endswith("...")
    assert_clean(found["checkpoint"], progress.CHECKPOINT_MAX)
    assert progress.result(json.dumps({"event": "result", "checkpoint": "\x1b[0m\x00"}))["checkpoint"] is None


def test_an_enormous_line_is_skipped_unparsed():
    huge = progress_line(epoch=9, pad="x" * (progress.LINE_MAX + 1))
    assert progress.last_progress([progress_line(epoch=1), huge])["epoch"] == 1


@pytest.mark.parametrize(
    "garbage",
    ["[" * 5_000 + "]" * 5_000, '{"devices": [{"device_id": "' + "1" * 5_000 + '"}]}'],
    ids=["nested", "5000-digit-device-id"],
)
def test_the_plan_survives_garbage_in_annotations_and_the_rank_table(garbage):
    """A tenant may annotate its pods and edit its ConfigMaps: neither may crash the plan (it did:
    RecursionError, and ValueError from int() past Python's 4,300 digits)."""
    sim = Sim(training_obj())
    sim.settle()
    sim.place(HOSTS)
    for pod in sim.current():
        pod["metadata"]["annotations"] = {DEVICE_ANNOTATION: garbage}
    sim.settle()
    assert sim.table()[0] == {"status": "initializing"}, "NPU workers wait for a usable allocation"
    waiting = next(c for c in sim.status["conditions"] if c["type"] == "PodsPending")
    assert waiting["reason"] == "WaitingForDeviceAllocation"
    assert_storable(sim.status)
    sim.configmap["data"]["ranks.json"] = garbage
    sim.step()
    assert_storable(sim.status)


class FakeCore:
    """The two CoreV1Api calls under test, recorded."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def read_namespaced_pod_log(self, *args, **kwargs):
        self.calls.append(("log", args, kwargs))
        return type("Response", (), {"data": b'{"event": "progress", "epoch": 1}\n\xff\xfe tail'})()

    def create_namespaced_event(self, *args, **kwargs):
        self.calls.append(("event", args, kwargs))


def fake_kube() -> tuple[kube.Kube, FakeCore]:
    client = kube.Kube(None)
    client.core = FakeCore()
    return client, client.core


def test_log_reads_are_bounded_in_bytes():
    client, core = fake_kube()
    lines = client.read_log("ns", "voc-w0")
    (_, args, kwargs), *_ = core.calls
    assert kwargs["limit_bytes"] == progress.LOG_BYTES == 64 * 1024  # was: no byte limit at all
    assert kwargs["tail_lines"] == 50 and args == ("voc-w0", "ns")
    assert lines == ['{"event": "progress", "epoch": 1}', "\ufffd\ufffd tail"]


def test_events_are_cleaned_and_bounded_where_they_leave():
    client, core = fake_kube()
    training = Sim(training_obj()).training()
    client.event(training, Event("Warning", "Bad\x1b[31mReason\n", "first\nsecond\x1b[2J\x00" + "x" * 5_000))
    (_, (namespace, body), _), *_ = core.calls
    assert namespace == "ns" and body["reason"] == "BadReason"
    assert body["message"].startswith("first second") and len(body["message"]) == kube.EVENT_MESSAGE_MAX
    assert_clean(body["message"])  # was: the first 1024 characters, ESC and NUL included


# -- properties -------------------------------------------------------------------------------------
@settings(deadline=None)  # 40,000-character inputs: time varies with the machine's load, not the code
@given(text=any_text, limit=st.integers(4, 2_000))
def test_clean_text_is_printable_bounded_utf8_and_idempotent(text, limit):
    cleaned = progress.clean_text(text, limit)
    assert_clean(cleaned, limit)
    assert cleaned == cleaned.strip() and "\x1b" not in cleaned
    assert progress.clean_text(cleaned, limit) == cleaned
    printable = "".join(ch for ch in text if ch.isprintable() and ch != "\x1b")
    if len(text) <= limit and text == printable and text == text.strip():
        assert cleaned == text  # plain text passes unchanged


@settings(max_examples=300, deadline=None)
@given(tail=log_tails, message=termination_messages)
def test_the_parsers_never_raise_and_type_their_output(tail, message):
    latest = progress.last_progress(tail)
    if latest is not None:
        assert set(latest) == set(progress.PROGRESS_FIELDS)
        for key in progress.INT_FIELDS:
            assert latest[key] is None or (type(latest[key]) is int and latest[key] in INT64)
        for key in progress.FLOAT_FIELDS:
            assert latest[key] is None or (type(latest[key]) is float and abs(latest[key]) < float("inf"))
    found = progress.result(message)
    if found is not None:
        assert found["checkpoint"] is None or found["checkpoint"]
        assert_clean(found["checkpoint"] or "", progress.CHECKPOINT_MAX)
        assert all(v is None or type(v) is float for v in (found["loss"], found["miou"]))
    assert_clean(progress.last_line(message), progress.MESSAGE_MAX)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail=log_tails, message=termination_messages, exit_code=st.sampled_from([0, 1, 2, 137]))
def test_the_plans_status_and_events_always_validate(tail, message, exit_code):
    sim = running()
    sim.step(logs=tail)  # progress
    assert_storable(sim.status)
    if exit_code == 0:
        sim.succeed_all(message)  # the result path: rank 0's termination message
    else:
        sim.terminate(rank0(sim), exit_code, message)  # the failure path: its last line
    sim.step(logs=tail)
    assert_storable(sim.status)
    for plan in sim.history[-2:]:
        for event in plan.events:
            assert_clean(event.message)
            assert_clean(progress.clean_text(event.message, kube.EVENT_MESSAGE_MAX), kube.EVENT_MESSAGE_MAX)


def test_the_result_rounds_loss_and_miou_to_six_decimals_for_the_printed_columns():
    message = json.dumps({"event": "result", "loss": 0.80381834, "miou": 0.20005281561885335})
    assert progress.result(message) == {"checkpoint": None, "loss": 0.803818, "miou": 0.200053}
