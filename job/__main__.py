"""``deeplab-job``: train, eval, predict, export, plot, build-data, prepare-voc, demo, convert-torch, launch.

Order matters here: ``device.prepare_environment()`` runs before any module that imports MindSpore
is imported (they are imported inside the command functions), and configuration is validated
before that, so a bad flag fails fast with exit code 2 without loading MindSpore.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from job import device, recipe
from job.config import (
    BuildDataConfig,
    DemoConfig,
    EvalConfig,
    ExportConfig,
    PlotConfig,
    PredictConfig,
    PrepareVocConfig,
    TrainConfig,
    add_model_arguments,
    build,
)
from job.errors import BadInput

PROG = "deeplab-job"


def _train(config: TrainConfig) -> int:
    from job import train

    try:
        train.run(config)
    except train.Interrupted as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return recipe.EXIT_INTERRUPTED
    return recipe.EXIT_OK


def _eval(config: EvalConfig) -> int:
    import mindspore as ms

    from job import checkpoints, distributed
    from job.evaluate import evaluate
    from job.model import settings_from_checkpoint
    from job.progress import dumps

    device.select_device(config.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    group = distributed.init(config.is_distributed)
    # The checkpoint's record decides the network (rates and alignment change results, not shapes).
    settings = settings_from_checkpoint(checkpoints.read_meta(config.ckpt_path), config, config.ckpt_path)
    net = settings.build()
    checkpoints.load_strict(net, config.ckpt_path)
    net.set_train(False)
    metrics = evaluate(
        net,
        data_root=config.data_root,
        data_lst=config.data_lst,
        num_classes=settings.num_classes,
        ignore_label=config.ignore_label,
        crop_size=config.crop_size,
        scales=list(config.scales),
        flip=config.flip,
        batch_size=config.batch_size,
        save_predictions=config.save_predictions,
        group=group,
    )
    if not group.is_main:
        return recipe.EXIT_OK  # every rank has the summed metrics; rank 0 reports them
    network = {"model": settings.model, "aspp_rates": list(settings.aspp_rates)}
    network["align_corners"] = settings.align_corners  # what was built: the record, else the flags
    text = dumps({"event": "eval", "checkpoint": config.ckpt_path, "network": network, **metrics})
    if config.output_json:
        from pathlib import Path

        Path(config.output_json).write_text(text + "\n")
    print(text, flush=True)
    return recipe.EXIT_OK


def _build_data(config: BuildDataConfig) -> int:
    from job.data.convert import convert_list

    shards = convert_list(
        config.data_root,
        config.data_lst,
        config.dst_path,
        config.num_shards,
        config.shuffle,
        num_classes=config.num_classes or None,
        ignore_label=config.ignore_label,
        val_lst=config.val_lst,
    )
    print(json.dumps({"event": "build-data", "shards": shards}), flush=True)
    return recipe.EXIT_OK


def _prepare_voc(config: PrepareVocConfig) -> int:
    from job.data.voc import prepare

    report = prepare(config.voc, config.sbd, config.output_dir)
    event = {"event": "prepare-voc", "output_dir": config.output_dir, "lists": report.lists}
    print(json.dumps({**event, "written": report.written, "unchanged": report.unchanged}), flush=True)
    return recipe.EXIT_OK


def _predict(config: PredictConfig) -> int:
    from job import predict

    return predict.run(config)


def _export(config: ExportConfig) -> int:
    from job import export

    return export.run(config)


def _plot(config: PlotConfig) -> int:
    from job import plot

    return plot.run(config)


def _demo(config: DemoConfig) -> int:
    from job import demo

    demo.run(config)
    return recipe.EXIT_OK


@dataclass(frozen=True)
class Command:
    model: type | None  # the pydantic settings model; None for commands with their own flags
    run: Callable[[Any], int]
    help: str


COMMANDS: dict[str, Command] = {
    "train": Command(TrainConfig, _train, "train DeepLabV3 (resumes from train_dir's newest checkpoint)"),
    "eval": Command(EvalConfig, _eval, "evaluate a checkpoint (mIoU; multi-scale, flip)"),
    "build-data": Command(BuildDataConfig, _build_data, "convert an image/label list to sharded MindRecord"),
    "prepare-voc": Command(
        PrepareVocConfig, _prepare_voc, "VOC 2012 + SBD (folders or archives) -> images, index labels, lists"
    ),
    "predict": Command(PredictConfig, _predict, "segment your own images: colour masks and overlays"),
    "export": Command(ExportConfig, _export, "checkpoint -> MINDIR / AIR / ONNX file for inference"),
    "plot": Command(PlotConfig, _plot, "training curves (loss, LR, images/s) of train dirs -> PNG"),
    "demo": Command(DemoConfig, _demo, "synthetic data -> train on CPU -> evaluate, in minutes"),
}
LAUNCH_HELP = "worker entrypoint: rank table or MS_* variables -> environment -> exec a command (job.launch)"


def _convert_torch_parser(sub) -> None:
    parser = sub.add_parser("convert-torch", help="torchvision ResNet-101 state_dict -> MindSpore checkpoint")
    parser.add_argument("source", help="torchvision resnet101 state_dict file (torch.save)")
    parser.add_argument("destination", help="MindSpore checkpoint to write")
    parser.add_argument(
        "--keep_rgb",
        action="store_true",
        help="keep conv1's input channels in torchvision's RGB order (default: reversed, BGR pipeline)",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="DeepLabV3 (MindSpore) training job")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.help)
        child.add_argument("--config", metavar="FILE", help="YAML file with the same keys; flags override it")
        add_model_arguments(child, command.model)
    _convert_torch_parser(sub)
    sub.add_parser("launch", help=LAUNCH_HELP, add_help=False)  # listed here, parsed by job.launch
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    if args.command == "convert-torch":
        from job.convert_torch import convert_file

        convert_file(args.source, args.destination, keep_rgb=args.keep_rgb)
        return recipe.EXIT_OK
    command = COMMANDS[args.command]
    config = build(command.model, values, args.config)  # validated before MindSpore loads
    return command.run(config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 bad input, 143 SIGTERM)."""
    device.prepare_environment()  # first: nothing below may have loaded MindSpore yet
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:
        from job import launch

        return launch.main(argv[1:])
    args = make_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BadInput as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return recipe.EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return recipe.EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
