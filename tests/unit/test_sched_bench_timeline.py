"""bench/scheduling_scale.py's phases read from audit events, and bench/run.py's verdicts on them."""

from __future__ import annotations

from datetime import datetime, timezone

from bench import run
from bench.scheduling_scale import SA_USER, step_of, timeline

T0 = 1_800_000_000.0


def event(verb: str, resource: str, at: float, *, sub: str = "", ns: str = "scale", name: str = "x",
          agent: str = "", controller: bool = False, code: int = 201,
          stage: str = "ResponseComplete") -> dict:  # fmt: skip
    ref = {"resource": resource, "namespace": ns, "name": name, **({"subresource": sub} if sub else {})}
    stamp = datetime.fromtimestamp(T0 + at, timezone.utc).isoformat().replace("+00:00", "Z")
    found = {"stage": stage, "verb": verb, "objectRef": ref, "userAgent": agent, "stageTimestamp": stamp,
             "responseStatus": {"code": code}, "user": {"username": "admin"}}  # fmt: skip
    if controller:
        found["impersonatedUser"] = {"username": SA_USER}
    return found


SCHEDULER, KWOK = "kube-scheduler/v1.36.3 (linux/amd64)", "kwok/v0.8.0"
PLUGIN = "OpenAPI-Generator/35.0.0/python"  # the simulated device plugin: the Python client


def test_each_phase_is_the_right_actors_successful_writes_in_the_namespace():
    events = [
        event("create", "configmaps", 0.5, controller=True, name="rings-config-a"),
        event("create", "pods", 1.0, controller=True),
        event("create", "pods", 2.0, controller=True),
        event("create", "pods", 2.2, controller=True, code=409),  # refused: not a pod created
        event("patch", "pods", 2.5, sub="status", agent=SCHEDULER),  # Unschedulable: not Running
        event("create", "pods", 3.0, sub="binding", agent=SCHEDULER),
        event("create", "pods", 3.1, sub="binding", agent=SCHEDULER, stage="ResponseStarted"),
        event("patch", "pods", 3.5, agent=PLUGIN),
        event("patch", "pods", 4.0, sub="status", agent=KWOK),
        event("update", "configmaps", 5.0, controller=True, name="rings-config-a"),
        event("update", "configmaps", 6.0, controller=True, name="rings-config-b"),
        event("create", "pods", 7.0, controller=True, ns="other"),
        event("create", "pods", -1.0, controller=True),  # before the apply
        event("get", "pods", 2.0, controller=True, code=200),
    ]
    found = timeline(events, "scale", T0)
    assert found["created"] == {"count": 2, "first_s": 1.0, "last_s": 2.0}
    assert found["bound"] == {"count": 1, "first_s": 3.0, "last_s": 3.0}
    assert found["allocated"]["first_s"] == 3.5
    assert found["running"] == {"count": 1, "first_s": 4.0, "last_s": 4.0}
    assert found["table"] == {"count": 3, "first_s": 0.5, "last_s": 6.0}
    assert found["table_by_name"] == {"rings-config-a": 5.0, "rings-config-b": 6.0}
    assert step_of(event("patch", "pods", 1.0, agent=PLUGIN, controller=True)) is None  # the operator's own


def _scene(total: float, rss: float, table_bytes: int) -> dict:
    phases = {"created": {"first_s": 0.4, "last_s": 9.5}, "table": {"first_s": 0.3, "last_s": total}}
    return {"apply_to_all_tables_s": total, "trainings": 1, "phases": phases, "controller_peak_rss_mib": rss,
            "table_bytes": table_bytes, "table_servers": 128, "controller_reads": 7,
            "controller_writes": 9}  # fmt: skip


def test_scheduling_verdicts_are_honest_at_the_edges():
    rows = run.scheduling_rows("scheduling x", _scene(30.0, 286.0, 2**20 - 1), "cmd", table_target=True)
    assert [r.met for r in rows] == ["yes", "", "yes", "yes", ""]
    assert rows[1].value == "pods created 0.4-9.5 s, table 30.0 s"
    # 287 MiB is 300.9 MB: the target is in MB; a table of exactly 1 MiB is over
    rows = run.scheduling_rows("scheduling x", _scene(30.1, 287.0, 2**20), "cmd", table_target=True)
    assert [r.met for r in rows] == ["no", "", "no", "no", ""]
    small = run.scheduling_rows("scheduling y", _scene(12.0, 100.0, 900), "cmd", table_target=False)
    assert small[0].target == "info" and small[0].met == ""
    assert all(r.figure.startswith("scheduling ") for r in rows + small)  # bench.run's section of a row
