"""The worker launcher against tables written by the controller's own rank-table code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import ranktable
from job import launch
from job.errors import BadInput


def annotation(device_id: int, device_ip: str) -> str:
    return json.dumps(
        {
            "pod_name": "x",
            "server_id": "h",
            "devices": [{"device_id": str(device_id), "device_ip": device_ip}],
        }
    )


def two_server_workers() -> list[ranktable.Worker]:
    # 3 workers on host A (physical NPUs 4,5,6), 2 on host B, scheduled out of index order.
    placed = [
        (0, "10.0.0.1", 4),
        (3, "10.0.0.2", 0),
        (1, "10.0.0.1", 5),
        (4, "10.0.0.2", 1),
        (2, "10.0.0.1", 6),
    ]
    return [
        ranktable.Worker(f"w-{i}", i, f"172.16.0.{i + 10}", host, annotation(dev, f"192.168.1.{i}"))
        for i, host, dev in placed
    ]


def write_configmap(directory: Path, attempt: str, workers: list[ranktable.Worker]) -> tuple[Path, Path]:
    table, ranks = ranktable.build(workers)
    for key, value in ranktable.configmap_data(attempt, table, ranks).items():
        (directory / key).write_text(value)
    return directory / ranktable.TABLE_KEY, directory / ranktable.RANKS_KEY


def test_round_trip_every_pod_finds_its_rank(tmp_path):
    workers = two_server_workers()
    table, ranks = write_configmap(tmp_path, "a1", workers)
    placements = {w.name: launch.read_placement(table, ranks, w.name, "a1") for w in workers}
    assert sorted(p.rank for p in placements.values()) == list(range(5))
    assert {p.size for p in placements.values()} == {5}
    # The physical NPU id of the device plugin's annotation stays in the table...
    assert placements["w-2"].device_id == "6" and placements["w-2"].server_id == "10.0.0.1"
    # ...while the process addresses its single visible NPU as device 0.
    env = launch.rank_table_env(placements["w-4"], "/tmp/t.json", "172.16.0.14")
    assert env["RANK_ID"] == str(placements["w-4"].rank) and env["RANK_SIZE"] == "5"
    assert env["DEVICE_ID"] == env["ASCEND_DEVICE_ID"] == "0"
    assert env["HCCL_IF_IP"] == "172.16.0.14" and env["RANK_TABLE_FILE"] == "/tmp/t.json"


def test_stale_or_initializing_table_is_not_used(tmp_path):
    table, ranks = write_configmap(tmp_path, "a1", two_server_workers())
    with pytest.raises(launch.NotReady, match="attempt 'a1'"):
        launch.read_placement(table, ranks, "w-0", "a2")
    table.write_text(json.dumps(ranktable.INITIALIZING))
    with pytest.raises(launch.NotReady, match="initializing"):
        launch.read_placement(table, ranks, "w-0", "a1")


def test_wait_times_out_with_a_clear_message(tmp_path):
    with pytest.raises(TimeoutError, match=r"not ready after 0s: .*does not exist yet"):
        launch.wait_for_placement(tmp_path / "hccl.json", tmp_path / "ranks.json", "w-0", "a1", 0, poll=0)


def test_wait_returns_once_the_table_completes(tmp_path):
    table, ranks = tmp_path / ranktable.TABLE_KEY, tmp_path / ranktable.RANKS_KEY
    ranks.write_text(json.dumps({"attempt": "a1", "ranks": {}}))
    table.write_text(json.dumps(ranktable.INITIALIZING))
    ticks = iter(range(100))

    def clock() -> float:
        tick = next(ticks)
        if tick == 3:  # the operator completes the table while the worker waits
            write_configmap(tmp_path, "a1", two_server_workers())
        return float(tick)

    placement = launch.wait_for_placement(table, ranks, "w-3", "a1", timeout=50, poll=0, clock=clock)
    assert placement.size == 5


def good_table() -> dict:
    table, _ = ranktable.build(two_server_workers())
    return table


def broken(mutate) -> dict:
    table = good_table()
    mutate(table)
    return table


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "not a JSON object"),
        (broken(lambda t: t.update(version="2.0")), "version '2.0'"),
        (broken(lambda t: t.update(server_count="3")), "server_count '3' but 2 servers"),
        (broken(lambda t: t.update(server_list=[])), "server_list is missing or empty"),
        (broken(lambda t: t["server_list"][0]["device"][1].update(rank_id="7")), "not contiguous"),
        (broken(lambda t: t["server_list"][1]["device"][0].update(rank_id="x")), "no integer rank_id"),
        (broken(lambda t: t["server_list"][1]["device"].pop()), None),  # still valid: fewer ranks
        (broken(lambda t: t["server_list"][0]["device"].pop(0)), r"\[1, 2, 3, 4\] are not 0\.\.3"),
        (broken(lambda t: t["server_list"][1].update(server_id="")), "lacks server_id"),
    ],
)
def test_malformed_tables_are_refused(table, message):
    if message is None:
        assert sorted(launch.validate_table(table)) == list(range(4))
        return
    with pytest.raises(BadInput, match=message):
        launch.validate_table(table)


def test_duplicate_rank_is_refused():
    table = good_table()
    table["server_list"][1]["device"] = [
        dict(d, rank_id=str(i)) for i, d in enumerate(table["server_list"][1]["device"])
    ]
    with pytest.raises(BadInput, match="rank_id 0 appears twice"):
        launch.validate_table(table)


def test_pod_missing_from_rank_map_is_refused(tmp_path):
    table, ranks = write_configmap(tmp_path, "a1", two_server_workers())
    with pytest.raises(BadInput, match="'w-9' is not in the rank map"):
        launch.read_placement(table, ranks, "w-9", "a1")


def run_launcher(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "job.launch", *extra, "--", "train", "--help"],
        env={**os.environ, **env},
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_malformed_table_exits_2_with_one_line(tmp_path):
    table, ranks = write_configmap(tmp_path, "a1", two_server_workers())
    table.write_text(json.dumps(broken(lambda t: t.update(version="0.9"))))
    env = {"DEEPLAB_LAUNCHER": "rankTable", "DEEPLAB_RANK_TABLE": str(table), "DEEPLAB_RANKS": str(ranks),
           "POD_NAME": "w-0", "DEEPLAB_ATTEMPT": "a1"}  # fmt: skip
    proc = run_launcher(tmp_path, env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        f"launch: error: rank table {table}: version '0.9' is not the supported '1.0'"
    ]


def test_sigterm_while_waiting_stops_promptly(tmp_path):
    env = {"DEEPLAB_LAUNCHER": "rankTable", "DEEPLAB_RANK_TABLE": str(tmp_path / "none.json"),
           "DEEPLAB_RANKS": str(tmp_path / "none2.json"), "POD_NAME": "w-0"}  # fmt: skip
    proc = run_launcher(tmp_path, env, "--poll", "0.1")
    try:
        time.sleep(1.5)
        assert proc.poll() is None  # still waiting for a table
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
    finally:
        proc.kill()
        proc.wait()


def test_dynamic_cluster_variables_are_checked():
    env = {
        "MS_ROLE": "MS_WORKER",
        "MS_SCHED_HOST": "localhost",
        "MS_SCHED_PORT": "8118",
        "MS_WORKER_NUM": "2",
    }
    with pytest.raises(BadInput, match="MS_NODE_ID"):
        launch.check_dynamic_cluster(env, timeout=0)
    launch.check_dynamic_cluster({**env, "MS_NODE_ID": "1"}, timeout=0)
    with pytest.raises(BadInput, match="MS_ROLE='boss'"):
        launch.check_dynamic_cluster({**env, "MS_ROLE": "boss"}, timeout=0)
    with pytest.raises(TimeoutError, match="did not resolve"):
        launch.check_dynamic_cluster(
            {**env, "MS_NODE_ID": "0", "MS_SCHED_HOST": "no-such-host.invalid"}, 0, 0
        )


# -- every malformed table: exit 2 and one line naming the file (issue 15) ------------------------
DIRECTORY = object()  # the mounted path is a directory
GOOD = object()  # the table or map the controller would write


def good_ranks() -> dict:
    _, ranks = ranktable.build(two_server_workers())
    return {"attempt": "a1", "ranks": ranks}


def ranks_with(**changes) -> dict:
    meta = good_ranks()
    meta["ranks"].update(changes)
    return meta


def write(path: Path, content) -> None:
    if content is DIRECTORY:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


# Each of these exited 1 (a traceback, or a time-out) before: retried as if the cluster had failed.
EXITED_1_BEFORE = [
    pytest.param([], GOOD, "hccl", "not a JSON object but list", id="table-list"),
    pytest.param('"completed"', GOOD, "hccl", "not a JSON object but str", id="table-string"),
    pytest.param(None, GOOD, "hccl", "not a JSON object but NoneType", id="table-null"),
    pytest.param(GOOD, [], "ranks", "not a JSON object but list", id="ranks-list"),
    pytest.param(GOOD, 7, "ranks", "not a JSON object but int", id="ranks-number"),
    pytest.param(GOOD, ranks_with(**{"w-0": "x"}), "ranks", "rank 'x' of pod 'w-0'", id="map-rank-string"),
    pytest.param(GOOD, ranks_with(**{"w-0": None}), "ranks", "rank None of pod 'w-0'", id="map-rank-null"),
    pytest.param(GOOD, ranks_with(**{"w-0": [1]}), "ranks", "rank [1] of pod 'w-0'", id="map-rank-list"),
    pytest.param(
        json.dumps(good_table()).replace('"rank_id": "0"', '"rank_id": Infinity'),
        GOOD, "hccl", "server_list[0].device[0] has no integer rank_id >= 0: inf", id="rank-id-infinity",
    ),
    pytest.param("[" * 100_000 + "]" * 100_000, GOOD, "hccl", "RecursionError", id="table-nested"),
    pytest.param('{"version": ' + "1" * 5000 + "}", GOOD, "hccl", "ValueError", id="table-5000-digits"),
    pytest.param(GOOD, '{"ranks": {"w-0": ' + "9" * 5000 + "}}", "ranks", "ValueError", id="map-5000-digits"),
    pytest.param(DIRECTORY, GOOD, "hccl", "IsADirectoryError", id="table-directory"),
    pytest.param(b"\xff\xfe{}", GOOD, "hccl", "UnicodeDecodeError", id="table-not-utf8"),
    pytest.param("{oops", GOOD, "hccl", "not valid JSON", id="table-never-valid-json"),
    pytest.param(GOOD, "", "ranks", "not valid JSON", id="ranks-empty-file"),
]  # fmt: skip


@pytest.mark.parametrize(("table", "ranks", "culprit", "problem"), EXITED_1_BEFORE)
def test_every_malformed_table_exits_2_with_one_line_naming_the_file(
    tmp_path, table, ranks, culprit, problem
):
    table_path, ranks_path = tmp_path / "hccl.json", tmp_path / "ranks.json"
    write(table_path, good_table() if table is GOOD else table)
    write(ranks_path, good_ranks() if ranks is GOOD else ranks)
    env = {"DEEPLAB_LAUNCHER": "rankTable", "DEEPLAB_RANK_TABLE": str(table_path),
           "DEEPLAB_RANKS": str(ranks_path), "POD_NAME": "w-0", "DEEPLAB_ATTEMPT": "a1"}  # fmt: skip
    proc = run_launcher(tmp_path, env, "--timeout", "0", "--poll", "0")
    out, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("launch: error: "), err
    named = table_path if culprit == "hccl" else ranks_path
    assert str(named) in lines[0] and problem in lines[0], lines[0]
    assert len(lines[0]) < 400 and out == ""


# These were accepted before, and a wrong placement (or HCCL's late failure) followed.
@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda t: t["server_list"][0]["device"][0].pop("device_id"), r"device\[0\] has no device_id string"),
        (lambda t: t["server_list"][1].update(server_id=42), r"server_list\[1\] lacks server_id"),
        (lambda t: t["server_list"][0]["device"][0].update(rank_id=0.0), "no integer rank_id >= 0: 0.0"),
        (lambda t: t["server_list"][0]["device"][1].update(rank_id=True), "no integer rank_id >= 0: True"),
        (lambda t: t["server_list"][0]["device"][0].update(rank_id="٠"), "no integer rank_id >= 0"),
    ],
)
def test_tables_accepted_before_are_refused(mutate, problem):
    with pytest.raises(BadInput, match=problem):
        launch.validate_table(broken(mutate))


@pytest.mark.parametrize(
    ("ranks", "problem"),
    [
        (ranks_with(**{"w-1": 0}), r"ranks \[0, 0, 2, 3, 4\] do not match the table's 0\.\.4"),
        (ranks_with(**{"w-0": 0.0}), "rank 0.0 of pod 'w-0' is not a non-negative integer"),
        (ranks_with(**{"w-0": True}), "rank True of pod 'w-0'"),
        (ranks_with(**{"w-9": 5}), r"ranks \[0, 1, 2, 3, 4, 5\] do not match"),
    ],
)
def test_rank_maps_accepted_before_are_refused(tmp_path, ranks, problem):
    table_path, ranks_path = tmp_path / "hccl.json", tmp_path / "ranks.json"
    write(table_path, good_table())
    write(ranks_path, ranks)
    with pytest.raises(BadInput, match=problem):
        launch.read_placement(table_path, ranks_path, "w-0", "a1")


def test_a_table_and_map_of_different_writes_never_meet(tmp_path, monkeypatch):
    """Kubelet swaps both files between the launcher's two reads: wait, never exit 2 on the mix."""
    table_path, ranks_path = tmp_path / "hccl.json", tmp_path / "ranks.json"
    write(table_path, good_table())
    write(ranks_path, {"attempt": "a1", "ranks": {}})  # the map of the initializing table
    real_read = launch._read

    def swap_after_first_read(path: Path) -> str:
        text = real_read(path)
        if path == ranks_path:
            write(ranks_path, good_ranks())  # the completed write lands right after
        return text

    monkeypatch.setattr(launch, "_read", swap_after_first_read)
    with pytest.raises(launch.NotReady, match="changed while the table was read"):
        launch.read_placement(table_path, ranks_path, "w-0", "a1")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"MS_SCHED_PORT": "http"}, "MS_SCHED_PORT='http'"),
        ({"MS_SCHED_PORT": "70000"}, "MS_SCHED_PORT='70000'"),
        ({"MS_WORKER_NUM": "two"}, "MS_WORKER_NUM='two'"),
        ({"MS_SCHED_HOST": "a..b"}, "MS_SCHED_HOST='a..b' is not a valid host name"),
        ({"MS_SCHED_HOST": "x" * 70 + ".svc"}, "is not a valid host name"),
    ],
)
def test_malformed_dynamic_cluster_variables_are_bad_input(changes, problem):
    env = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "localhost", "MS_SCHED_PORT": "8118",
           "MS_WORKER_NUM": "2", "MS_NODE_ID": "1", **changes}  # fmt: skip
    with pytest.raises(BadInput, match=problem):
        launch.check_dynamic_cluster(env, timeout=0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def mutated(make) -> st.SearchStrategy:
    """A good document (``make()``) with one value anywhere in it replaced by arbitrary JSON."""

    def replace(document: dict, path: list[int], value) -> dict:
        parent, key = document, next(iter(document))
        for step in path:
            node = parent[key]
            if not isinstance(node, dict | list) or not node:
                break
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, keys[step % len(keys)]
        parent[key] = value
        return document

    paths = st.lists(st.integers(0, 20), max_size=5)
    return st.builds(lambda path, value: replace(make(), path, value), paths, json_values)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=json_values | mutated(good_table), ranks=json_values | mutated(good_ranks) | st.just(GOOD))
def test_any_table_is_placed_waited_for_or_refused_never_a_crash(tmp_path, table, ranks):
    table_path, ranks_path = tmp_path / "hccl.json", tmp_path / "ranks.json"
    table_path.write_text(json.dumps(table))
    ranks_path.write_text(json.dumps(good_ranks() if ranks is GOOD else ranks))
    try:
        placement = launch.read_placement(table_path, ranks_path, "w-0", "a1")
    except BadInput as error:
        assert "\n" not in str(error) and len(str(error)) < 600
    except launch.NotReady:
        pass
    else:
        assert 0 <= placement.rank < placement.size
