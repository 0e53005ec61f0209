"""Settings of the job's commands: one pydantic model per command, the one source of truth.

The argparse parsers are generated from these models (flag names, defaults and help come from
the fields), so the recipe's original command lines work unchanged and a value is checked in one
place. Every flag reaches pydantic as text and pydantic converts it, so a bad value on the command
line or in the ``--config`` YAML file gives the same one-line error naming the key. Importing this
module must stay cheap: it never imports MindSpore (configuration is validated before the heavy
imports).
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from job import recipe
from job.errors import BadInput

ModelName = Literal["deeplab_v3_s16", "deeplab_v3_s8"]
DeviceTarget = Literal["auto", "Ascend", "GPU", "CPU"]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Base(BaseModel):
    """Unknown keys are errors (a typo in a YAML file must not be ignored); assignment is checked too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class _NetConfig(_Base):
    """Fields shared by the commands that build the network."""

    model: ModelName = Field("deeplab_v3_s16", description="network: output stride 16 or 8")
    num_classes: PositiveInt = Field(recipe.NUM_CLASSES, description="number of classes")
    ignore_label: int = Field(
        recipe.IGNORE_LABEL, ge=0, le=255, description="label value ignored in loss/mIoU"
    )
    crop_size: PositiveInt = Field(
        recipe.CROP_SIZE, description="training crop / evaluation pad size (pixels)"
    )
    batch_size: PositiveInt = Field(32, description="images per device per step")
    aspp_rates: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        recipe.ASPP_RATES,
        description="ASPP atrous rates (3 ints), the model zoo's at both strides; the paper's OS8: 12 24 36",
    )
    align_corners: bool = Field(
        recipe.ALIGN_CORNERS, description="final bilinear upsampling of the logits aligns corners (the zoo's)"
    )
    device_target: DeviceTarget = Field("auto", description="backend; auto = Ascend, then GPU, then CPU")


class TrainConfig(_NetConfig):
    """``deeplab-job train``: the recipe's training flags plus resume, progress and after-training eval."""

    data_file: str = Field(description="MindRecord file (first shard) made by build-data")
    train_dir: str = Field(description="directory for checkpoints, final.ckpt and result.json")
    train_epochs: PositiveInt = Field(300, description="epochs to train")
    base_lr: PositiveFloat = Field(0.015, description="base learning rate")
    lr_type: Literal["cos", "poly", "exp"] = Field("cos", description="learning-rate schedule (per step)")
    end_lr: float = Field(0.0, ge=0, description="final learning rate of the poly schedule")
    lr_decay_step: PositiveInt = Field(40000, description="exp schedule: steps per decay")
    lr_decay_rate: PositiveFloat = Field(0.1, description="exp schedule: factor per decay")
    min_scale: PositiveFloat = Field(recipe.MIN_SCALE, description="smallest random scale")
    max_scale: PositiveFloat = Field(recipe.MAX_SCALE, description="largest random scale")
    ckpt_pre_trained: str | None = Field(
        None,
        description="checkpoint to start from, naming detected: ImageNet ResNet-101 (model zoo's, or "
        "torchvision's through convert-torch), a model zoo DeepLabV3 or this project's",
    )
    allow_partial: bool = Field(
        False, description="train even if ckpt_pre_trained lacks backbone tensors (they stay at random init)"
    )
    filter_weight: bool = Field(
        False, description="drop ckpt_pre_trained's classifier (model zoo flag; for another num_classes)"
    )
    save_steps: PositiveInt = Field(1500, description="save a checkpoint every N steps")
    keep_checkpoint_max: PositiveInt = Field(5, description="step checkpoints kept in train_dir")
    loss_scale: PositiveFloat = Field(recipe.LOSS_SCALE, description="fixed loss scale")
    aspp_dropout: float = Field(
        recipe.ASPP_DROPOUT, ge=0, lt=1, description="drop probability after the ASPP projection (training)"
    )
    is_distributed: bool = Field(False, description="data-parallel over all ranks (HCCL or dynamic cluster)")
    freeze_bn: bool = Field(False, description="BN uses and keeps its moving statistics (small batches)")
    recompute: bool = Field(
        False, description="recompute ResNet blocks' activations in backward: less memory, more compute"
    )
    max_steps: int = Field(0, ge=0, description="stop after this global step (0 = no limit; smoke runs)")
    log_steps: PositiveInt = Field(10, description="one JSON progress line every N steps")
    result_file: str | None = Field(
        None, description="result JSON; default /dev/termination-log if it exists, else train_dir/result.json"
    )
    seed: int = Field(1, description="random seed (the same on every rank: identical initial weights)")
    num_parallel_workers: PositiveInt = Field(2, description="data pipeline workers")
    eval_data_root: str | None = Field(None, description="after training: evaluate on this data root")
    eval_data_lst: str | None = Field(None, description="after training: evaluation list file")
    eval_scales: list[PositiveFloat] = Field([1.0], description="after-training eval scales (repeatable)")
    eval_flip: bool = Field(False, description="after-training eval adds horizontal flips")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale}) is larger than max_scale ({self.max_scale})")
        if (self.eval_data_root is None) != (self.eval_data_lst is None):
            raise ValueError("eval_data_root and eval_data_lst must be given together")
        return self


