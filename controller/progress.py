"""Rank 0's JSON lines -> progress and result records. Pure, and forgiving: logs are free text.

The job prints ``{"event": "progress", ...}`` lines on stdout and writes one ``{"event": "result",
...}`` line to /dev/termination-log (the container's termination message). Anything else on those
channels (warnings, MindSpore's own logging) is skipped, never an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

PROGRESS_FIELDS = ("epoch", "epochs", "step", "steps", "loss", "lr", "images_per_second", "eta_seconds")
MESSAGE_MAX = 300


def _events(lines: Iterable[str], kind: str) -> Iterable[dict[str, Any]]:
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == kind:
            yield record


def _finite(value: Any) -> float | int | None:
    """JSON from a crashing process may carry NaN/inf (Python's json emits them): drop those."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def last_progress(lines: Iterable[str]) -> dict[str, Any] | None:
    """The newest progress record with only the known numeric fields."""
    newest = None
    for record in _events(lines, "progress"):
        newest = record
    if newest is None:
        return None
    return {key: _finite(newest.get(key)) for key in PROGRESS_FIELDS}


def result(message: str | None) -> dict[str, Any] | None:
    """The result record from a termination message (the last one wins)."""
    found = None
    for record in _events((message or "").splitlines(), "result"):
        found = record
    if found is None:
        return None
    checkpoint = found.get("checkpoint")
    return {
        "checkpoint": checkpoint if isinstance(checkpoint, str) else None,
        "loss": _finite(found.get("loss")),
        "miou": _finite(found.get("miou")),
    }


def last_line(message: str | None) -> str:
    """The most telling line of a termination message (the log tail on a crash)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= MESSAGE_MAX else line[: MESSAGE_MAX - 3] + "..."
