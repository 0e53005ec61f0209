"""``deeplab-job export``: a checkpoint -> a MINDIR, AIR or ONNX file for inference outside this job.

The network is the one the checkpoint records (as ``eval`` builds it), in inference mode (BatchNorm
moving statistics, no dropout), with a fixed input shape (N, 3, H, W) float32: the image in BGR order,
normalised with ``recipe.IMAGE_MEAN_BGR``/``IMAGE_STD_BGR``, exactly what ``eval`` feeds. ``--output``
puts the last step into the graph, so an inference runtime need not: logits (N, C, H, W), their softmax
over classes, or the argmax class index (N, H, W) int32.

What MindSpore 2.10 can write for this network, measured on CPU: MINDIR anywhere; AIR only on an Ascend
backend (MindSpore refuses it elsewhere, so this says so before loading anything); ONNX not at all, as
its ONNX exporter has no bilinear resize and no padded max-pool, so the attempt ends in one line quoting
MindSpore's reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from job import checkpoints, device, recipe
from job.config import ExportConfig
from job.errors import BadInput
from job.model import settings_from_checkpoint
from job.progress import dumps

EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


# -- decisions (pure) -----------------------------------------------------------------------------


def input_shape(batch_size: int, input_size: list[int]) -> tuple[int, int, int, int]:
    """(N, 3, H, W): one value of ``--input_size`` is a square side, two are height and width."""
    height, width = (input_size[0], input_size[0]) if len(input_size) == 1 else input_size[:2]
    return (batch_size, 3, height, width)


def output_shape(shape: tuple[int, int, int, int], num_classes: int, output: str) -> tuple[int, ...]:
    """The exported graph's output shape: (N, C, H, W) for logits and softmax, (N, H, W) for argmax."""
    batch, _, height, width = shape
    return (batch, height, width) if output == "argmax" else (batch, num_classes, height, width)


def output_prefix(config: ExportConfig) -> str:
    """``--output_file``, else the checkpoint's path without ``.ckpt`` (final.ckpt -> final.mindir)."""
    if config.output_file:
        return config.output_file
    path = Path(config.ckpt_path)
    return str(path.with_suffix("") if path.suffix == ".ckpt" else path)


def exported_path(prefix: str, file_format: str) -> Path:
    """Where ``mindspore.export`` writes: it appends the format's extension unless the name has it."""
    extension = EXTENSIONS[file_format]
    return Path(prefix if prefix.endswith(extension) else prefix + extension)


def check_backend(file_format: str, backend: str) -> None:
    """AIR is built by Ascend's graph engine: refuse it on another backend before any work is done."""
    if file_format == "AIR" and backend != "Ascend":
        raise BadInput(
            f"--file_format AIR needs an Ascend device (MindSpore builds AIR with Ascend's graph engine) "
            f"and this process runs on {backend}: export MINDIR here (MindSpore Lite converts it), or AIR on "
            "Ascend"
        )


# -- the graph ------------------------------------------------------------------------------------


class Softmax(nn.Cell):
    """The network's class probabilities (softmax over the class axis)."""

    def __init__(self, net: nn.Cell):
        super().__init__()
        self.net = net

    def construct(self, x):
        return ops.softmax(self.net(x), axis=1)


class Argmax(nn.Cell):
    """The network's class index per pixel, int32 (N, H, W)."""

    def __init__(self, net: nn.Cell):
        super().__init__()
        self.net = net
        self.argmax = ops.Argmax(axis=1, output_type=ms.int32)

    def construct(self, x):
        return self.argmax(self.net(x))


def with_output(net: nn.Cell, output: str) -> nn.Cell:
    """``net`` (logits) wrapped so the graph ends in ``output``; in inference mode."""
    cell = {"logits": lambda n: n, "softmax": Softmax, "argmax": Argmax}[output](net)
    cell.set_train(False)
    return cell


# -- the command ----------------------------------------------------------------------------------


def run(config: ExportConfig) -> int:
    """Build the recorded network, load every weight, write the file; one JSON line on stdout."""
    check_backend(config.file_format, device.select_device(config.device_target))
    ms.set_context(mode=ms.GRAPH_MODE)
    settings = settings_from_checkpoint(checkpoints.read_meta(config.ckpt_path), config, config.ckpt_path)
    net = settings.build()
    checkpoints.load_strict(net, config.ckpt_path)
    shape = input_shape(config.batch_size, config.input_size)
    prefix = output_prefix(config)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    export(with_output(net, config.output), shape, prefix, config.file_format, config.output)
    path = exported_path(prefix, config.file_format)
    if not path.is_file():
        raise RuntimeError(f"mindspore.export reported success but {path} does not exist")
    print(f"deeplab-job: exported {path}", file=sys.stderr, flush=True)
    network = {"model": settings.model, "num_classes": settings.num_classes}
    network |= {"aspp_rates": list(settings.aspp_rates), "align_corners": settings.align_corners}
    event = {"event": "export", "checkpoint": config.ckpt_path, "file": str(path)}
    event |= {"format": config.file_format, "input_shape": list(shape), "output": config.output}
    event["output_shape"] = list(output_shape(shape, settings.num_classes, config.output))
    print(dumps({**event, "network": network}), flush=True)
    return recipe.EXIT_OK


def export(cell: nn.Cell, shape: tuple[int, ...], prefix: str, file_format: str, output: str) -> None:
    """Write the file from a zero input of ``shape``; the ONNX exporter's refusal is BadInput (one line).

    ONNX goes through ``mindspore.onnx.export`` (``mindspore.export``'s ONNX path is deprecated in 2.10
    and calls the same exporter), which also names the graph's input and output.
    """
    sample = ms.Tensor(np.zeros(shape, dtype=np.float32))
    if file_format != "ONNX":
        ms.export(cell, sample, file_name=prefix, file_format=file_format)
        return
    try:
        ms.onnx.export(cell, sample, file_name=prefix, input_names=["image"], output_names=[output])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".")
        raise BadInput(
            f"ONNX export of this network fails in MindSpore {ms.__version__}: {reason}; "
            "use --file_format MINDIR (MindSpore Lite runs it)"
        ) from exc