class EvalConfig(_NetConfig):
    """``deeplab-job eval``: the recipe's evaluation flags plus JSON output and prediction images."""

    batch_size: PositiveInt = Field(1, description="images per evaluation batch")
    data_root: str = Field(description="root the list file's paths are relative to")
    data_lst: str = Field(description="list file: one 'image label' pair per line")
    scales: list[PositiveFloat] = Field([1.0], description="evaluation scales (repeatable)")
    flip: bool = Field(False, description="add horizontally flipped predictions")
    freeze_bn: bool = Field(
        True, description="accepted for compatibility: evaluation always uses BN moving statistics"
    )
    ckpt_path: str = Field(
        description="checkpoint to evaluate, this project's or a model zoo DeepLabV3 (naming detected; "
        "every parameter needed)"
    )
    output_json: str | None = Field(None, description="also write the metrics JSON here")
    save_predictions: str | None = Field(None, description="write colour prediction PNGs to this directory")
    is_distributed: bool = Field(
        False, description="every rank scores a shard of the list; confusion matrices summed, rank 0 reports"
    )


class PredictConfig(_NetConfig):
    """``deeplab-job predict``: segment one's own images (no labels) with eval's multi-scale/flip protocol."""

    batch_size: PositiveInt = Field(1, description="images per network call")
    ckpt_path: str = Field(
        description="checkpoint to predict with (its recorded network settings are used; naming detected)"
    )
    input: list[str] = Field(
        min_length=1, description="JPEG/PNG files, folders (their images) or globs (** recurses); repeatable"
    )
    output: str = Field(description="directory for <stem>_mask.png, <stem>_overlay.<ext>, <stem>_index.png")
    scales: list[PositiveFloat] = Field([1.0], min_length=1, description="evaluation scales (repeatable)")
    flip: bool = Field(False, description="add horizontally flipped predictions")
    palette: str | None = Field(
        None, description="class colours: one 'r g b' line per class, or a JSON list (default: VOC's)"
    )
    class_names: str | None = Field(
        None, description="class names: one per line, or a JSON list (default: VOC's for 21 classes)"
    )
    save_index: bool = Field(False, description="also write <stem>_index.png, the class ids as gray levels")
    overlay_alpha: float = Field(0.5, ge=0, le=1, description="weight of the mask's colours in the overlay")
    overlay_format: Literal["jpg", "png"] = Field("jpg", description="overlay file type")


