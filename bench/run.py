"""Run every benchmark this machine can run and write bench/RESULTS.md (``make bench``).

    python -m bench.run [--quick] [--repeats 2] [--note TEXT]
        [--only train pipeline eval memory operator scheduling]

Each measurement runs in its own process (bench/*.py print one RESULT line). Variants that are
compared are measured in the same run and interleaved (A B C, then C B A, ...), and the figures are
medians over the repeats, so machine noise (these machines are shared) hits every variant alike.
Raw results go to bench/results.json; RESULTS.md is the table. ``--only`` re-runs some sections and
keeps the others' rows and raw results (each section records its own date and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
        rows += training_rows(crop, variants, results, threads, steps, isa_name(info))
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


def isa_name(info: dict) -> str:
    """The CPU's vector ISA as ratio rows name it: MindSpore's oneDNN is capped at AVX2 on AVX-512 CPUs
    (FACTS section 3) while PyTorch uses AVX-512, so a MindSpore/PyTorch ratio depends on it."""
    if info.get("avx512"):
        return "AVX-512"
    return "AVX2 only" if "avx2" in info.get("isa", []) else "no AVX2"


def training_rows(
    crop: int, variants: list[Variant], results: dict, threads: str, steps: list[str], isa: str = ""
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
                    f"train {crop}: ratio MindSpore / PyTorch {label} ({isa})",
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
                f"train {crop}: MindSpore ratio default threads / {threads} threads ({isa})",
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
                f"train {crop}: oneDNN ratio ISA={other} / job default {default} ({isa})",
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


EVAL_HOST_TARGET = 10.0  # img/s on one core at 5 scales + flip (issue #11): the host is not the bottleneck


def eval_section(args: argparse.Namespace, info: dict) -> tuple[list[Row], dict]:
    """Evaluation img/s with the network time and the host time per image reported apart.

    "network" is the time in the compiled graph (network, softmax, flip-back: device work on an NPU),
    "host" everything else (decode, resize in, crop, resize back, argmax, scoring). The stand-in net
    (zero logits) runs pinned to one core: its host figure is "what one host core sustains".
    """
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    images = ["--images", "1" if args.quick else "2"]
    cases = [
        ("network, 1 scale", ["eval", *images]),
        ("stand-in net on 1 core, 1 scale", ["eval", "--host-only", "--one-core", "--images", "8"]),
        (
            "stand-in net on 1 core, 5 scales + flip",
            ["eval", "--host-only", "--one-core", "--scales", "5", "--flip", "--images", "4"],
        ),
    ]
    if args.full:
        cases.insert(1, ("network, 5 scales + flip", ["eval", "--scales", "5", "--flip", "--images", "1"]))
    for label, cli in cases:
        result = raw[label] = run_script("bench.pipeline_speed", cli)
        cmd = command_text("bench.pipeline_speed", cli)
        if "error" in result:
            rows.append(Row(f"eval 513 (500x375): {label}", f"failed: {result['error'][:160]}", command=cmd))
            continue
        rows.append(Row(f"eval 513 (500x375): {label}, img/s", f"{result['images_per_s']:.3f}", command=cmd))
        network, host = result["network_s_per_image"], result["host_s_per_image"]
        host_cpu = result["host_cpu_s_per_image"]
        rows.append(
            Row(
                f"eval 513 (500x375): {label}, per image: network (graph) / host wall / host CPU",
                f"{network * 1000:.0f} ms / {host * 1000:.0f} ms / {host_cpu * 1000:.0f} ms",
                command=cmd,
            )
        )
        if result["host_only"]:
            host_rate = result["host_cpu_images_per_s"]
            target = f">= {EVAL_HOST_TARGET:g}" if result["scales"] == 5 else ""
            rows.append(
                Row(
                    f"eval 513 (500x375): {label}: host side img/s per core (CPU time; wall: "
                    f"{result['host_images_per_s']:.1f})",
                    f"{host_rate:.1f}",
                    target,
                    _met(host_rate >= EVAL_HOST_TARGET) if target else "",
                    cmd,
                )
            )
    return rows, raw


# -- training memory: --recompute ---------------------------------------------------------------------------
ASCEND_HBM_GIB = 32.0  # Ascend 910 (32 GB HBM)
ASCEND_USABLE_GIB = 30.0  # minus what the runtime and HCCL reserve (estimate)


def memory_section(args: argparse.Namespace, info: dict) -> tuple[list[Row], dict]:
    """Peak RSS and img/s of the job's training step with and without --recompute, at batch 1 and 2,
    interleaved; the per-image slope gives an estimate of the batch that fits an Ascend 910."""
    crop = 129 if args.quick else 513
    threads = str(info["cores"])
    raw: dict[str, Any] = {"crop": crop}
    variants = [(batch, recompute) for batch in (1, 2) for recompute in (False, True)]
    results: dict[tuple[int, bool], dict] = {}
    for batch, recompute in variants:
        cli = ["--framework", "mindspore", "--crop", str(crop), "--batch", str(batch), "--threads", threads]
        cli += ["--steps", "1", "--warmup", "1", *(["--recompute"] if recompute else [])]
        results[(batch, recompute)] = run_script("bench.train_speed", cli, timeout=1500)
        raw[f"batch{batch}{'_recompute' if recompute else ''}"] = results[(batch, recompute)]
    return memory_rows(crop, results, threads), raw


def ascend_batch(fixed_mib: float, per_image_mib: float) -> int:
    """Images that fit next to the fixed part (an upper bound for it: the CPU runtime is in it too)."""
    return max(0, int((ASCEND_USABLE_GIB * 1024 - fixed_mib) // per_image_mib)) if per_image_mib > 0 else 0


def memory_rows(crop: int, results: dict[tuple[int, bool], dict], threads: str) -> list[Row]:
    rows: list[Row] = []
    peaks: dict[tuple[int, bool], float] = {}
    for (batch, recompute), result in results.items():
        label = f"memory {crop}: MindSpore batch {batch}{', --recompute' if recompute else ''}"
        cli = ["--framework", "mindspore", "--crop", str(crop), "--batch", str(batch), "--threads", threads]
        cmd = command_text("bench.train_speed", [*cli, *(["--recompute"] if recompute else [])])
        if "error" in result:
            rows.append(Row(label, f"failed: {result['error'][:160]}", command=cmd))
            continue
        peak = peaks[(batch, recompute)] = result["peak_rss_mib_steps"] or result["peak_rss_mib_total"]
        value = f"{result['images_per_s']:.3f}, {peak:.0f} MiB"
        rows.append(Row(f"{label}: img/s, peak RSS", value, command=cmd))
    for recompute in (False, True):
        if (1, recompute) not in peaks or (2, recompute) not in peaks:
            continue
        per_image = peaks[(2, recompute)] - peaks[(1, recompute)]
        fixed = peaks[(1, recompute)] - per_image
        fits, fits_fp16 = (ascend_batch(fixed, per_image / share) for share in (1, 2))
        name = "with --recompute" if recompute else "without --recompute"
        rows.append(
            Row(
                f"memory {crop}: {name}: RSS per extra image (fp32, CPU) / fixed part",
                f"{per_image:.0f} MiB / {fixed:.0f} MiB",
                "info",
                "",
                "batch 2 - batch 1, same run",
            )
        )
        rows.append(
            Row(
                f"memory {crop}: {name}: per-device batch fitting a {ASCEND_HBM_GIB:.0f} GB Ascend 910 "
                f"(estimate, {ASCEND_USABLE_GIB:.0f} GiB usable): fp32 activations as on CPU / "
                "O2 (fp16, half per image)",
                f"{fits} / {fits_fp16}",
                "estimate",
                "",
                "from the two rows above",
            )
        )
    return rows


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


# -- scheduling at Atlas scale (issue 13) ------------------------------------------------------------------
SCHED_TABLE_TARGET_S = 30.0  # apply -> completed rank table for 1,024 workers with the real scheduler
SCHED_RSS_TARGET_MB = 300.0
PHASE_NAMES = {"created": "pods created", "bound": "bound", "allocated": "chips annotated",
               "running": "Running", "table": "table"}  # fmt: skip


def scheduling_section(args: argparse.Namespace, info: dict) -> tuple[list[Row], dict]:
    """kube-scheduler + kwok Atlas nodes + the simulated device plugin (bench/scheduling_scale.py): one
    training on every NPU, then many small ones at once."""
    cli = ["--nodes", "16", "--workers", "128", "--small", "10"] if args.quick else []
    result = run_script("bench.scheduling_scale", cli, timeout=2400)
    cmd = command_text("bench.scheduling_scale", cli)
    if "error" in result:
        return [Row("scheduling", f"failed: {result['error'][:300]}", command=cmd)], result
    rows: list[Row] = []
    if "large" in result:
        rows += scheduling_rows(
            f"scheduling {result['nodes']} nodes x 8 NPUs, one training of {result['large']['workers']} "
            "workers",
            result["large"],
            cmd,
            table_target=True,
        )
    if "small" in result:
        small = result["small"]
        label = (
            f"scheduling {result['nodes']} nodes x 8 NPUs, {small['trainings']} trainings x "
            f"{small['workers_each']} workers applied at once"
        )
        rows += scheduling_rows(label, small, cmd, table_target=False)
    return rows, result


def scheduling_rows(label: str, scene: dict, cmd: str, table_target: bool) -> list[Row]:
    """apply -> tables (target only for the large training), where the time went, RSS, table, requests."""
    total = scene["apply_to_all_tables_s"]
    value = f"{total:.1f} s"
    if scene["trainings"] > 1:
        value += f" (per training: median {scene['table_s_median']:.1f} s, max {scene['table_s_max']:.1f} s)"
    phases = scene["phases"]
    where = ", ".join(
        f"{text} {phases[key]['first_s']:.1f}-{phases[key]['last_s']:.1f} s"
        if key != "table"  # its first write is the "initializing" placeholder
        else f"{text} {phases[key]['last_s']:.1f} s"
        for key, text in PHASE_NAMES.items()
        if key in phases
    )
    rss = scene["controller_peak_rss_mib"]
    return [
        Row(f"{label}: kubectl apply -> every rank table complete", value,
            f"<= {SCHED_TABLE_TARGET_S:g} s" if table_target else "info",
            _met(total <= SCHED_TABLE_TARGET_S) if table_target else "", cmd),
        Row(f"{label}: where the time goes (first-last write of each phase after apply; audit log)", where,
            "info", "", cmd),
        Row(f"{label}: controller peak RSS", f"{rss:.0f} MiB", f"< {SCHED_RSS_TARGET_MB:g} MB",
            _met(rss * 1.048576 < SCHED_RSS_TARGET_MB), cmd),
        Row(f"{label}: rank table size (one training: {scene['table_servers']} server(s))",
            f"{scene['table_bytes'] / 1024:.0f} KiB", "< 1 MiB", _met(scene["table_bytes"] < 2**20), cmd),
        Row(f"{label}: controller API requests (reads / writes)",
            f"{scene['controller_reads']} / {scene['controller_writes']}", "info", "", cmd),
    ]  # fmt: skip


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


# -- RESULTS.md ------------------------------------------------------------------------------------------
ROW_PREFIXES = {  # which section an existing RESULTS.md row belongs to (results.json before rows were kept)
    "train": ("train ",),
    "pipeline": ("pipeline ",),
    "eval": ("eval ",),
    "memory": ("memory ",),
    "operator": ("rank table", "operator"),
    "scheduling": ("scheduling ",),
}


def section_of(figure: str) -> str | None:
    return next((name for name, prefixes in ROW_PREFIXES.items() if figure.startswith(prefixes)), None)


def parse_table(markdown: str) -> list[Row]:
    """The rows of a RESULTS.md table (figure, value, target, met?, `command`)."""
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if not line.startswith("| ") or len(cells) != 5 or cells[0] in ("figure", "---"):
            continue
        rows.append(Row(cells[0], cells[1], cells[2], cells[3], cells[4].strip("`")))
    return rows


ISA_SUFFIXES = ("(AVX-512)", "(AVX2 only)", "(no AVX2)")


def with_isa(row: Row, info: dict) -> Row:
    """A ratio row measured before ratio rows named the ISA gets its run's ISA appended."""
    if "ratio" in row.figure and not row.figure.endswith(ISA_SUFFIXES):
        return Row(f"{row.figure} ({isa_name(info)})", row.value, row.target, row.met, row.command)
    return row


