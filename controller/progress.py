"""Rank 0's JSON lines -> progress and result records. Pure, and forgiving: logs are free text.

The job prints ``{"event": "progress", ...}`` lines on stdout and writes one ``{"event": "result",
...}`` line to /dev/termination-log (the container's termination message). Anything else on those
channels (warnings, MindSpore's own logging) is skipped, never an error.

Everything here reads text a tenant's process wrote, and what it returns is copied into the
training's status and events. So nothing here raises (a line that cannot be parsed, for whatever
reason, is skipped: one bad line must not freeze the training's status and with it its deadline and
backoff), numbers come out as the API server stores them (int64, finite float64), and text comes
out through ``clean_text``: one line, printable, bounded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

INT_FIELDS = ("epoch", "epochs", "step", "steps")  # integers in api.Progress
FLOAT_FIELDS = ("loss", "lr", "images_per_second", "eta_seconds")
PROGRESS_FIELDS = INT_FIELDS + FLOAT_FIELDS
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what the API server's JSON decoder accepts as an integer
MESSAGE_MAX = 300  # a termination message's last line in a status message
REASON_MAX = 128  # a pod's reason (also a condition's and an event's reason)
DETAIL_MAX = 1024  # any other pod-supplied message (a scheduler's, a kubelet's)
CHECKPOINT_MAX = 1024
LINE_MAX = 16 * 1024  # longer lines are skipped unparsed: no JSON line of the job comes close
LOG_BYTES = 64 * 1024  # the most read of rank 0's log tail per reconcile (limitBytes)
TAIL_MAX = 16 * 1024  # what is kept of a raw termination message (the kubelet caps it at 4 KiB)

# ANSI escape sequences: CSI (colours, cursor moves), OSC terminated by BEL or ST (window titles,
# hyperlinks), and the two-character escapes. What is left of an unterminated one is plain text.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# Line and tab breaks become spaces (a message is one line in `kubectl describe`).
_BREAKS = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]")
# Then gone: the other C0 and C1 controls and DEL, lone surrogates (not encodable as UTF-8: the
# client could not even send the status), and the bidirectional overrides that make a terminal
# show text in an order other than the one stored.
_DROP = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: object, limit: int) -> str:
    """Pod-supplied text as it may appear in status and events: printable, one line, valid UTF-8,
    at most ``limit`` characters (cut with "..."). Anything that is not a string is ""."""
    if not isinstance(text, str):
        return ""
    # Bound the work first; escapes removed later can only make it shorter.
    text = text[: limit * 4 + 256]
    text = _DROP.sub("", _ANSI.sub("", _BREAKS.sub(" ", text))).strip()
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)].rstrip() + "..."


def tail(text: object, limit: int = TAIL_MAX) -> str:
    """The end of a raw multi-line text (a termination message: the result line is its last), bounded
    but not cleaned, because it is still to be parsed; "" for anything that is not a string."""
    if not isinstance(text, str):
        return ""
    return text[-limit:]


def _parse(line: object) -> dict[str, Any] | None:
    if not isinstance(line, str) or len(line) > LINE_MAX:
        return None
    line = line.strip()
    if not line.startswith("{"):
        return None
    record = json.loads(line)
    return record if isinstance(record, dict) else None


def _events(lines: Iterable[str], kind: str) -> Iterable[dict[str, Any]]:
    for line in lines:
        try:
            record = _parse(line)
        except Exception:  # ValueError, RecursionError (deep nesting), MemoryError...: skip the line
            continue
        if record is not None and record.get("event") == kind:
            yield record


def integer(value: Any) -> int | None:
    """An integer field (epoch, step...): clamped into int64. An integral float (3.0) counts; a
    fractional one (3.7) is dropped rather than rounded, since the job never prints one and a rounded
    value would claim a position the job did not report. Bools and non-numbers are None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int):
        return None
    return min(max(value, INT64_MIN), INT64_MAX)


def real(value: Any) -> float | None:
    """A float field: finite float64 or None. JSON from a crashing process may carry NaN/Infinity
    (Python's json emits them) and huge integers (float() overflows past ~1e308): dropped."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def last_progress(lines: Iterable[str]) -> dict[str, Any] | None:
    """The newest progress record with only the known numeric fields, typed as api.Progress has them."""
    newest = None
    for record in _events(lines, "progress"):
        newest = record
    if newest is None:
        return None
    return {key: integer(newest.get(key)) for key in INT_FIELDS} | {
        key: real(newest.get(key)) for key in FLOAT_FIELDS
    }


def result(message: str | None) -> dict[str, Any] | None:
    """The result record from a termination message (the last one wins): only its parsed fields, so
    nothing else a worker writes there (a secret, a megabyte) reaches the status."""
    found = None
    for record in _events(tail(message).splitlines(), "result"):
        found = record
    if found is None:
        return None
    return {
        "checkpoint": clean_text(found.get("checkpoint"), CHECKPOINT_MAX) or None,
        "loss": _rounded(real(found.get("loss"))),
        "miou": _rounded(real(found.get("miou"))),
    }


def _rounded(value: float | None) -> float | None:
    """Six decimals, as the progress lines' loss: `kubectl get dlt` prints a number's every digit."""
    return None if value is None else round(value, 6)


def last_line(message: str | None) -> str:
    """The most telling line of a termination message (the log tail on a crash), cleaned."""
    for line in reversed(tail(message).splitlines()):
        text = clean_text(line, MESSAGE_MAX)
        if text:
            return text
    return ""
