"""One training-speed measurement in a fresh process: images/s per step and peak RSS.

    python -m bench.train_speed --framework mindspore --crop 257 [--steps 3 --warmup 2 --threads 2]
    python -m bench.train_speed --framework torch --crop 513 [--compile] [--channels-last]
    python -m bench.train_speed --framework mindspore --crop 513 --recompute   # the job's --recompute

MindSpore runs the job's own cells (``job.train.build_network``, ``NetWithLoss``, ``TrainStep``,
``nn.Momentum`` with the per-step LR tensor) in GRAPH mode; PyTorch runs ``bench.torch_deeplab``
(the same architecture) with SGD momentum. Both see the same random batch, the same thread count
and the same loss (mean cross-entropy over pixels, 255 ignored). Warm-up steps (the first one
compiles) are excluded; peak RSS is reset after warm-up so it is the steady per-step peak.
One variant per process: ``bench.run`` alternates processes so that machine noise hits all
variants alike.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from bench.common import emit, log, median, peak_rss_mib, prepare_mindspore, reset_peak_rss

NUM_CLASSES = 21


def batch(crop: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A normalised-looking image batch and labels with ~5 % ignored pixels."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((size, 3, crop, crop), dtype=np.float32)
    label = rng.integers(0, NUM_CLASSES, (size, crop, crop), dtype=np.int32)
    label[rng.random(label.shape) < 0.05] = 255
    return data, label


def candidate_loss(kind: str, ignore_label: int):
    """Experimental replacements for job.losses.SoftmaxCrossEntropy (same value), for the profiling study.

    oneDNN runs MindSpore's log_softmax over axis 1 of NCHW logits with its reference kernel (a strided
    softmax); ``nhwc`` moves the class axis last first, ``logsumexp`` avoids the softmax primitive.
    """
    import mindspore as ms
    from mindspore import nn, ops

    class Loss(nn.Cell):
        def construct(self, logits, labels):
            logits = logits.astype(ms.float32)
            valid = labels != ignore_label
            safe = ops.where(valid, labels, ops.zeros_like(labels)).astype(ms.int32)
            if kind == "nhwc":
                log_probs = ops.log_softmax(logits.transpose(0, 2, 3, 1), axis=-1)
                picked = ops.gather_elements(log_probs, 3, safe.expand_dims(3)).squeeze(3)
            else:
                log_probs = logits - ops.logsumexp(logits, axis=1, keep_dims=True)
                picked = ops.gather_elements(log_probs, 1, safe.expand_dims(1)).squeeze(1)
            mask = valid.astype(ms.float32)
            return -(picked * mask).sum() / ops.maximum(mask.sum(), ops.ones((), ms.float32))

    return Loss()


def mindspore_step(args: argparse.Namespace) -> tuple[Callable[[], float], dict]:
    """The job's training step, built exactly as job.train.fit builds it (CPU, one rank)."""
    prepare_mindspore()
    import mindspore as ms
    from mindspore import nn

    from job import recipe
    from job.config import TrainConfig
    from job.losses import SoftmaxCrossEntropy
    from job.train import NetWithLoss, TrainStep, build_network

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    if args.threads > 0:  # 0: MindSpore's default, as the job runs today (it sets no thread count)
        ms.device_context.cpu.op_tuning.threads_num(args.threads)
    ms.set_seed(1)
    config = TrainConfig(
        data_file="unused",
        train_dir="unused",
        batch_size=args.batch,
        crop_size=args.crop,
        device_target="CPU",
        recompute=args.recompute,
    )
    net = build_network(config, "CPU")
    lrs = np.full(args.warmup + args.steps + 10, 1e-3, dtype=np.float32)
    optimizer = nn.Momentum(net.trainable_params(), ms.Tensor(lrs), recipe.MOMENTUM, recipe.WEIGHT_DECAY)
    loss = (
        SoftmaxCrossEntropy(config.ignore_label)
        if args.loss == "job"
        else candidate_loss(args.loss, config.ignore_label)
    )
    step = TrainStep(NetWithLoss(net, loss), optimizer, config.loss_scale, 1)
    step.set_train(True)
    data, label = batch(args.crop, args.batch)
    data_t, label_t = ms.Tensor(data), ms.Tensor(label)
    params = sum(int(np.prod(p.shape)) for p in net.trainable_params())

    def run() -> float:
        return float(step(data_t, label_t).asnumpy())  # asnumpy waits for the step to finish

    info = {"params": params, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}
    return run, info


def torch_step(args: argparse.Namespace) -> tuple[Callable[[], float], dict]:
    """The peer: eager (optionally channels_last) or torch.compile (inductor, CPU)."""
    import torch
    import torch.nn.functional as F

    from bench.torch_deeplab import DeepLabV3, parameter_count

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = DeepLabV3(NUM_CLASSES).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    data, label = batch(args.crop, args.batch)
    data_t, label_t = torch.from_numpy(data), torch.from_numpy(label).long()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        data_t = data_t.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile else model

    def run() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(data_t), label_t, ignore_index=255)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    return run, {"params": parameter_count(model), "torch": torch.__version__}


def measure(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    run, info = mindspore_step(args) if args.framework == "mindspore" else torch_step(args)
    warm = []
    for _ in range(args.warmup):
        begin = time.perf_counter()
        loss = run()
        warm.append(time.perf_counter() - begin)
        log(f"{args.framework} crop {args.crop}: warm-up step {warm[-1]:.1f}s loss {loss:.3f}")
    total_peak = peak_rss_mib()
    reset = reset_peak_rss()
    times = []
    for _ in range(args.steps):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    ips = [args.batch / t for t in times]
    log(f"{args.framework} crop {args.crop}: {[round(v, 3) for v in ips]} img/s")
    return {
        **info,
        "framework": args.framework,
        "loss": getattr(args, "loss", "job"),
        "compile": args.compile,
        "channels_last": args.channels_last,
        "recompute": args.recompute,
        "crop": args.crop,
        "batch": args.batch,
        "threads": args.threads,
        "images_per_s": median(ips),
        "images_per_s_all": ips,
        "first_step_s": warm[0] if warm else None,
        "setup_s": time.perf_counter() - started - sum(times),
        "peak_rss_mib_steps": peak_rss_mib() if reset else None,
        "peak_rss_mib_total": max(total_peak, peak_rss_mib()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=["mindspore", "torch"], required=True)
    parser.add_argument("--crop", type=int, default=257)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compile", action="store_true", help="torch.compile (inductor)")
    parser.add_argument("--channels-last", action="store_true", help="torch: NHWC memory format")
    parser.add_argument(
        "--loss", choices=["job", "nhwc", "logsumexp"], default="job", help="MindSpore: experimental loss"
    )
    parser.add_argument(
        "--recompute", action="store_true", help="MindSpore: the job's --recompute (ResNet blocks recomputed)"
    )
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 1 timed step")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 1, 1
    emit(measure(args))


if __name__ == "__main__":
    main()
