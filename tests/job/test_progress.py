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
