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
    assert err.strip().splitlines() == ["launch: error: rank table: version '0.9' is not the supported '1.0'"]


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
