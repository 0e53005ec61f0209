"""Backend selection and the process settings that must exist before MindSpore loads.

``prepare_environment`` must run before the first ``import mindspore`` anywhere in the process:
oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when MindSpore's CPU kernels load. ``job.__main__``
calls it first thing, before it imports any module that imports MindSpore.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

DEVICE_TARGETS = ("auto", "Ascend", "GPU", "CPU")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor (empty when /proc/cpuinfo is unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def prepare_environment(
    environ: os._Environ | dict | None = None, cpuinfo: str | Path = "/proc/cpuinfo"
) -> None:
    """Apply CPU settings that only work before MindSpore is imported (idempotent).

    On AVX-512 CPUs the oneDNN bundled with MindSpore 2.10 picks a reference convolution kernel
    (~0.4 GFLOP/s, measured); capping the ISA at AVX2 gives ~100x. A value the user set wins.
    """
    env = os.environ if environ is None else environ
    if "ONEDNN_MAX_CPU_ISA" in env:
        return
    if any(flag.startswith("avx512") for flag in cpu_flags(cpuinfo)):
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        if environ is None and "mindspore" in sys.modules:
            # Too late to take effect: say so rather than silently run 100x slower.
            print(
                "deeplab-job: warning: mindspore was imported before ONEDNN_MAX_CPU_ISA was set",
                file=sys.stderr,
            )


def detect_backend() -> str:
    """The best available backend: Ascend, then GPU, then CPU (no exceptions, unlike set_device)."""
    import logging

    from mindspore import device_context
    from mindspore import log as ms_log

    # The availability probes log a warning with a library-load error for every missing backend;
    # on a CPU machine that is noise, so the MindSpore logger is quietened for the probe only
    # (``_get_logger`` is private: fall back to a logger that changes nothing).
    get_logger = getattr(ms_log, "_get_logger", None)
    ms_logger = get_logger() if get_logger else logging.getLogger("deeplab-job.unused")
    level = ms_logger.level
    ms_logger.setLevel(logging.ERROR)
    try:
        if device_context.ascend.is_available():
            return "Ascend"
        if device_context.gpu.is_available():
            return "GPU"
    finally:
        ms_logger.setLevel(level)
    return "CPU"


def select_device(target: str = "auto") -> str:
    """Resolve ``auto``, bind MindSpore to the backend (DEVICE_ID picks the card) and return its name."""
    import mindspore as ms

    resolved = detect_backend() if target == "auto" else target
    device_id = os.environ.get("DEVICE_ID")
    try:
        if resolved != "CPU" and device_id is not None:
            ms.set_device(resolved, int(device_id))
        else:
            ms.set_device(resolved)
    except RuntimeError:
        # set_device refuses once a kernel has run in this process; running on the requested
        # backend already (a second command in one process, e.g. the tests) is fine.
        if ms.get_context("device_target") != resolved:
            raise
    if resolved == "CPU":
        set_cpu_threads(ms)
    return resolved


def usable_cpus(cpu_max: str | Path = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's limit)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
    except (OSError, ValueError):
        return count
    if quota == "max":
        return count
    return max(1, min(count, int(quota) // int(period)))


def set_cpu_threads(ms) -> None:
    """One kernel thread per usable CPU: MindSpore's default ran at 0.76x of that on 2 cores
    (bench/RESULTS.md). Skipped once kernels ran (the setting is then fixed) or when unsupported."""
    with contextlib.suppress(RuntimeError, AttributeError):
        ms.device_context.cpu.op_tuning.threads_num(usable_cpus())
