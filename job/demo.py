"""``deeplab-job demo``: the whole job on a synthetic set, on CPU, in minutes.

Every stage is the real code path: ``job.data.synthetic`` writes a VOC 2012 devkit (JPEGs, palette
PNGs, split files), ``prepare-voc``'s code turns it into index labels and list files, ``convert_list``
builds MindRecord (checking the training list shares no image with the validation list),
``job.train`` trains the real ResNet-101 DeepLabV3 (GRAPH mode, checkpoints, progress lines), and
``job.evaluate`` loads ``final.ckpt`` strictly and computes mIoU,
writing colour prediction images. Only the sizes are small.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from job.config import DemoConfig, TrainConfig
from job.errors import BadInput


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def train_config(config: DemoConfig, data_file: str, train_dir: Path) -> TrainConfig:
    """The demo's training settings: the recipe's flags at a small size (cos LR, momentum, loss scale)."""
    return TrainConfig(
        data_file=data_file,
        train_dir=str(train_dir),
        train_epochs=config.train_epochs,
        batch_size=config.batch_size,
        crop_size=config.size,
        base_lr=config.base_lr,
        num_classes=config.num_classes,
        min_scale=0.75,
        max_scale=1.5,
        model="deeplab_v3_s16",
        device_target=config.device_target,
        save_steps=10**6,
        keep_checkpoint_max=1,
        log_steps=5,
        seed=config.seed,
        # One pipeline worker: with two, augmentation order varies run to run and so does the mIoU.
        num_parallel_workers=1,
        result_file=str(train_dir / "result.json"),
    )


MARKER = ".deeplab-demo"


def _clear(out: Path) -> None:
    """A fresh run each time (resume would skip training), but only ever delete a demo's own output."""
    if out.exists():
        if not (out / MARKER).exists():
            raise BadInput(f"--output_dir {out} exists and is not a demo output; choose another directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).touch()


def run(config: DemoConfig) -> dict[str, Any]:
    """Generate, convert, train, evaluate; prints a summary and returns it."""
    started = time.monotonic()
    out = Path(config.output_dir).resolve()
    _clear(out)
    data_root, train_dir, predictions = out / "data", out / "train", out / "predictions"

    from job.data.convert import convert_list
    from job.data.synthetic import generate_voc
    from job.data.voc import VOC_TRAIN_LST, VOC_VAL_LST, prepare

    _say(f"writing {config.num_train}+{config.num_val} synthetic images ({config.size}px) in VOC's layout")
    voc = generate_voc(
        str(out / "download"),
        num_train=config.num_train,
        num_val=config.num_val,
        size=config.size,
        num_classes=config.num_classes,
        seed=config.seed,
    )
    prepare(voc, None, str(data_root))  # as for the real VOC: palette PNGs -> index PNGs + list files
    train_lst, val_lst = str(data_root / VOC_TRAIN_LST), str(data_root / VOC_VAL_LST)
    shards = convert_list(
        str(data_root), train_lst, str(out / "mindrecord" / "train.mindrecord"), 1, True, val_lst=val_lst
    )
    _say(f"MindRecord: {shards[0]}")

    from job import train

    settings = train_config(config, shards[0], train_dir)
    _say(
        f"training {settings.model} (ResNet-101) for {settings.train_epochs} epochs "
        f"on {settings.device_target}"
    )
    trained = time.monotonic()
    result = train.run(settings)
    train_seconds = time.monotonic() - trained

    metrics = _evaluate(config, settings, result["checkpoint"], str(data_root), val_lst, str(predictions))
    curves = _curves(train_dir, out / "curves.png", metrics["miou"])
    summary = {
        "event": "demo",
        "miou": metrics["miou"],
        "iou": metrics["iou"],
        "checkpoint": result["checkpoint"],
        "predictions": str(predictions),
        "curves": str(curves),
        "train_loss": result["loss"],
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    _say(
        f"mIoU {metrics['miou']:.3f} on {metrics['images']} validation images "
        f"(per class: {', '.join('-' if v is None else f'{v:.2f}' for v in metrics['iou'])})"
    )
    _say(f"checkpoint: {result['checkpoint']}")
    _say(f"predictions: {predictions}")
    _say(f"training curves: {curves}")
    _say(f"done in {summary['total_seconds']:.0f} s (training {summary['train_seconds']:.0f} s)")
    from job.progress import dumps

    print(dumps(summary), flush=True)
    return summary


def _curves(train_dir: Path, output: Path, miou: float) -> Path:
    """``deeplab-job plot`` on the demo's train dir; the mIoU is the demo's own evaluation (the training
    ran without one, so its result record has none)."""
    from dataclasses import replace

    from job import plot

    stage = replace(plot.read_stage(str(train_dir)), result={"miou": miou})
    plot.save([stage], str(output), smoothing=0.6)  # ~20 points: the default 0.9 would lag behind
    return output


def _evaluate(
    config: DemoConfig, settings: TrainConfig, checkpoint: str, root: str, lst: str, predictions: str
):
    """As ``deeplab-job eval`` does it: a fresh network, strict load of final.ckpt, evaluate."""
    from job import checkpoints
    from job.evaluate import evaluate
    from job.model import deeplabv3

    net = deeplabv3(settings.model, settings.num_classes)
    checkpoints.load_strict(net, checkpoint)
    net.set_train(False)
    return evaluate(
        net,
        data_root=root,
        data_lst=lst,
        num_classes=settings.num_classes,
        ignore_label=settings.ignore_label,
        crop_size=settings.crop_size,
        scales=[1.0],
        flip=False,
        save_predictions=predictions,
    )