def merge(previous: dict, previous_md: str, current: dict[str, dict]) -> dict:
    """results.json with the sections just run (``current``: name -> {"raw", "rows", "run"}) replacing
    theirs and every other section kept as it was, with its own date and machine (``bench.run --only``).

    A results.json written before rows were stored gets its rows from the old RESULTS.md instead.
    """
    old_rows = previous.get("rows")
    if old_rows is None:
        old_rows = {}
        for row in parse_table(previous_md):
            if (name := section_of(row.figure)) is not None:
                old_rows.setdefault(name, []).append(asdict(row))
    old_runs = previous.get("runs") or {}
    merged: dict[str, Any] = {"rows": {}, "runs": {}}
    for name in SECTIONS:
        if name in current:
            merged[name] = current[name]["raw"]
            merged["rows"][name] = [asdict(row) for row in current[name]["rows"]]
            merged["runs"][name] = current[name]["run"]
        elif name in previous:
            run = dict(
                old_runs.get(name) or {"date": previous.get("date"), "machine": previous.get("machine", {})}
            )
            run["date"] = _date(run["date"])
            merged[name] = previous[name]
            rows = [with_isa(Row(**row), run["machine"]) for row in old_rows.get(name, [])]
            merged["rows"][name] = [asdict(row) for row in rows]
            merged["runs"][name] = run
    return merged


