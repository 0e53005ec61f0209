"""The worker launcher against tables written by the controller's own rank-table code."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
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


def npu_annotation(server_id: str, device_ids: list[int], first_ip: int) -> str:
    """The device plugin's allocation of several NPUs (sorted by physical id, as it writes them)."""
    devices = [
        {"device_id": str(d), "device_ip": f"192.168.2.{first_ip + i}"} for i, d in enumerate(device_ids)
    ]
    return json.dumps({"pod_name": "x", "server_id": server_id, "devices": devices})


def multi_npu_workers() -> list[ranktable.Worker]:
    """Three 2-NPU pods: two on node A (NPUs 0,1 and 4,5), one on node B."""
    placed = [(0, "10.0.0.1", [0, 1]), (1, "10.0.0.2", [2, 3]), (2, "10.0.0.1", [4, 5])]
    return [
        ranktable.Worker(f"m-{i}", i, f"172.16.1.{i + 10}", host, npu_annotation(host, devices, 10 * i))
        for i, host, devices in placed
    ]


def multi_npu_table() -> tuple[dict, dict[str, int]]:
    return ranktable.build(multi_npu_workers(), ranktable.Layout(npus_per_pod=2))


def write_configmap(
    directory: Path, attempt: str, workers: list[ranktable.Worker], layout: ranktable.Layout | None = None
) -> tuple[Path, Path]:
    table, ranks = ranktable.build(workers, layout)
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


def broken_npus(mutate) -> dict:
    table, _ = multi_npu_table()
    mutate(table)
    return table


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "not a JSON object"),
        (broken(lambda t: t.update(version="2.0")), "version '2.0'"),
        (broken(lambda t: t.update(server_count="3")), "server_count '3' but 5 servers"),
        (broken(lambda t: t.update(server_list=[])), "server_list is missing or empty"),
        (broken_npus(lambda t: t["server_list"][0]["device"][1].update(rank_id="7")), "not contiguous"),
        (broken(lambda t: t["server_list"][1]["device"][0].update(rank_id="x")), "no integer rank_id"),
        (broken(lambda t: t.update(server_list=t["server_list"][:4], server_count="4")), None),  # fewer ranks
        (
            broken(lambda t: t.update(server_list=t["server_list"][1:], server_count="4")),
            r"\[1, 2, 3, 4\] are not",
        ),
        (broken_npus(lambda t: t["server_list"][2]["device"].pop(0)), r"\[0, 1, 2, 3, 5\] are not 0\.\.4"),
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
        f"launch: error: rank table {table}: version '0.9' is not a supported one ('1.0' or '1.2')"
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
        (lambda t: t["server_list"][1]["device"][0].update(rank_id=True), "no integer rank_id >= 0: True"),
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


