"""Progress lines and the result file: exact keys, valid JSON, atomic write, size limit."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from job.progress import Progress, write_result

KEYS = {"event", "epoch", "epochs", "step", "steps", "loss", "lr", "images_per_second", "eta_seconds", "time"}


def test_progress_line_has_the_operator_keys_and_an_eta():
    out = io.StringIO()
    progress = Progress(epochs=2, steps=100, images_per_step=8, start_step=40, out=out, err=io.StringIO())
    progress.report(epoch=1, step=50, loss=0.5, lr=0.01)
    line = json.loads(out.getvalue())
    assert set(line) == KEYS and line["step"] == 50 and line["steps"] == 100
    assert line["images_per_second"] > 0 and line["eta_seconds"] >= 0


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    Progress(epochs=1, steps=10, images_per_step=1, enabled=False, out=out).report(
        epoch=1, step=1, loss=1, lr=1
    )
    assert out.getvalue() == ""


def test_result_is_written_atomically_and_echoed(tmp_path: Path):
    out = io.StringIO()
    result = {"event": "result", "checkpoint": "/t/final.ckpt", "epochs": 1, "steps": 3, "loss": math.nan,
              "miou": None}  # fmt: skip
    write_result(str(tmp_path / "sub" / "result.json"), result, out=out)
    written = (tmp_path / "sub" / "result.json").read_text()
    assert json.loads(written)["loss"] is None  # NaN is not JSON: null
    assert out.getvalue() == written
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["result.json"]


def test_result_over_4k_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="limit"):
        write_result(str(tmp_path / "r.json"), {"event": "result", "x": "a" * 5000}, out=io.StringIO())


def test_progress_log_appends_each_record_with_step_attempt_run_and_time(tmp_path: Path, monkeypatch):
    from job.progress import PROGRESS_LOG, ProgressLog

    monkeypatch.setenv("DEEPLAB_ATTEMPT", "uid-s16-2")
    out = io.StringIO()
    progress = Progress(
        epochs=1, steps=10, images_per_step=2, start_step=4, out=out, err=io.StringIO(),
        log=ProgressLog(tmp_path),
    )  # fmt: skip
    progress.begin()
    progress.report(epoch=1, step=5, loss=0.5, lr=0.01)
    write_result(str(tmp_path / "result.json"), {"event": "result", "steps": 5, "miou": 0.5}, out=out,
                 log=ProgressLog(tmp_path))  # fmt: skip
    ProgressLog(tmp_path).write({"event": "progress", "loss": 1.0}, step=6)  # a later process: appended
    lines = [json.loads(line) for line in (tmp_path / PROGRESS_LOG).read_text().splitlines()]
    assert [(line["event"], line["step"]) for line in lines] == [
        ("start", 4), ("progress", 5), ("result", 5), ("progress", 6)
    ]  # fmt: skip
    assert all(line["attempt"] == "uid-s16-2" and line["run"] and line["time"] > 1.7e9 for line in lines)
    stdout = [json.loads(line) for line in out.getvalue().splitlines()]
    assert set(stdout[0]) == KEYS  # stdout keeps exactly the operator's keys
    assert lines[1] == {**stdout[0], "attempt": "uid-s16-2", "run": lines[1]["run"]}


def test_attempt_is_the_run_id_without_the_operator(tmp_path: Path, monkeypatch):
    from job.progress import PROGRESS_LOG, ProgressLog, run_id

    monkeypatch.delenv("DEEPLAB_ATTEMPT", raising=False)
    ProgressLog(tmp_path).write({"event": "start"}, step=0)
    line = json.loads((tmp_path / PROGRESS_LOG).read_text())
    assert line["attempt"] == line["run"] == run_id()


def test_disabled_log_writes_nothing(tmp_path: Path):
    from job.progress import ProgressLog

    progress = Progress(epochs=1, steps=10, images_per_step=1, enabled=False, out=io.StringIO(),
                        log=ProgressLog(tmp_path))  # fmt: skip
    progress.begin()
    progress.report(epoch=1, step=1, loss=1, lr=1)
    assert list(tmp_path.iterdir()) == []


def test_human_line_goes_to_stderr_also_when_it_is_not_a_terminal():
    err = io.StringIO()  # as with `> train.log 2>&1`
    progress = Progress(epochs=2, steps=100, images_per_step=8, out=io.StringIO(), err=err)
    progress.report(epoch=1, step=10, loss=0.5, lr=0.01)
    progress.report(epoch=1, step=20, loss=0.4, lr=0.01)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in err.getvalue()
    assert lines[1].startswith("epoch 1/2 step 20/100 loss 0.4000 lr 1.00e-02")
