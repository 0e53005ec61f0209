"""``deeplab-job plot``: the plotted series (stage offsets, restarts, EMA) without matplotlib, then the
command on synthetic progress.jsonl files of two stages with a restart: a PNG of the promised size."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from job import recipe
from job.plot import StageLog, curves, ema, summary


def progress(step: int, loss: float, run: str, lr: float = 0.01) -> dict:
    return {"event": "progress", "step": step, "loss": loss, "lr": lr, "images_per_second": 8.0,
            "attempt": run, "run": run}  # fmt: skip


def start(step: int, run: str) -> dict:
    return {"event": "start", "step": step, "attempt": run, "run": run}


def result(step: int, run: str, miou: float | None) -> dict:
    return {"event": "result", "step": step, "steps": step, "miou": miou, "attempt": run, "run": run}


# Stage 1: a run to step 30, then a restart that resumed from the checkpoint at step 20 (steps repeat).
STAGE_1 = [
    start(0, "a"), progress(10, 2.0, "a"), progress(20, 1.5, "a"), progress(30, 1.2, "a"),
    start(20, "b"), progress(30, 1.1, "b"), progress(40, 1.0, "b"), result(40, "b", 0.61),
]  # fmt: skip
# Stage 2: counts its own steps from 0; no eval in its result, but result.json has one.
STAGE_2 = [start(0, "c"), progress(10, 0.9, "c"), progress(20, 0.8, "c"), result(20, "c", None)]


def test_ema_keeps_the_first_value_and_is_debiased():
    assert ema([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])
    assert ema([0.0, 10.0], 0.5) == pytest.approx([0.0, 10 * 0.5 / 0.75])
    assert ema([1.0, 5.0], 0.0) == [1.0, 5.0]  # no smoothing


def test_curves_offset_stages_split_restarts_and_find_each_miou():
    data = curves([StageLog("s16", STAGE_1), StageLog("s8", STAGE_2, {"miou": 0.7})], smoothing=0.5)
    assert [(s.name, s.first_step, s.last_step, s.restarts, s.miou) for s in data.stages] == [
        ("s16", 0, 40, 1, 0.61),
        ("s8", 40, 60, 0, 0.7),
    ]
    assert data.restarts == [20]  # where the second process resumed
    segments = [(seg.stage, seg.steps) for seg in data.segments]
    assert segments == [(0, [10, 20, 30]), (0, [30, 40]), (1, [50, 60])]
    first, resumed, second = data.segments
    assert resumed.loss == [1.1, 1.0] and second.lr == [0.01, 0.01]
    # The EMA continues across the restart within a stage and starts afresh at a stage.
    assert first.smoothed == pytest.approx(ema([2.0, 1.5, 1.2], 0.5))
    assert resumed.smoothed == pytest.approx(ema([2.0, 1.5, 1.2, 1.1, 1.0], 0.5)[3:])
    assert second.smoothed == pytest.approx(ema([0.9, 0.8], 0.5))
    assert summary(data) == [
        "stage 1 s16: steps 0-40, 1 restart, mIoU 0.6100",
        "stage 2 s8: steps 40-60, mIoU 0.7000",
    ]


def test_a_step_going_back_is_a_restart_even_without_run_ids():
    records = [{"event": "progress", "step": s, "loss": 1.0} for s in (10, 20, 30, 20, 30)]
    data = curves([StageLog("old", records)])
    assert data.restarts == [20] and [seg.steps for seg in data.segments] == [[10, 20, 30], [20, 30]]


def test_the_series_need_no_matplotlib():
    code = (
        "import sys; from job.plot import StageLog, curves; "
        "curves([StageLog('s', [{'event': 'progress', 'step': 1, 'loss': 1.0}])]); "
        "assert 'matplotlib' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def write_log(train_dir: Path, records: list[dict]) -> Path:
    train_dir.mkdir(parents=True)
    text = "".join(json.dumps(record) + "\n" for record in records)
    (train_dir / "progress.jsonl").write_text(text + '{"event": "progress", "st')  # a line cut by a crash
    return train_dir


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_plot_command_draws_two_stages_and_prints_each_miou(tmp_path: Path, capsys):
    from job.__main__ import main

    s16 = write_log(tmp_path / "s16", STAGE_1)
    s8 = write_log(tmp_path / "s8", STAGE_2)
    (s8 / "result.json").write_text(json.dumps({"event": "result", "steps": 20, "miou": 0.7}))
    output = tmp_path / "out" / "curves.png"
    assert main(["plot", str(s16), str(s8), "-o", str(output)]) == recipe.EXIT_OK
    assert png_size(output) == (1200, 900)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "stage 1 s16: steps 0-40, 1 restart, mIoU 0.6100",
        "stage 2 s8: steps 40-60, mIoU 0.7000",
        f"wrote {output}",
    ]


@pytest.mark.parametrize("content", [None, "", "not json\n"])
def test_a_dir_without_progress_records_is_exit_2_naming_it(tmp_path: Path, capsys, content):
    from job.__main__ import main

    good = write_log(tmp_path / "good", STAGE_2)
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "progress.jsonl").write_text(content)
    code = main(["plot", str(good), str(bad), "--output", str(tmp_path / "c.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == recipe.EXIT_BAD_INPUT
    assert len(err) == 1 and str(bad) in err[0] and "progress.jsonl" in err[0]
    assert not (tmp_path / "c.png").exists()


def test_plot_needs_a_train_dir(capsys):
    from job.__main__ import main

    assert main(["plot"]) == recipe.EXIT_BAD_INPUT
    assert "train_dirs" in capsys.readouterr().err