def _date(iso: str | None) -> str:
    """An ISO date (results.json's old top-level one) as the table shows dates: 2026-11-26 16:08 UTC."""
    return f"{iso[:10]} {iso[11:16]} UTC" if iso and len(iso) >= 16 else str(iso)


def write_results(merged: dict) -> None:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run`); `bench.run --only SECTION` re-runs one section and "
        "keeps the others. Shared machines: figures are medians over interleaved repeats; ratios come from "
        "the same run. Each section's run:",
        "",
    ]
    for name, run in merged["runs"].items():
        info = run["machine"]
        lines.append(
            f"- {name}: {run['date']}{' (--quick)' if run.get('quick') else ''}"
            + (f", wall time {run['wall_s'] / 60:.1f} min" if run.get("wall_s") else "")
            + f"; {info.get('cores')} cores, {info.get('cpu')}, {info.get('memory_gib')} GiB RAM, "
            f"ISA {' '.join(info.get('isa', []))} ({isa_name(info)}), Python {info.get('python')}"
            + (f"; {run['note']}" if run.get("note") else "")
        )
    lines += ["", "| figure | value | target | met? | command |", "|---|---|---|---|---|"]
    for rows in merged["rows"].values():
        for row in map(lambda item: Row(**item), rows):
            lines.append(f"| {row.figure} | {row.value} | {row.target} | {row.met} | `{row.command}` |")
    lines += ["", "Raw numbers (every run, request breakdowns): `bench/results.json`.", ""]
    (BENCH / "RESULTS.md").write_text("\n".join(lines))


SECTIONS: dict[str, Callable[[argparse.Namespace, dict], tuple[list[Row], Any]]] = {
    "train": train_section,
    "pipeline": pipeline_section,
    "eval": eval_section,
    "memory": memory_section,
    "operator": operator_section,
    "scheduling": scheduling_section,
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
    parser.add_argument("--note", default="", help="a remark shown with these sections' run (e.g. the load)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    info = machine()
    results, markdown = BENCH / "results.json", BENCH / "RESULTS.md"
    started = time.perf_counter()
    current: dict[str, dict] = {}
    for name in args.only:
        begin = time.perf_counter()
        section_rows, raw = SECTIONS[name](args, info)
        run = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info}
        run.update(wall_s=time.perf_counter() - begin, quick=args.quick, note=args.note)
        current[name] = {"raw": raw, "rows": section_rows, "run": run}
        log(f"section {name} done at {(time.perf_counter() - started) / 60:.1f} min")
    # Read only now: a run of another section that ended meanwhile keeps its rows.
    previous = json.loads(results.read_text()) if results.is_file() else {}
    previous_md = markdown.read_text() if markdown.is_file() else ""
    merged = merge(previous, previous_md, current)
    results.write_text(json.dumps(merged, indent=1))
    write_results(merged)
    print(markdown.read_text())


if __name__ == "__main__":
    main()
