"""``deeplab-job plot``: training curves from ``progress.jsonl`` (written by ``train``) to a PNG.

Several train dirs chain as the stages of one recipe (each stage counts its steps from 0): the steps of
each following stage are offset by the last step of the ones before. Within a stage, a record from a new
process (``run``/``attempt``) or a step going back is a restart: it starts a new line segment (so a
resumed run that repeats steps does not draw a zigzag) and gets a marker. ``curves`` computes all of
that without matplotlib; ``draw`` only draws it (Agg backend: no display needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.config import PlotConfig
from job.errors import BadInput
from job.progress import PROGRESS_LOG

FIGURE_INCHES, DPI = (12.0, 9.0), 100  # 1200 x 900 px


@dataclass(frozen=True)
class StageLog:
    """One train dir's records (file order) and its result.json, if any."""

    name: str
    records: list[dict[str, Any]]
    result: dict[str, Any] | None = None


@dataclass
class Segment:
    """The progress records of one process within one stage: drawn as one line. Steps are global."""

    stage: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    name: str
    first_step: int  # global step where the stage starts (the offset of its own steps)
    last_step: int  # global step of its last record
    restarts: int
    miou: float | None


@dataclass(frozen=True)
class Curves:
    segments: list[Segment]
    stages: list[Stage]
    restarts: list[int]  # global steps where a restarted process resumed


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): the first value is kept as is,
    not pulled towards 0 as a plain EMA started at 0 would."""
    state, out = (0.0, 0.0), []
    for value in values:
        state, smoothed = _ema_step(state, value, weight)
        out.append(smoothed)
    return out


def _ema_step(state: tuple[float, float], value: float, weight: float) -> tuple[tuple[float, float], float]:
    """(biased average, total weight) -> the next state and the debiased value."""
    average, norm = weight * state[0] + (1 - weight) * value, weight * state[1] + (1 - weight)
    return (average, norm), (average / norm if norm > 0 else value)


def _process(record: dict[str, Any]) -> tuple[Any, Any]:
    return record.get("attempt"), record.get("run")


def curves(stages: Sequence[StageLog], smoothing: float = 0.9) -> Curves:
    """The plotted series: global steps (stage offsets), segments split at restarts, EMA of the loss
    (reset per stage: a stage's loss starts at its own level), restart positions, mIoU per stage."""
    segments: list[Segment] = []
    summaries: list[Stage] = []
    restarts: list[int] = []
    offset = 0
    for index, stage in enumerate(stages):
        stage_segments, stage_restarts, last = _stage_series(index, stage.records, offset, smoothing)
        segments += [segment for segment in stage_segments if segment.steps]
        restarts += stage_restarts
        summaries.append(Stage(stage.name, offset, last, len(stage_restarts), _miou(stage)))
        offset = last
    return Curves(segments, summaries, restarts)


def _stage_series(
    index: int, records: list[dict[str, Any]], offset: int, smoothing: float
) -> tuple[list[Segment], list[int], int]:
    """One stage's segments, its restart steps and its last global step."""
    segments: list[Segment] = []
    restarts: list[int] = []
    process, previous, last = None, offset, offset
    state = (0.0, 0.0)  # the EMA continues across the stage's restarts
    for record in records:
        step = offset + int(record.get("step", 0))
        if not segments or _process(record) != process or step < previous:
            if segments:  # a start record gives the resume step; otherwise the first record does
                restarts.append(step)
            segments.append(Segment(index))
            process = _process(record)
        previous, last = step, max(last, step)
        if record.get("event") != "progress" or not _finite(record.get("loss")):
            continue
        current = segments[-1]
        current.steps.append(step)
        current.loss.append(float(record["loss"]))
        current.lr.append(float(record.get("lr") or 0.0))
        current.images_per_second.append(float(record.get("images_per_second") or 0.0))
        state, smoothed = _ema_step(state, current.loss[-1], smoothing)
        current.smoothed.append(smoothed)
    return segments, restarts, last


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _miou(stage: StageLog) -> float | None:
    """The stage's mIoU: its newest result record with one, else result.json's."""
    for record in reversed(stage.records):
        if record.get("event") == "result" and _finite(record.get("miou")):
            return float(record["miou"])
    if stage.result and _finite(stage.result.get("miou")):
        return float(stage.result["miou"])
    return None


# -- I/O -----------------------------------------------------------------------------------------


def read_stage(train_dir: str) -> StageLog:
    """progress.jsonl (a line cut short by a crash is skipped) and result.json; BadInput naming the
    dir if there is no record."""
    path = Path(train_dir) / PROGRESS_LOG
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise BadInput(f"{train_dir}: no {PROGRESS_LOG} (an older train dir has none)") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror}") from exc
    records = [record for record in map(_parse, lines) if record is not None]
    if not records:
        raise BadInput(f"{train_dir}: {PROGRESS_LOG} has no records")
    result = _parse_file(Path(train_dir) / "result.json")
    return StageLog(Path(train_dir).name or train_dir, records, result)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def _parse_file(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


# -- drawing -------------------------------------------------------------------------------------


def draw(data: Curves, output: str) -> None:
    """Loss (raw and smoothed), learning rate and images/s against the global step; dashed lines at
    stage boundaries, red dotted lines at restarts. One colour per stage."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state (Agg)
    from matplotlib.lines import Line2D

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    loss_ax, lr_ax, speed_ax = figure.subplots(3, 1, sharex=True, height_ratios=[2, 1, 1])
    for segment in data.segments:
        colour = f"C{segment.stage % 10}"
        loss_ax.plot(segment.steps, segment.loss, color=colour, alpha=0.35, linewidth=1)
        loss_ax.plot(segment.steps, segment.smoothed, color=colour, linewidth=2)
        lr_ax.plot(segment.steps, segment.lr, color=colour, linewidth=1.5)
        speed_ax.plot(segment.steps, segment.images_per_second, color=colour, linewidth=1, marker=".")
    for ax in (loss_ax, lr_ax, speed_ax):
        for stage in data.stages[1:]:
            ax.axvline(stage.first_step, color="0.25", linestyle="--", linewidth=1.2)
        for step in data.restarts:
            ax.axvline(step, color="red", linestyle=":", linewidth=1.2)
        ax.grid(alpha=0.3)
    for index, stage in enumerate(data.stages):
        miou = "-" if stage.miou is None else f"{stage.miou:.4f}"
        loss_ax.text(
            stage.first_step,
            0.98 - 0.12 * (index % 3),
            f" stage {index + 1}: {stage.name}\n mIoU {miou}",
            transform=loss_ax.get_xaxis_transform(),
            va="top",
            ha="left",
            color=f"C{index % 10}",
            fontsize=10,
            fontweight="bold",
        )  # staggered rows: the label of a short stage does not cover the next one's
    bottom, top = loss_ax.get_ylim()
    loss_ax.set_ylim(bottom, bottom + (top - bottom) / 0.62)  # the labels' rows above the curves
    loss_ax.set_ylabel("loss")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    speed_ax.set_ylabel("images / s")
    speed_ax.set_xlabel("global step" + (" (stages chained)" if len(data.stages) > 1 else ""))
    handles = [
        Line2D([], [], color="0.4", alpha=0.35, label="loss"),
        Line2D([], [], color="0.4", linewidth=2, label="loss, smoothed (EMA)"),
    ]
    if len(data.stages) > 1:
        handles.append(Line2D([], [], color="0.25", linestyle="--", label="stage boundary"))
    if data.restarts:
        handles.append(Line2D([], [], color="red", linestyle=":", label="restart"))
    loss_ax.legend(handles=handles, loc="upper right")
    figure.suptitle("Training curves: " + " \u2192 ".join(stage.name for stage in data.stages))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png")


def save(stages: Sequence[StageLog], output: str, smoothing: float = 0.9) -> Curves:
    data = curves(stages, smoothing)
    draw(data, output)
    return data


def summary(data: Curves) -> list[str]:
    """One line per stage: its steps, restarts and mIoU."""
    lines = []
    for index, stage in enumerate(data.stages):
        miou = "none recorded" if stage.miou is None else f"{stage.miou:.4f}"
        restarts = f", {stage.restarts} restart{'s' * (stage.restarts != 1)}" if stage.restarts else ""
        steps = f"steps {stage.first_step}-{stage.last_step}"
        lines.append(f"stage {index + 1} {stage.name}: {steps}{restarts}, mIoU {miou}")
    return lines


def run(config: PlotConfig) -> int:
    """Read every train dir (BadInput, exit 2, naming a dir without records), draw, print mIoU."""
    stages = [read_stage(train_dir) for train_dir in config.train_dirs]
    data = save(stages, config.output, config.smoothing)
    for line in summary(data):
        print(line, flush=True)
    print(f"wrote {config.output}", flush=True)
    return 0
