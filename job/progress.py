"""Progress lines (JSON on stdout, parsed by the operator), ``progress.jsonl`` and the result file.

Rank 0 prints one compact JSON object per ``log_steps`` steps with exactly the keys the operator
reads (plus ``time``), and a human-readable line on stderr: redrawn in place on a terminal, one line
each otherwise (so ``> train.log 2>&1`` keeps both). The same records, plus a start record per process,
are appended to ``train_dir/progress.jsonl`` for ``deeplab-job plot``: stdout is gone once the pod is,
and a restart must add to the history rather than replace it.
The result goes to a file (atomically where possible; ``/dev/termination-log`` is a mounted file
that cannot be renamed over, so it is written in place) and is echoed as the last stdout line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any, TextIO

TERMINATION_LOG = "/dev/termination-log"
RESULT_LIMIT = 4096  # Kubernetes truncates termination messages at 4 KiB
PROGRESS_LOG = "progress.jsonl"
ATTEMPT_ENV = "DEEPLAB_ATTEMPT"  # set by the operator on every pod of one attempt of a stage


def default_result_file(train_dir: str) -> str:
    return TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else str(Path(train_dir) / "result.json")


def dumps(payload: dict[str, Any]) -> str:
    """Compact JSON; NaN/inf become null so every line is valid JSON for the operator."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in payload.items()}
    return json.dumps(clean, separators=(",", ":"))


@cache
def run_id() -> str:
    """This process's id in progress.jsonl: start time and pid. A new value is a restart (a new pod,
    a container restart in the same attempt, or a manual rerun), even when the step did not go back."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"


class ProgressLog:
    """Appends records to ``train_dir/progress.jsonl``: one line each, flushed (the file is closed
    after every line), never truncated. Each line adds the global ``step``, the ``attempt`` (the
    operator's DEEPLAB_ATTEMPT, else this process's run id), the ``run`` id and ``time`` (unix s)."""

    def __init__(self, train_dir: str | Path, *, enabled: bool = True) -> None:
        self.path = Path(train_dir) / PROGRESS_LOG
        self.enabled = enabled

    def write(self, record: dict[str, Any], *, step: int) -> None:
        if not self.enabled:
            return
        line = {
            **record,
            "step": step,
            "attempt": os.environ.get(ATTEMPT_ENV) or run_id(),
            "run": run_id(),
            "time": record.get("time", round(time.time(), 3)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(dumps(line) + "\n")


class Progress:
    """Throughput and ETA over the steps since the previous line; prints JSON and a human line, and
    appends the JSON to ``log`` (progress.jsonl) when given."""

    def __init__(
        self,
        *,
        epochs: int,
        steps: int,
        images_per_step: int,
        start_step: int = 0,
        enabled: bool = True,
        out: TextIO | None = None,
        err: TextIO | None = None,
        log: ProgressLog | None = None,
    ) -> None:
        self.epochs, self.steps, self.images_per_step = epochs, steps, images_per_step
        self.enabled = enabled
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.log = log if enabled else None
        self._mark_step, self._mark_time = start_step, time.monotonic()

    def begin(self) -> None:
        """Record where this process starts (progress.jsonl only): the plot marks restarts with it."""
        if self.log is not None:
            record = {"event": "start", "epochs": self.epochs, "steps": self.steps}
            self.log.write(record, step=self._mark_step)

    def report(self, *, epoch: int, step: int, loss: float, lr: float) -> dict[str, Any]:
        """Emit one progress line for global ``step`` (1-based: steps completed)."""
        now = time.monotonic()
        done = step - self._mark_step
        elapsed = max(now - self._mark_time, 1e-9)
        rate = done / elapsed if done > 0 else 0.0
        line = {
            "event": "progress",
            "epoch": epoch,
            "epochs": self.epochs,
            "step": step,
            "steps": self.steps,
            "loss": round(float(loss), 6),
            "lr": float(lr),
            "images_per_second": round(rate * self.images_per_step, 3),
            "eta_seconds": round((self.steps - step) / rate, 1) if rate > 0 else None,
            "time": round(time.time(), 3),
        }
        self._mark_step, self._mark_time = step, now
        if self.enabled:
            print(dumps(line), file=self.out, flush=True)
            if self.log is not None:
                self.log.write(line, step=step)
            self._human(line)
        return line

    def _human(self, line: dict[str, Any]) -> None:
        eta = line["eta_seconds"]
        eta_text = f"{int(eta) // 60}m{int(eta) % 60:02d}s" if eta is not None else "?"
        text = (
            f"epoch {line['epoch']}/{line['epochs']} step {line['step']}/{line['steps']} "
            f"loss {line['loss']:.4f} lr {line['lr']:.2e} {line['images_per_second']:.1f} img/s "
            f"eta {eta_text}"
        )
        # A terminal redraws one line in place; a log file gets one line per report.
        self.err.write(f"\r{text}  " if self.err.isatty() else f"{text}\n")
        self.err.flush()


def write_result(
    path: str, result: dict[str, Any], out: TextIO | None = None, log: ProgressLog | None = None
) -> str:
    """Write the result JSON to ``path`` (atomically if the file can be renamed over) and echo it;
    also append it to ``log`` (progress.jsonl: the plot's mIoU per stage)."""
    text = dumps(result)
    if len(text.encode()) >= RESULT_LIMIT:
        raise ValueError(f"result JSON is {len(text)} bytes; the limit is {RESULT_LIMIT}")
    target = Path(path)
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError:
        # /dev/termination-log: a bind-mounted file in a directory we cannot write to (or rename over).
        tmp.unlink(missing_ok=True)
        with open(target, "w") as handle:
            handle.write(text + "\n")
    if log is not None:
        log.write(result, step=int(result.get("steps", 0)))
    stream = out or sys.stdout
    if sys.stderr.isatty():
        print(file=sys.stderr)  # end the human progress line drawn in place
    print(text, file=stream, flush=True)
    return text
