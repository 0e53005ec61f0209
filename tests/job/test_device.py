"""CPU settings applied before MindSpore loads (oneDNN ISA cap on AVX-512 CPUs)."""

from __future__ import annotations

from pathlib import Path

from job import device

AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


def test_caps_isa_on_avx512(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX512)
    env: dict[str, str] = {}
    device.prepare_environment(env, cpuinfo)
    assert env == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_leaves_avx2_cpus_and_user_choice_alone(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX2)
    env: dict[str, str] = {}
    device.prepare_environment(env, cpuinfo)
    assert env == {}
    cpuinfo.write_text(AVX512)
    env = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    device.prepare_environment(env, cpuinfo)
    assert env == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}


def test_unreadable_cpuinfo_changes_nothing(tmp_path: Path):
    env: dict[str, str] = {}
    device.prepare_environment(env, tmp_path / "absent")
    assert env == {}


def test_usable_cpus_honours_a_cgroup_quota(tmp_path):
    import os

    from job.device import usable_cpus

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 4) * 100000} 100000\n")  # a quota above the affinity
    assert usable_cpus(cpu_max) == affinity
    assert usable_cpus(tmp_path / "missing") == affinity
