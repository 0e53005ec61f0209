"""Input pipeline and evaluation throughput on VOC-sized (500x375) JPEGs.

    python -m bench.pipeline_speed transform [--quick]      # per-core augment_sample, 1 and 2 processes
    python -m bench.pipeline_speed dataset --workers 2      # MindDataset -> map -> batch, as training uses it
    python -m bench.pipeline_speed eval [--scales 5 --flip] [--host-only --one-core]  # job.evaluate

``transform`` times the job's per-sample training transform (decode JPEG + PNG, scale/crop/flip
warp, normalise, pad) in processes pinned to one core each, so the figure is "images/s one core
sustains"; two processes on two cores show whether it scales. ``dataset`` runs the job's real
``train_dataset`` (MindRecord reader, map threads, batching) for the end-to-end figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import emit, log, median, prepare_mindspore

DATA_DIR = Path(os.environ.get("DEEPLAB_BENCH_DATA", Path.home() / ".cache/deeplab-operator/bench-data"))
VOC_SHAPE = (375, 500)  # (h, w): the typical PASCAL VOC image
CROP = 513


def voc_like(count: int = 64) -> tuple[Path, Path]:
    """``count`` 500x375 JPEG (q90) + PNG label pairs and their list file; generated once, then reused."""
    from job.data.synthetic import class_styles, render

    root = DATA_DIR / f"voc{count}"
    listing = root / "train.txt"
    if listing.is_file():
        return root, listing
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    styles, lines = class_styles(21), []
    for index in range(count):
        image, label = render(VOC_SHAPE, styles, np.random.default_rng([7, index]))
        stem = f"{index:05d}"
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(root / "labels" / f"{stem}.png"), label)
        lines.append(f"images/{stem}.jpg labels/{stem}.png\n")
    tmp = listing.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(listing)
    return root, listing


def encoded_samples(root: Path, listing: Path) -> list[tuple[bytes, bytes]]:
    samples = []
    for line in listing.read_text().splitlines():
        image, label = line.split()
        samples.append(((root / image).read_bytes(), (root / label).read_bytes()))
    return samples


# -- per-core transform ------------------------------------------------------------------------------
def _transform_worker(core: int, seconds: float, queue: mp.Queue) -> None:
    """Pinned to one core, OpenCV single-threaded: how many samples per second this core makes."""
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    from job import recipe
    from job.data.pipeline import augment_sample

    samples = encoded_samples(*voc_like())
    rng = np.random.default_rng(core)
    params = {
        "crop_size": CROP,
        "min_scale": recipe.MIN_SCALE,
        "max_scale": recipe.MAX_SCALE,
        "ignore_label": recipe.IGNORE_LABEL,
    }
    for image, label in samples[:8]:  # warm-up: page in code and buffers
        augment_sample(image, label, rng, **params)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        image, label = samples[count % len(samples)]
        augment_sample(image, label, rng, **params)
        count += 1
    queue.put(count / (time.perf_counter() - start))


def transform_rates(processes: int, seconds: float) -> list[float]:
    """images/s of each of ``processes`` concurrent workers, worker i pinned to core i."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    cores = sorted(os.sched_getaffinity(0))
    workers = [
        ctx.Process(target=_transform_worker, args=(cores[i % len(cores)], seconds, queue))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        rates = [queue.get(timeout=seconds + 120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
    return rates


def transform(args: argparse.Namespace) -> dict:
    voc_like()  # generate before forking
    one, two = [], []
    for repeat in range(args.repeats):  # alternate 1 and 2 processes: noise hits both alike
        one.append(transform_rates(1, args.seconds)[0])
        pair = transform_rates(2, args.seconds)
        two.append(sum(pair) / len(pair))
        log(f"transform repeat {repeat}: 1 proc {one[-1]:.1f} img/s, 2 procs {two[-1]:.1f} img/s each")
    return {
        "one_worker_images_per_s": median(one),
        "two_workers_images_per_s_each": median(two),
        "one_all": one,
        "two_all": two,
        "crop": CROP,
        "image": f"{VOC_SHAPE[1]}x{VOC_SHAPE[0]}",
    }


# -- the job's MindSpore dataset ------------------------------------------------------------------------
def dataset(args: argparse.Namespace) -> dict:
    """The real training input: MindRecord -> map (threads) -> batch, iterated like the training loop."""
    prepare_mindspore()
    from job import recipe
    from job.data.convert import convert_list
    from job.data.pipeline import train_dataset

    root, listing = voc_like()
    record = DATA_DIR / "voc64.mindrecord"
    if not record.is_file():
        convert_list(str(root), str(listing), str(record), 1, False)
    data = train_dataset(
        str(record),
        batch_size=args.batch,
        crop_size=CROP,
        min_scale=recipe.MIN_SCALE,
        max_scale=recipe.MAX_SCALE,
        ignore_label=recipe.IGNORE_LABEL,
        num_parallel_workers=args.workers,
        seed=1,
    )
    iterator = data.create_tuple_iterator(num_epochs=args.epochs + 1, output_numpy=True)
    for _ in iterator:  # warm-up epoch: pipeline start-up is not throughput
        pass
    count, start = 0, time.perf_counter()
    for _ in range(args.epochs):  # a tuple iterator ends at each epoch's end
        for _ in iterator:
            count += args.batch
    elapsed = time.perf_counter() - start
    rate = count / elapsed
    log(f"dataset workers={args.workers}: {rate:.1f} img/s over {count} images")
    return {"workers": args.workers, "batch": args.batch, "images_per_s": rate, "images": count}


# -- evaluation -----------------------------------------------------------------------------------------
def stand_in_net(num_classes: int):
    """A stand-in network (zero logits at the input size, nearly free): isolates evaluation's own work."""
    from mindspore import nn, ops

    class Instant(nn.Cell):
        def construct(self, x):
            n, _, h, w = x.shape
            return ops.zeros((n, num_classes, h, w), x.dtype)

    return Instant()


def evaluation(args: argparse.Namespace) -> dict:
    """job.evaluate over VOC-sized images: the first image compiles every canvas size, then timed.

    ``network`` is the time in the compiled graph (the network, softmax and flip-back; with the
    stand-in net mostly softmax, which a device runs), ``host`` the rest per image (decode, resize in,
    crop, resize back, argmax, scoring), as wall time and as CPU time (what one core sustains, also
    on a loaded machine). ``--one-core`` pins the process and every thread pool to one core.
    """
    if args.one_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        args.threads = 1
    cv2.setNumThreads(1 if args.one_core else 0)
    prepare_mindspore()
    import mindspore as ms

    from job import recipe
    from job.evaluate import evaluate
    from job.model import deeplabv3

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    root, listing = voc_like()
    scales = list(recipe.EVAL_SCALES) if args.scales == 5 else [1.0]
    net = stand_in_net(21) if args.host_only else deeplabv3("deeplab_v3_s16", 21)
    lines = listing.read_text().splitlines()
    warm, timed = DATA_DIR / "eval-warm.txt", DATA_DIR / f"eval-{args.images}.txt"
    warm.write_text("\n".join(f"{root}/{line.split()[0]} {root}/{line.split()[1]}" for line in lines[:1]))
    timed.write_text(
        "\n".join(f"{root}/{line.split()[0]} {root}/{line.split()[1]}" for line in lines[1 : 1 + args.images])
    )
    common = {"num_classes": 21, "ignore_label": 255, "crop_size": CROP, "scales": scales, "flip": args.flip}
    begin = time.perf_counter()
    evaluate(net, data_root="/", data_lst=str(warm), **common)
    compile_s = time.perf_counter() - begin
    begin = time.perf_counter()
    result = evaluate(net, data_root="/", data_lst=str(timed), **common)
    elapsed = time.perf_counter() - begin
    images = result["images"]
    network, host = result["seconds"]["network"] / images, result["seconds"]["host"] / images
    host_cpu = result["seconds"]["host_cpu"] / images
    rate = images / elapsed
    what = "host-only" if args.host_only else "network"
    log(
        f"eval {what} scales={len(scales)} flip={args.flip}: {rate:.3f} img/s; per image network "
        f"{network * 1000:.0f} ms, host {host * 1000:.0f} ms ({host_cpu * 1000:.0f} ms CPU) "
        f"(warm-up {compile_s:.1f}s)"
    )
    return {
        "scales": len(scales),
        "flip": args.flip,
        "host_only": args.host_only,
        "one_core": args.one_core,
        "images": images,
        "images_per_s": rate,
        "network_s_per_image": network,
        "host_s_per_image": host,
        "host_cpu_s_per_image": host_cpu,
        "host_images_per_s": 1 / host if host > 0 else float("inf"),
        "host_cpu_images_per_s": 1 / host_cpu if host_cpu > 0 else float("inf"),
        "first_image_s": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["transform", "dataset", "eval"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--scales", type=int, choices=[1, 5], default=1)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--host-only", action="store_true", help="eval with a stand-in network")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--one-core", action="store_true", help="eval: pin to one core, one thread")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.epochs, args.images = 2.0, 1, 1, 1
    handlers = {"transform": transform, "dataset": dataset, "eval": evaluation}
    emit(handlers[args.what](args))


if __name__ == "__main__":
    main()