# -- multi-NPU pods (issue 14 section 2) -------------------------------------------------------------
def test_multi_npu_pods_hold_their_entrys_ranks_and_number_devices_from_0(tmp_path):
    table_path, ranks_path = write_configmap(
        tmp_path, "a1", multi_npu_workers(), ranktable.Layout(npus_per_pod=2)
    )
    table = json.loads(table_path.read_text())
    # MindX's layout: one entry per pod, so node A's two pods are two entries with the same server_id.
    assert [entry["server_id"] for entry in table["server_list"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.1"]
    assert sorted(launch.validate_table(table)) == list(range(6))
    placements = {
        name: launch.read_placement(table_path, ranks_path, name, "a1") for name in ("m-0", "m-1", "m-2")
    }
    assert {name: (p.rank, p.local_ranks) for name, p in placements.items()} == {
        "m-0": (0, 2), "m-1": (2, 2), "m-2": (4, 2)
    }  # fmt: skip
    assert placements["m-2"].device_ids == ("4", "5")  # physical ids stay in the table only
    envs = [launch.rank_table_env(placements["m-2"], "/tmp/t.json", "172.16.1.12", i) for i in range(2)]
    assert [(e["RANK_ID"], e["DEVICE_ID"], e["ASCEND_DEVICE_ID"]) for e in envs] == [
        ("4", "0", "0"),
        ("5", "1", "1"),
    ]
    assert {e["RANK_SIZE"] for e in envs} == {"6"} and {e["RANK_TABLE_FILE"] for e in envs} == {"/tmp/t.json"}


def test_one_entry_of_several_one_npu_pods_gives_each_pod_one_rank(tmp_path):
    """The older grouping (one entry per node, several one-NPU pods in it) still places every pod."""
    entry = {"server_id": "10.0.0.1", "device": [
        {"device_id": str(d), "device_ip": f"192.168.3.{d}", "rank_id": str(d)} for d in range(3)
    ]}  # fmt: skip
    table = {"version": "1.0", "server_count": "1", "server_list": [entry], "status": "completed"}
    write(tmp_path / "hccl.json", table)
    write(tmp_path / "ranks.json", {"attempt": "a1", "ranks": {"p-0": 0, "p-1": 1, "p-2": 2}})
    placed = [
        launch.read_placement(tmp_path / "hccl.json", tmp_path / "ranks.json", f"p-{i}", "a1")
        for i in range(3)
    ]
    assert [(p.rank, p.local_ranks, p.device_id) for p in placed] == [(0, 1, "0"), (1, 1, "1"), (2, 1, "2")]


@pytest.mark.parametrize(
    ("ranks", "problem"),
    [
        ({"m-0": 0, "m-1": 3, "m-2": 4}, r"ranks \[0, 3, 4\] do not match the table's 0\.\.5"),  # mid-entry
        ({"m-0": 0, "m-2": 4}, r"ranks \[0, 4\] do not match"),  # entry 2..3 belongs to no pod
        ({"m-0": 0, "m-1": 2, "m-2": 6}, r"ranks \[0, 2, 6\] do not match"),  # beyond the table
    ],
)
def test_rank_maps_that_do_not_fit_the_entries_are_refused(tmp_path, ranks, problem):
    table, _ = multi_npu_table()
    write(tmp_path / "hccl.json", table)
    write(tmp_path / "ranks.json", {"attempt": "a1", "ranks": ranks})
    with pytest.raises(BadInput, match=problem):
        launch.read_placement(tmp_path / "hccl.json", tmp_path / "ranks.json", "m-0", "a1")


def test_pod_rank_counts():
    assert launch.pod_rank_counts([0, 2, 4], [0, 2, 4], 6) == {0: 2, 2: 2, 4: 2}
    assert launch.pod_rank_counts([2, 0, 1], [0], 3) == {0: 1, 1: 1, 2: 1}
    assert launch.pod_rank_counts([0, 0, 2], [0, 2], 4) is None  # two pods on one rank
    assert launch.pod_rank_counts([0, 2], [0, 1, 2], 4) is None  # an entry no pod starts


# -- rank table 1.2 (Atlas A3 super pods), in the layout of MindX's docs and v1dot2/ranktable.go ------
def a3_table() -> dict:
    """Two 2-NPU pods on two A3 servers of one super pod, as MindX's ascend-operator writes it."""

    def server(server_id: str, first: int, super_ids: list[str]) -> dict:
        devices = [{"device_id": str(i), "device_ip": f"29.{first}.0.{i}", "super_device_id": super_ids[i],
                    "rank_id": str(first + i)} for i in range(2)]  # fmt: skip
        return {
            "device": devices,
            "server_id": server_id,
            "host_ip": server_id,
            "container_ip": f"10.1.0.{first}",
        }

    servers = [
        server("10.0.0.1", 0, ["37748736", "37748737"]),
        server("10.0.0.2", 2, ["38600704", "38600705"]),
    ]
    super_pod = {"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"}, {"server_id": "10.0.0.2"}]}
    return {
        "status": "completed",
        "server_list": servers,
        "server_count": "2",
        "version": "1.2",
        "super_pod_list": [super_pod],
    }


def test_version_1_2_table_is_accepted_and_placed(tmp_path):
    assert launch.validate_table(a3_table()) == {0: ("10.0.0.1", "0"), 1: ("10.0.0.1", "1"),
                                                 2: ("10.0.0.2", "0"), 3: ("10.0.0.2", "1")}  # fmt: skip
    write(tmp_path / "hccl.json", a3_table())
    write(tmp_path / "ranks.json", {"attempt": "a1", "ranks": {"w-0": 0, "w-1": 2}})
    placement = launch.read_placement(tmp_path / "hccl.json", tmp_path / "ranks.json", "w-1", "a1")
    assert (placement.rank, placement.local_ranks, placement.size) == (2, 2, 4)