class ExportConfig(_Base):
    """``deeplab-job export``: checkpoint -> MINDIR / AIR / ONNX file for inference, network from its record.

    The network fields only matter for a checkpoint that does not record its network (a model zoo
    one); for this project's checkpoints the record wins and a contradicting flag is exit 2.
    """

    ckpt_path: str = Field(description="checkpoint to export, this project's or a model zoo DeepLabV3")
    file_format: Literal["MINDIR", "AIR", "ONNX"] = Field(
        "MINDIR", description="MINDIR (any device; MindSpore Lite converts it), AIR (needs Ascend), ONNX"
    )
    input_size: list[PositiveInt] = Field(
        [recipe.CROP_SIZE],
        min_length=1,
        max_length=2,
        description="input side, or height and width (pixels; the graph's fixed shape)",
    )
    batch_size: PositiveInt = Field(1, description="images per call of the exported graph (fixed)")
    output: Literal["logits", "softmax", "argmax"] = Field(
        "logits", description="graph output: logits, softmax over classes (N, C, H, W), or argmax (N, H, W)"
    )
    output_file: str | None = Field(
        None, description="path prefix, the format's extension appended; unset: ckpt_path minus .ckpt"
    )
    model: ModelName = Field("deeplab_v3_s16", description="network, if the checkpoint does not record it")
    num_classes: PositiveInt = Field(recipe.NUM_CLASSES, description="classes, if not recorded")
    aspp_rates: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        recipe.ASPP_RATES, description="ASPP atrous rates, if not recorded"
    )
    align_corners: bool = Field(
        recipe.ALIGN_CORNERS, description="logits' upsampling aligns corners, if not recorded"
    )
    device_target: DeviceTarget = Field("auto", description="backend; auto = Ascend, then GPU, then CPU")

    @field_validator("device_target")
    @classmethod
    def _air_needs_ascend(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("file_format") == "AIR" and value in ("CPU", "GPU"):
            raise ValueError("file_format AIR needs an Ascend device")
        return value


class BuildDataConfig(_Base):
    """``deeplab-job build-data``: list file of image/label pairs -> sharded MindRecord."""

    data_root: str = Field(description="root the list file's paths are relative to")
    data_lst: str = Field(description="list file: one 'image label' pair per line")
    dst_path: str = Field(description="output MindRecord path (shards get a numeric suffix)")
    num_shards: PositiveInt = Field(8, description="number of MindRecord shards")
    shuffle: bool = Field(True, description="shuffle the pairs before writing")
    num_classes: NonNegativeInt = Field(
        recipe.NUM_CLASSES, description="labels must be below this (or the ignore label); 0 skips the check"
    )
    ignore_label: int = Field(
        recipe.IGNORE_LABEL, ge=0, le=255, description="label value allowed besides classes"
    )
    val_lst: str | None = Field(
        None, description="validation list (same data_root): any image also in data_lst is an error"
    )


class PrepareVocConfig(_Base):
    """``deeplab-job prepare-voc``: VOC 2012 (+ SBD) as downloaded -> JPEGImages, index labels, list files."""

    voc: str = Field(description="VOCtrainval_11-May-2012.tar, or the VOCdevkit or VOC2012 folder")
    sbd: str | None = Field(
        None, description="benchmark.tgz or the benchmark_RELEASE folder; needed for vocaug_train_lst.txt"
    )
    output_dir: str = Field(description="where JPEGImages/, SegmentationClassGray/ and the lists go")


class DemoConfig(_Base):
    """``deeplab-job demo``: synthetic data -> MindRecord -> real training on CPU -> evaluation."""

    output_dir: str = Field("./demo-output", description="where data, checkpoints and predictions go")
    size: PositiveInt = Field(96, description="synthetic image size and training crop (pixels)")
    num_classes: PositiveInt = Field(4, description="classes of the synthetic set (incl. background)")
    num_train: PositiveInt = Field(128, description="synthetic training images")
    num_val: PositiveInt = Field(32, description="synthetic validation images")
    train_epochs: PositiveInt = Field(7, description="training epochs")
    batch_size: PositiveInt = Field(8, description="images per step")
    base_lr: PositiveFloat = Field(0.03, description="base learning rate")
    device_target: DeviceTarget = Field("CPU", description="backend (the demo is sized for CPU)")
    seed: int = Field(0, description="seed of the synthetic set and the initial weights")

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        if value < 33:
            raise ValueError("must be at least 33 (the network downsamples 16x)")
        return value


class PlotConfig(_Base):
    """``deeplab-job plot``: progress.jsonl of one or more train dirs (a recipe's stages) -> a PNG."""

    train_dirs: list[str] = Field(
        min_length=1,
        description="train dirs with progress.jsonl, in stage order (several chain as one recipe's stages)",
        json_schema_extra={"positional": True, "metavar": "TRAIN_DIR"},
    )
    output: str = Field("curves.png", description="PNG to write", json_schema_extra={"short": "-o"})
    smoothing: float = Field(0.9, ge=0, lt=1, description="EMA weight of the smoothed loss (0 = raw)")


# -- flags generated from the models ----------------------------------------------------------


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _is_tuple(annotation: Any) -> bool:
    return typing.get_origin(annotation) is tuple


def _strip_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (the flag takes X; None is only ever the default)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One ``--<field>`` per field. Values stay text (pydantic converts them); absent flags stay absent.

    Booleans are real booleans: ``--flag`` alone means true and ``--flag false`` works (argparse's
    ``type=bool`` would turn "False" into True). Lists are repeatable (``--scales 0.5 --scales 1``)
    and also take several values (``--scales 0.5 1``). Tuples take their fixed number of values.
    A list field with ``json_schema_extra={"positional": True}`` is taken from the positional
    arguments instead (``plot DIR DIR``); ``{"short": "-o"}`` adds a short flag.
    """
    for name, field in model.model_fields.items():
        annotation = _strip_optional(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = field.description or ""
        help_text += " (required)" if field.is_required() else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if _is_bool(annotation):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif _is_list(annotation):
            kwargs.update(nargs="+", action="extend", metavar=name.upper())
        elif _is_tuple(annotation):
            kwargs.update(nargs=len(typing.get_args(annotation)), metavar=name.upper())
        elif (choices := _literal_choices(annotation)) is not None:
            # Shown, not enforced by argparse: pydantic gives the uniform one-line error.
            kwargs.update(metavar="{" + ",".join(str(choice) for choice in choices) + "}")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("positional"):
            parser.add_argument(
                name, nargs="*", default=argparse.SUPPRESS, metavar=extra.get("metavar"), help=help_text
            )
            continue
        parser.add_argument(f"--{name}", *([extra["short"]] if "short" in extra else []), **kwargs)


def _format_error(error: ValidationError) -> str:
    """The first problem as one line: ``key: message (got value)``."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    suffix = "" if first["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
    more = len(error.errors()) - 1
    return f"{key}: {message}{suffix}" + (f" [and {more} more]" if more else "")


def load_yaml(path: str) -> dict[str, Any]:
    """The ``--config`` file as a mapping; a missing or malformed file is bad input."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"{path}: cannot read config file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the config file must be a mapping of flag names to values")
    return {str(key).lstrip("-"): value for key, value in data.items()}


def build(model: type[_Base], values: dict[str, Any], config_file: str | None = None) -> Any:
    """Validate flags (``values``) over the YAML file's values: flags win. Raises BadInput."""
    merged = load_yaml(config_file) if config_file else {}
    merged.update(values)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        where = f"{config_file}: " if config_file and not set(values) >= _error_keys(exc) else ""
        raise BadInput(where + _format_error(exc)) from exc


def _error_keys(error: ValidationError) -> set[str]:
    return {str(item["loc"][0]) for item in error.errors() if item["loc"]}
