"""`deeplab-job demo` end to end at a tiny size: every stage wired, outputs where it says they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mindspore


def test_demo_runs_end_to_end_at_tiny_size(tmp_path: Path):
    out = tmp_path / "demo"
    args = [
        sys.executable,
        "-m",
        "job",
        "demo",
        "--output_dir",
        str(out),
        "--size",
        "40",
        "--num_train",
        "4",
        "--num_val",
        "2",
        "--train_epochs",
        "1",
        "--batch_size",
        "2",
        "--num_classes",
        "3",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["event"] == "demo" and 0.0 <= summary["miou"] <= 1.0 and len(summary["iou"]) == 3
    assert (
        Path(summary["checkpoint"]) == out / "train" / "final.ckpt" and Path(summary["checkpoint"]).is_file()
    )
    assert len(list(Path(summary["predictions"]).glob("*.png"))) == 2
    assert "mIoU" in proc.stderr and str(out / "predictions") in proc.stderr
    curves = out / "curves.png"
    assert summary["curves"] == str(curves) and f"training curves: {curves}" in proc.stderr
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_never_deletes_a_directory_it_did_not_create(tmp_path: Path):
    precious = tmp_path / "mine" / "notes.txt"
    precious.parent.mkdir()
    precious.write_text("keep me")
    args = [sys.executable, "-m", "job", "demo", "--output_dir", str(precious.parent)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "is not a demo output" in proc.stderr and str(precious.parent) in proc.stderr
    assert precious.read_text() == "keep me"