def test_the_controllers_version_1_2_table_is_accepted():
    devices = [{"device_id": str(i), "device_ip": f"29.0.0.{i}", "super_device_id": str(37748736 + i)}
               for i in range(2)]  # fmt: skip
    annotation = json.dumps({"pod_name": "x", "server_id": "10.0.0.1", "super_pod_id": 3, "devices": devices})
    workers = [ranktable.Worker(f"w-{i}", i, f"10.1.0.{i}", "10.0.0.1", annotation) for i in range(2)]
    table, _ = ranktable.build(workers, ranktable.Layout(npus_per_pod=2, version="1.2"))
    assert sorted(launch.validate_table(table)) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda t: t.pop("super_pod_list"), "version 1.2 needs a super_pod_list"),
        (
            lambda t: t["server_list"][1]["device"][0].pop("super_device_id"),
            r"device\[0\] has no super_device_id",
        ),
        (
            lambda t: t["server_list"][0]["device"][1].update(super_device_id=5),
            "no super_device_id string: 5",
        ),
        (lambda t: t["super_pod_list"][0].update(super_pod_id=0), r"super_pod_list\[0\] lacks a numeric"),
        (
            lambda t: t["super_pod_list"][0]["server_list"].pop(),
            r"servers \['10.0.0.2'\] are in no super pod",
        ),
        (
            lambda t: t["super_pod_list"][0]["server_list"].append({"server_id": "10.9.9.9"}),
            "'10.9.9.9' is not in",
        ),
        (
            lambda t: t["super_pod_list"].append(dict(t["super_pod_list"][0])),
            "super_pod_id '0' appears twice",
        ),
    ],
)
def test_malformed_version_1_2_tables_are_refused(mutate, problem):
    table = a3_table()
    mutate(table)
    with pytest.raises(BadInput, match=problem):
        launch.validate_table(table)


# -- dynamicCluster: node ids, addresses ------------------------------------------------------------
POD = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "10.96.0.7", "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "4"}


@pytest.mark.parametrize(
    ("extra", "node_ids"),
    [
        ({"MS_LOCAL_WORKER": "2", "MS_NODE_RANK": "0"}, ["0", "1"]),
        ({"MS_LOCAL_WORKER": "2", "MS_NODE_RANK": "1"}, ["2", "3"]),  # msrun: node_rank * local + i
        ({"MS_LOCAL_WORKER": "4", "MS_NODE_RANK": "0"}, ["0", "1", "2", "3"]),
        ({"MS_NODE_ID": "3", "MS_NODE_RANK": "3", "MS_LOCAL_WORKER": "1"}, ["3"]),
        ({"MS_NODE_RANK": "2"}, ["2"]),  # one process and only MindX's variables: the node rank
    ],
)
def test_each_process_of_a_pod_gets_its_node_id(extra, node_ids):
    envs = launch.dynamic_cluster_envs({**POD, **extra})
    assert [e["MS_NODE_ID"] for e in envs] == node_ids
    assert [e["RANK_ID"] for e in envs] == node_ids  # as msrun exports it
    assert [e["DEVICE_ID"] for e in envs] == [str(i) for i in range(len(node_ids))]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"MS_LOCAL_WORKER": "2"}, "MS_NODE_RANK=None: a worker pod of 2 needs its index"),
        (
            {"MS_LOCAL_WORKER": "2", "MS_NODE_RANK": "2"},
            r"node ids 4\.\.5 of this pod do not fit MS_WORKER_NUM=4",
        ),
        ({"MS_LOCAL_WORKER": "0", "MS_NODE_RANK": "0"}, "MS_LOCAL_WORKER='0'"),
        ({"MS_LOCAL_WORKER": "two", "MS_NODE_RANK": "0"}, "MS_LOCAL_WORKER='two'"),
        ({"MS_NODE_ID": "4"}, "node ids 4..4 of this pod do not fit"),
    ],
)
def test_node_ids_that_cannot_be_are_bad_input(extra, problem):
    with pytest.raises(BadInput, match=problem):
        launch.check_dynamic_cluster({**POD, **extra}, timeout=0)


def args_for(mode: str) -> argparse.Namespace:
    return launch.parse_args(["--mode", mode, "--timeout", "0", "--poll", "0", "--", "train"])


def test_an_ip_reaches_the_job_unchanged_and_a_host_name_as_its_address(capsys):
    pod = {**POD, "MS_LOCAL_WORKER": "2", "MS_NODE_RANK": "1"}
    envs = launch.prepare(args_for("dynamicCluster"), pod)
    assert len(envs) == 2 and all("MS_SCHED_HOST" not in e for e in envs)
    assert (
        launch.prepare(args_for("dynamicCluster"), {**pod, "MS_SCHED_HOST": "::1"})[0].get("MS_SCHED_HOST")
        is None
    )
    envs = launch.prepare(args_for("dynamicCluster"), {**pod, "MS_SCHED_HOST": "localhost"})
    assert [e["MS_SCHED_HOST"] for e in envs] == ["127.0.0.1", "127.0.0.1"]
    assert "MS_SCHED_HOST localhost resolved to 127.0.0.1" in capsys.readouterr().err
    # The scheduler pod is one process, whatever MS_LOCAL_WORKER says.
    assert launch.prepare(args_for("dynamicCluster"), {**pod, "MS_ROLE": "MS_SCHED"}) == [{}]


