"""Progress parsing, the rank table's edge cases and the work queue's semantics."""

from __future__ import annotations

import json
import threading

from controller import progress, ranktable
from controller.workqueue import WorkQueue


def test_progress_takes_the_newest_line_and_ignores_noise():
    lines = [
        '{"event": "progress", "epoch": 1, "epochs": 5, "loss": 1.0}',
        "[WARNING] MindSpore: something",
        '{"event": "progress", "epoch": 2, "epochs": 5, "loss": NaN, "step": 7}',
        "{broken",
        '{"event": "other"}',
    ]
    latest = progress.last_progress(lines)
    assert latest["epoch"] == 2 and latest["step"] == 7 and latest["loss"] is None
    assert progress.last_progress(["nothing here"]) is None


def test_result_from_a_termination_message():
    message = 'log\n{"event": "result", "checkpoint": "/c/final.ckpt", "loss": 0.2, "miou": 0.78}\n'
    assert progress.result(message) == {"checkpoint": "/c/final.ckpt", "loss": 0.2, "miou": 0.78}
    assert progress.result("Traceback ...") is None and progress.result(None) is None
    assert progress.last_line("a\n\nfinal words\n") == "final words"
    assert len(progress.last_line("x" * 1000)) == progress.MESSAGE_MAX


def test_rank_table_readiness_and_garbage_tolerance():
    workers = [ranktable.Worker("a", 0, "10.0.0.5", "1.1.1.1"), ranktable.Worker("b", 1, None, "1.1.1.1")]
    assert not ranktable.ready(workers, 2)
    assert not ranktable.ready(workers[:1], 2)
    assert ranktable.read_configmap({"hccl.json": "{oops", "ranks.json": "[]"}) == (None, False, {})
    broken = ranktable.Worker("a", 0, "10.0.0.5", "1.1.1.1", annotation='{"devices": []}')
    table, ranks = ranktable.build([broken])
    assert table["server_list"][0]["device"] == [{"device_id": "0", "device_ip": "10.0.0.5", "rank_id": "0"}]
    data = ranktable.configmap_data("x.s.1", table, ranks)
    assert ranktable.read_configmap(data) == ("x.s.1", True, {"a": 0})
    assert json.loads(data["hccl.json"])["status"] == "completed"


def test_queue_merges_duplicates_and_never_runs_a_key_twice_at_once():
    q = WorkQueue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    key = q.get(timeout=0)
    assert key == "a"
    q.add("a")  # while processing: deferred, not queued beside itself
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_queue_backoff_grows_and_forget_resets():
    q = WorkQueue(base_delay=0.01, max_delay=0.04)
    assert [q.retry("k") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    q.forget("k")
    assert q.failures("k") == 0


def test_queue_delayed_add_and_shutdown():
    now = [100.0]
    q = WorkQueue(clock=lambda: now[0])
    q.add_after("k", 5)
    assert q.get(timeout=0) is None
    now[0] += 5
    assert q.get(timeout=0) == "k"
    waiter = []
    thread = threading.Thread(target=lambda: waiter.append(q.get()))
    thread.start()
    q.shutdown()
    thread.join(2)
    assert waiter == [None]


def test_only_consecutive_pod_creates_are_batched_and_the_order_holds():
    from controller.plan import Create, Delete
    from controller.runtime import _batches

    def create(kind: str, name: str) -> Create:
        return Create({"kind": kind, "metadata": {"name": name}})

    stale = Delete("Pod", "old", "uid")
    cm, svc = create("ConfigMap", "rings"), create("Service", "svc")
    pods = [create("Pod", f"w{i}") for i in range(3)]
    assert _batches([stale, cm, *pods, svc, pods[0]]) == [[stale], [cm], pods, [svc], [pods[0]]]
    assert _batches([]) == []
