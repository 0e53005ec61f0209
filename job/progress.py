"""Progress lines (JSON on stdout, parsed by the operator) and the result file.

Rank 0 prints one compact JSON object per ``log_steps`` steps with exactly the keys the operator
reads (plus ``time``); when stdout is a terminal a human-readable line is also drawn on stderr.
The result goes to a file (atomically where possible; ``/dev/termination-log`` is a mounted file
that cannot be renamed over, so it is written in place) and is echoed as the last stdout line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

TERMINATION_LOG = "/dev/termination-log"
RESULT_LIMIT = 4096  # Kubernetes truncates termination messages at 4 KiB


def default_result_file(train_dir: str) -> str:
    return TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else str(Path(train_dir) / "result.json")


def dumps(payload: dict[str, Any]) -> str:
    """Compact JSON; NaN/inf become null so every line is valid JSON for the operator."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in payload.items()}
    return json.dumps(clean, separators=(",", ":"))


class Progress:
    """Throughput and ETA over the steps since the previous line; prints JSON (and a human line)."""

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
    ) -> None:
        self.epochs, self.steps, self.images_per_step = epochs, steps, images_per_step
        self.enabled = enabled
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self._mark_step, self._mark_time = start_step, time.monotonic()

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
            if self.out.isatty():
                self._human(line)
        return line

    def _human(self, line: dict[str, Any]) -> None:
        eta = line["eta_seconds"]
        eta_text = f"{int(eta) // 60}m{int(eta) % 60:02d}s" if eta is not None else "?"
        self.err.write(
            f"\repoch {line['epoch']}/{line['epochs']} step {line['step']}/{line['steps']} "
            f"loss {line['loss']:.4f} lr {line['lr']:.2e} {line['images_per_second']:.1f} img/s "
            f"eta {eta_text}  "
        )
        self.err.flush()


def write_result(path: str, result: dict[str, Any], out: TextIO | None = None) -> str:
    """Write the result JSON to ``path`` (atomically if the file can be renamed over) and echo it."""
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
    stream = out or sys.stdout
    if stream.isatty():
        print(file=sys.stderr)  # end the human progress line
    print(text, file=stream, flush=True)
    return text
