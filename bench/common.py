"""Shared helpers: machine description, robust statistics, peak-RSS probes, JSON result lines.

Every benchmark script prints exactly one ``RESULT <json>`` line on stdout so that ``bench.run`` can
start it as a subprocess (a clean process per variant: thread pools, oneDNN settings and peak RSS
never leak between variants) and collect its figures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "RESULT "


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and the ISA flags that decide the oneDNN kernel choice."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(("avx", "amx")) or f == "fma")
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "isa": isa,
        "avx512": any(f.startswith("avx512") for f in flags),
        "python": platform.python_version(),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """min-max, to show the noise next to a median."""
    return f"{min(values):.3g}-{max(values):.3g}" if values else "-"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs) so the next peak excludes warm-up/compile."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM: the process's peak resident set since start or the last reset."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def emit(result: dict[str, Any]) -> None:
    """The one machine-readable line ``bench.run`` parses."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    sys.stdout.flush()


def parse_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def log(message: str) -> None:
    """Progress on stderr (stdout carries the result line)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare_mindspore() -> None:
    """Import ``job`` first: it applies the oneDNN ISA setting, which only works before MindSpore loads."""
    import job  # noqa: F401
