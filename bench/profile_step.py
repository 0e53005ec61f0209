"""Where a training step's time goes: oneDNN primitive times (ONEDNN_VERBOSE=profile_exec) by kind.

    python -m bench.profile_step --framework mindspore --crop 257 [--threads 2]
    python -m bench.profile_step --framework torch --crop 257 [--channels-last]

Re-runs ``bench.train_speed``'s step in a child with oneDNN's execution profile on, keeps the lines of
the timed steps only (between markers), and sums time per (primitive kind, implementation, pass).
What oneDNN does not run (MindSpore's own CPU kernels, PyTorch's native ops) is the step time minus
the oneDNN total. Used to explain the MindSpore / PyTorch ratio; not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import defaultdict

from bench.common import REPO

BEGIN, END = "BENCH-STEP-BEGIN", "BENCH-STEP-END"


def child(args: argparse.Namespace) -> None:
    """In the profiled process: warm up, then print markers around the timed steps."""
    import time

    from bench import train_speed

    ns = argparse.Namespace(
        framework=args.framework, crop=args.crop, batch=2, threads=args.threads, compile=False,
        channels_last=args.channels_last, steps=args.steps, warmup=args.warmup, loss=args.loss,
    )  # fmt: skip
    run, _ = train_speed.mindspore_step(ns) if args.framework == "mindspore" else train_speed.torch_step(ns)
    for _ in range(args.warmup):
        run()
    print(BEGIN, flush=True)
    start = time.perf_counter()
    for _ in range(args.steps):
        run()
    print(f"{END} {(time.perf_counter() - start) / args.steps * 1000:.1f}", flush=True)


def summarise(stdout: str, steps: int) -> tuple[float, dict[str, float]]:
    inside, step_ms, totals = False, 0.0, defaultdict(float)
    for line in stdout.splitlines():
        if line.startswith(BEGIN):
            inside = True
        elif line.startswith(END):
            step_ms, inside = float(line.split()[1]), False
        elif inside and ",exec," in line:
            fields = line.split(",")
            at = fields.index("exec")
            kind, impl, prop = fields[at + 2], fields[at + 3], fields[at + 4]
            try:
                totals[f"{kind} {prop} [{impl}]"] += float(fields[-1]) / steps
            except ValueError:
                continue
    return step_ms, dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=["mindspore", "torch"], required=True)
    parser.add_argument("--crop", type=int, default=257)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--loss", choices=["job", "nhwc", "logsumexp"], default="job")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cmd = [sys.executable, "-m", "bench.profile_step", "--child", *sys.argv[1:]]
    env = {**os.environ, "ONEDNN_VERBOSE": "profile_exec", "DNNL_VERBOSE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    step_ms, totals = summarise(proc.stdout, args.steps)
    if not step_ms:
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(1)
    onednn = sum(totals.values())
    other = step_ms - onednn
    print(
        f"{args.framework} {args.crop}: step {step_ms:.0f} ms, oneDNN {onednn:.0f} ms, other {other:.0f} ms"
    )
    for key, value in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {value:9.1f} ms  {key}")


if __name__ == "__main__":
    main()
