"""Run every benchmark this machine can run and rewrite bench/RESULTS.md (``make bench``).

    python -m bench.run [--quick] [--only train pipeline eval operator] [--repeats 2]

Each measurement runs in its own process (bench/*.py print one RESULT line). Variants that are
compared are measured in the same run and interleaved (A B C, then C B A, ...), and the figures are
medians over the repeats, so machine noise (these machines are shared) hits every variant alike.
Raw results go to bench/results.json; RESULTS.md is the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import REPO, log, machine, median, parse_result, spread

BENCH = REPO / "bench"


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    met: str = ""
    command: str = ""


def run_script(module: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> dict:
    """One benchmark process; its RESULT line, or {"error": ...} (a failed variant must not stop the run)."""
    cmd = [sys.executable, "-m", module, *args]
    full_env = {**os.environ, **(env or {})}
    log(f"$ {' '.join(f'{k}={v}' for k, v in (env or {}).items())} {' '.join(cmd[1:])}")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by PID
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f}s"}
    result = parse_result(stdout)
    if result is None:
        tail = "\n".join(line for line in stderr.splitlines() if "WARNING" not in line)[-1500:]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return result


def command_text(module: str, args: list[str], env: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    return f"{prefix + ' ' if prefix else ''}python -m {module} {' '.join(args)}".strip()


# -- training --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    threads: str | None = None  # None: all cores


def training_variants(crop: int, avx512: bool) -> list[Variant]:
    """The job and its peer at every crop; channels_last (PyTorch's faster CPU layout) at the large crop;
    the oneDNN ISA cap at the small crop. ``ms`` runs as the job does: capped at AVX2 on AVX-512 CPUs
    (job.device), uncapped elsewhere, so the other oneDNN variant is the opposite setting."""
    variants = [
        Variant("ms", "MindSpore job (GRAPH)", ("--framework", "mindspore")),
        Variant("torch", "PyTorch eager", ("--framework", "torch")),
    ]
    if crop == max(CROPS):
        variants.append(
            Variant("torch_cl", "PyTorch eager channels_last", ("--framework", "torch", "--channels-last"))
        )
    if crop == min(CROPS):
        # The job sets no kernel thread count: MindSpore's default, whatever the core count.
        variants.append(
            Variant(
                "ms_default_threads",
                "MindSpore job, default thread count",
                ("--framework", "mindspore"),
                threads="0",
            )
        )
        other = "ALL" if avx512 else "AVX2"
        variants.append(
            Variant(
                "ms_isa",
                f"MindSpore, ONEDNN_MAX_CPU_ISA={other}",
                ("--framework", "mindspore"),
                (("ONEDNN_MAX_CPU_ISA", other),),
            )
        )
    return variants


CROPS = (257, 513)


def train_section(args: argparse.Namespace, info: dict) -> tuple[list[Row], dict]:
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    threads = str(info["cores"])
    for crop in CROPS if not args.quick else (min(CROPS),):
        steps = ["--steps", "1", "--warmup", "1"] if args.quick else ["--steps", "3", "--warmup", "2"]
        if crop > 300 and not args.quick:
            steps = ["--steps", "2", "--warmup", "2"]
        variants = training_variants(crop, info["avx512"])
        results: dict[str, list[dict]] = {v.key: [] for v in variants}
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else list(reversed(variants))
            for variant in order:
                cli = [
                    *variant.args,
                    "--crop",
                    str(crop),
                    "--batch",
                    "2",
                    "--threads",
                    variant.threads or threads,
                    *steps,
                ]
                results[variant.key].append(run_script("bench.train_speed", cli, dict(variant.env)))
        raw[str(crop)] = results
        rows += training_rows(crop, variants, results, threads, steps)
    if args.full:
        crop = min(CROPS)
        cli = ["--framework", "torch", "--compile", "--crop", str(crop), "--threads", threads, "--steps", "2"]
        result = run_script("bench.train_speed", cli, timeout=args.compile_timeout)
        raw["compile"] = result
        value = _ips(result) if "error" not in result else f"did not run: {result['error'][:160]}"
        rows.append(
            Row(
                f"train {crop}: PyTorch torch.compile img/s (1 run)",
                value,
                "",
                "",
                command_text("bench.train_speed", cli),
            )
        )
    return rows, raw


def _ips(result: dict) -> str:
    return f"{result['images_per_s']:.3f}"


def training_rows(
    crop: int, variants: list[Variant], results: dict, threads: str, steps: list[str]
) -> list[Row]:
    rows = []
    ok = {k: [r for r in v if "error" not in r] for k, v in results.items()}
    ips = {k: [r["images_per_s"] for r in v] for k, v in ok.items()}
    for variant in variants:
        cmd = command_text(
            "bench.train_speed",
            [*variant.args, "--crop", str(crop), "--threads", variant.threads or threads, *steps],
            dict(variant.env),
        )
        if not ips[variant.key]:
            error = next((r["error"] for r in results[variant.key] if "error" in r), "no result")
            rows.append(Row(f"train {crop}: {variant.label} img/s", f"failed: {error[:160]}", command=cmd))
            continue
        values = ips[variant.key]
        rss = median([r["peak_rss_mib_steps"] or r["peak_rss_mib_total"] for r in ok[variant.key]])
        rows.append(
            Row(
                f"train {crop}: {variant.label} img/s (median, runs {spread(values)})",
                f"{median(values):.3f}",
                command=cmd,
            )
        )
        rows.append(Row(f"train {crop}: {variant.label} peak RSS per step", f"{rss:.0f} MiB", command=cmd))
    if ips.get("ms") and ips.get("torch"):
        best = max(median(ips["torch"]), median(ips.get("torch_cl") or [0]))
        for label, peer in (("eager", median(ips["torch"])), ("best eager", best)):
            ratio = median(ips["ms"]) / peer
            rows.append(
                Row(
                    f"train {crop}: ratio MindSpore / PyTorch {label}",
                    f"{ratio:.2f}",
                    ">= 1.0",
                    "yes" if ratio >= 1.0 else "no",
                    "same run, interleaved",
                )
            )
    if ips.get("ms") and ips.get("ms_default_threads"):
        ratio = median(ips["ms_default_threads"]) / median(ips["ms"])
        rows.append(
            Row(
                f"train {crop}: MindSpore ratio default threads / {threads} threads",
                f"{ratio:.2f}",
                "info",
                "",
                "same run, interleaved",
            )
        )
    if ips.get("ms") and ips.get("ms_isa"):
        ratio = median(ips["ms_isa"]) / median(ips["ms"])
        other = next(v.label for v in variants if v.key == "ms_isa").split("=")[1]
        default = "AVX2 (job.device)" if other == "ALL" else "unset (no AVX-512: job.device sets nothing)"
        rows.append(
            Row(
                f"train {crop}: oneDNN ratio ISA={other} / job default {default}",
                f"{ratio:.2f}",
                "info",
                "",
                "same run, interleaved",
            )
        )
    return rows


# -- input pipeline and evaluation -------------------------------------------------------------------------
def pipeline_section(args: argparse.Namespace, info: dict) -> tuple[list[Row], dict]:
    quick = ["--quick"] if args.quick else []
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    cli = ["transform", *quick]
    result = raw["transform"] = run_script("bench.pipeline_speed", cli)
    cmd = command_text("bench.pipeline_speed", cli)
    if "error" in result:
        rows.append(Row("pipeline: per-core transform", f"failed: {result['error'][:160]}", command=cmd))
    else:
        one = result["one_worker_images_per_s"]
        rows.append(
            Row(
                f"pipeline 513 (500x375 JPEG): 1 worker on 1 core img/s (runs {spread(result['one_all'])})",
                f"{one:.1f}",
                ">= 78",
                "yes" if one >= 78 else "no",
                cmd,
            )
        )
        two = result["two_workers_images_per_s_each"]
        rows.append(
            Row(
                f"pipeline 513: 2 workers on 2 cores, img/s per worker (runs {spread(result['two_all'])})",
                f"{two:.1f}",
                ">= 78",
                "yes" if two >= 78 else "no",
                cmd,
            )
        )
    for workers in (1, 2):
        cli = ["dataset", "--workers", str(workers), *quick]
        result = raw[f"dataset{workers}"] = run_script("bench.pipeline_speed", cli)
        value = (
            f"{result['images_per_s']:.1f}" if "error" not in result else f"failed: {result['error'][:160]}"
        )
        rows.append(
            Row(
                f"pipeline 513: job's MindDataset pipeline, {workers} map thread(s), img/s",
                value,
                command=command_text("bench.pipeline_speed", cli),
            )
        )
    return rows, raw


def eval_section(args: argparse.Namespace, info: dict) -> tuple[list[Row], dict]:
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    images = ["--images", "1" if args.quick else "2"]
    cases = [
        ("network, 1 scale", ["eval", *images]),
        ("host side only (stand-in net), 1 scale", ["eval", "--host-only", "--images", "8"]),
        (
            "host side only (stand-in net), 5 scales + flip",
            ["eval", "--host-only", "--scales", "5", "--flip", "--images", "4"],
        ),
    ]
    if args.full:
        cases.insert(1, ("network, 5 scales + flip", ["eval", "--scales", "5", "--flip", "--images", "1"]))
    for label, cli in cases:
        result = raw[label] = run_script("bench.pipeline_speed", cli)
        value = (
            f"{result['images_per_s']:.3f}" if "error" not in result else f"failed: {result['error'][:160]}"
        )
        rows.append(
            Row(
                f"eval 513 (500x375): {label}, img/s",
                value,
                command=command_text("bench.pipeline_speed", cli),
            )
        )
    return rows, raw


# -- operator ------------------------------------------------------------------------------------------------
def operator_section(args: argparse.Namespace, info: dict) -> tuple[list[Row], dict]:
    cli = ["--quick"] if args.quick else []
    result = run_script("bench.operator_speed", cli, timeout=1500)
    cmd = command_text("bench.operator_speed", cli)
    rows: list[Row] = []
    if "error" in result:
        return [Row("operator", f"failed: {result['error'][:300]}", command=cmd)], result
    table = result["ranktable"]
    rows.append(
        Row(
            f"rank table {table['ranks']} ranks / {table['servers']} servers: build time",
            f"{table['build_s'] * 1000:.0f} ms",
            command=cmd,
        )
    )
    rows.append(
        Row(
            f"rank table {table['ranks']} ranks: ConfigMap data size",
            f"{table['bytes'] / 1024:.0f} KiB",
            "< 1024 KiB (ConfigMap limit)",
            "yes" if table["bytes"] < table["configmap_limit_bytes"] else "no",
            cmd,
        )
    )
    for item in result.get("attempts", []):
        n = item["workers"]
        pods_target = "<= 10 s" if n == 512 else ""
        table_target = "<= 1 s" if n == 512 else ""
        rows.append(
            Row(
                f"operator {n} workers: kubectl apply -> all pods exist",
                f"{item['pods_s']:.2f} s",
                pods_target,
                _met(item["pods_s"] <= 10) if pods_target else "",
                cmd,
            )
        )
        rows.append(
            Row(
                f"operator {n} workers: last pod IP -> complete rank table",
                f"{item['table_after_last_ip_s']:.2f} s",
                table_target,
                _met(item["table_after_last_ip_s"] <= 1) if table_target else "",
                cmd,
            )
        )
        rows.append(
            Row(
                f"operator {n} workers: API requests per stage attempt (reads / writes)",
                f"{item['reads']} / {item['writes']}",
                command=cmd,
            )
        )
    if "resync" in result:
        sync = result["resync"]
        rows.append(
            Row(
                f"operator: resync of unchanged Running trainings ({sync['resyncs']} resyncs, "
                f"{len(result.get('attempts', []))} trainings): writes (reads)",
                f"{sync['writes']} ({sync['reads']})",
                "0 writes",
                _met(sync["writes"] == 0),
                cmd,
            )
        )
    if "memory" in result:
        memory = result["memory"]
        points = ", ".join(f"{n}: {rss:.0f}" for n, rss in memory["points"])
        total = memory["points"][-1][0]
        rows.append(
            Row(
                f"operator: controller RSS (MiB) by trainings in the cluster ({points})",
                f"{memory['rss_mib_at_total']:.0f} MiB at {total}, "
                f"{memory['per_training_kib']:.1f} KiB/training",
                "< 300 MB at 1,000, linear",
                _met(memory["rss_mib_at_total"] * 1.048576 < 300 and total >= 1000),
                cmd,
            )
        )
    return rows, result


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


# -- RESULTS.md ------------------------------------------------------------------------------------------
def write_results(
    rows: list[Row], info: dict, args: argparse.Namespace, wall: float, sections: list[str]
) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python -m bench.run{' --quick' if args.quick else ''}`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {wall / 60:.1f} min; "
        f"sections: {', '.join(sections)}.",
        "",
        f"Machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB RAM, "
        f"ISA {' '.join(info['isa'])} (AVX-512: {'yes' if info['avx512'] else 'no'}), "
        f"Python {info['python']}. "
        "Shared machine: figures are medians over interleaved repeats; ratios come from the same run.",
        "",
        "| figure | value | target | met? | command |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row.figure} | {row.value} | {row.target} | {row.met} | `{row.command}` |")
    lines += ["", "Raw numbers (every run, request breakdowns): `bench/results.json`.", ""]
    (BENCH / "RESULTS.md").write_text("\n".join(lines))


SECTIONS: dict[str, Callable[[argparse.Namespace, dict], tuple[list[Row], Any]]] = {
    "train": train_section,
    "pipeline": pipeline_section,
    "eval": eval_section,
    "operator": operator_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps, sizes and repeats")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per training variant")
    parser.add_argument(
        "--full",
        action="store_true",
        help="also torch.compile (crop 257) and 5-scale + flip evaluation with the network (+10 min)",
    )
    parser.add_argument("--compile-timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    info = machine()
    started = time.perf_counter()
    rows: list[Row] = []
    raw: dict[str, Any] = {"machine": info, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name in args.only:
        section_rows, raw[name] = SECTIONS[name](args, info)
        rows += section_rows
        log(f"section {name} done at {(time.perf_counter() - started) / 60:.1f} min")
    wall = time.perf_counter() - started
    raw["wall_s"] = wall
    (BENCH / "results.json").write_text(json.dumps(raw, indent=1))
    write_results(rows, info, args, wall, args.only)
    print((BENCH / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