def test_ipv4_is_preferred_to_ipv6():
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::7", 8118, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.96.0.7", 8118)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.96.0.8", 8118)),
    ]
    assert launch.pick_address(infos) == "10.96.0.7"
    assert launch.pick_address(infos[:1]) == "fd00::7"


# -- one process per rank: supervise, forward signals, the first failure decides ---------------------
CHILD = """
import os, signal, sys, time
from pathlib import Path
out = Path(os.environ["OUT"])
def stop(signum, frame):
    (out / f"got-{signum}-{os.environ['LOCAL']}").touch()
    sys.exit(143)
if os.environ.get("STUCK") != os.environ["LOCAL"]:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a rank inside a collective never acts on SIGTERM
(out / f"ready-{os.environ['LOCAL']}").touch()
if os.environ.get("FAIL") == os.environ["LOCAL"]:
    time.sleep(0.3)
    sys.exit(int(os.environ["CODE"]))
time.sleep(float(os.environ.get("SLEEP", "60")))
"""


def child_envs(tmp_path: Path, count: int, **extra: str) -> list[dict[str, str]]:
    return [{**os.environ, "OUT": str(tmp_path), "LOCAL": str(i), **extra} for i in range(count)]


def test_all_processes_succeeding_exit_0(tmp_path):
    code = launch.supervise([sys.executable, "-c", CHILD], child_envs(tmp_path, 3, SLEEP="0.2"))
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["ready-0", "ready-1", "ready-2"]


def test_first_failure_stops_the_siblings_and_is_the_exit_code(tmp_path):
    started = time.monotonic()
    code = launch.supervise([sys.executable, "-c", CHILD], child_envs(tmp_path, 3, FAIL="1", CODE="7"))
    assert code == 7
    assert time.monotonic() - started < 20  # the siblings did not sleep their 60 s
    assert (tmp_path / "got-15-0").exists() and (tmp_path / "got-15-2").exists()  # SIGTERM, not SIGKILL


def test_a_sibling_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    started = time.monotonic()
    envs = child_envs(tmp_path, 2, FAIL="0", CODE="3", STUCK="1")
    assert launch.supervise([sys.executable, "-c", CHILD], envs, grace=1.0) == 3
    assert 1.0 <= time.monotonic() - started < 15
    assert not (tmp_path / "got-15-1").exists()


def test_exit_codes_as_a_container_runtime_reports_them():
    assert launch.exit_code(7 << 8) == 7
    assert launch.exit_code(signal.SIGKILL) == 137
    assert launch.exit_code(signal.SIGTERM) == 143


SUPERVISOR = """
import os, sys
from job import launch
envs = [{**os.environ, "LOCAL": str(i)} for i in range(2)]
sys.exit(launch.supervise([sys.executable, "-c", sys.argv[1]], envs))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_to_every_process(tmp_path, signum):
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, CHILD], env={**os.environ, "OUT": str(tmp_path)}
    )
    try:
        deadline = time.monotonic() + 30
        while not ((tmp_path / "ready-0").exists() and (tmp_path / "ready-1").exists()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 143
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / f"got-{signum}-0").exists() and (tmp_path / f"got-{signum}-1").exists()


def test_the_launcher_starts_one_job_per_rank_of_a_multi_npu_pod(tmp_path):
    env = {"DEEPLAB_LAUNCHER": "dynamicCluster", **POD, "MS_SCHED_HOST": "127.0.0.1", "MS_LOCAL_WORKER": "2",
           "MS_NODE_RANK": "1"}  # fmt: skip
    proc = run_launcher(tmp_path, env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.count("usage: deeplab-job train") == 2  # `train --help` ran once per rank
    assert "starting 2 processes" in err


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("Ascend910-4,Ascend910-5", ["4", "5"]),  # Volcano's huawei.com/Ascend910 annotation
        ("0,1", ["0", "1"]),
        ("0-3", ["0", "1", "2", "3"]),
        ("void", None),
        ("Ascend910-4,,", None),
    ],
)
def test_visible_devices_in_the_forms_ascend_docker_runtime_takes(value, ids):
    assert launch.visible_devices(value) == ids


def test_a_container_seeing_other_npus_than_the_table_gives_a_warning():
    placement = launch.Placement(
        rank=4, size=8, device_id="4", server_id="h", local_ranks=2, device_ids=("4", "5")
    )
    assert launch.visibility_warning(placement, "Ascend910-5,Ascend910-4") is None  # the runtime sorts them
    assert launch.visibility_warning(placement, None) is None
    warning = launch.visibility_warning(placement, "Ascend910-0,Ascend910-1")
    assert warning and "['4', '5']" in warning and "rank 4+i" in warning
