"""The training loop: GRAPH-mode data-parallel steps, resume, checkpoints, progress, result.

Import only after ``job.device.prepare_environment()`` (``job.__main__`` guarantees the order).
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from job import checkpoints, device, distributed, recipe, run_identity
from job.config import TrainConfig
from job.errors import BadInput
from job.losses import SoftmaxCrossEntropy
from job.model import DeepLabV3, NetSettings
from job.progress import Progress, ProgressLog, default_result_file, write_result
from job.schedules import learning_rates


class Interrupted(Exception):
    """SIGTERM arrived; the current step finished and rank 0 saved a checkpoint. Exit 143."""


class NetWithLoss(nn.Cell):
    def __init__(self, net: nn.Cell, loss: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # keep the network's parameter names unchanged
        self.net, self.loss = net, loss

    def construct(self, data, label):
        return self.loss(self.net(data), label)


_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(inverse_scale, grad):
    return grad * ops.cast(inverse_scale, grad.dtype)


class TrainStep(nn.Cell):
    """One optimisation step with a fixed loss scale and (when distributed) a gradient mean.

    Written as a Cell rather than ``value_and_grad`` over a closure: GRAPH mode compiles it once,
    and the loss scale is explicit (the gradients are unscaled before the optimizer adds weight decay,
    so weight decay is not affected by the scale).
    """

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, loss_scale: float, group_size: int):
        super().__init__(auto_prefix=False)
        self.network = net_with_loss
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.loss_scale = loss_scale
        self.inverse_scale = ms.Tensor(1.0 / loss_scale, ms.float32)
        self.hyper_map = ops.HyperMap()
        self.distributed = group_size > 1  # a Python constant: GRAPH mode folds the branch away
        if self.distributed:
            self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=group_size)

    def construct(self, data, label):
        loss = self.network(data, label)
        sens = ops.fill(loss.dtype, loss.shape, self.loss_scale)
        grads = self.grad(self.network, self.weights)(data, label, sens)
        grads = self.hyper_map(ops.partial(_unscale, self.inverse_scale), grads)
        if self.distributed:
            grads = self.reducer(grads)
        self.optimizer(grads)
        return loss


@dataclass
class Position:
    """Where training resumes: the global step (= optimizer step = LR index)."""

    step: int = 0
    source: str | None = None


# -- building blocks ---------------------------------------------------------------------------


def build_network(config: TrainConfig, backend: str) -> DeepLabV3:
    net = NetSettings.from_config(config).build()
    if config.freeze_bn:
        freeze_batch_norm(net)
    if config.recompute:
        net.backbone.recompute_blocks()
    return net


def freeze_batch_norm(net: nn.Cell) -> int:
    """Make every BN use (and keep) its moving statistics, also in training; returns how many."""
    count = 0
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.use_batch_statistics = False
            count += 1
    return count


def build_dataset(config: TrainConfig, group: distributed.Group):
    from job.data.pipeline import train_dataset

    if not Path(config.data_file).is_file():
        raise BadInput(f"{config.data_file}: data_file not found (make it with build-data)")
    if config.eval_data_lst:  # training on validation images would inflate the after-training mIoU
        from job.data.convert import check_record_disjoint

        check_record_disjoint(config.data_file, config.eval_data_lst)
    return train_dataset(
        config.data_file,
        batch_size=config.batch_size,
        crop_size=config.crop_size,
        min_scale=config.min_scale,
        max_scale=config.max_scale,
        ignore_label=config.ignore_label,
        num_shards=group.size,
        shard_id=group.rank,
        shuffle=True,
        num_parallel_workers=config.num_parallel_workers,
        seed=config.seed,
    )


def checkpoint_entries(net: nn.Cell, optimizer: nn.Optimizer | None) -> list[dict[str, Any]]:
    """Network parameters (incl. BN moving statistics), then momentum accumulators and global_step."""
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    if optimizer is not None:
        entries += [{"name": p.name, "data": p} for p in optimizer.moments]
        entries.append({"name": "global_step", "data": optimizer.global_step})
    return entries


def checkpoint_meta(
    config: TrainConfig, step: int, steps_per_epoch: int, *, group_size: int
) -> dict[str, Any]:
    return {
        run_identity.META_KEY: run_identity.encode(identity(config, group_size)),
        **NetSettings.from_config(config).meta(),  # model, classes, rates, dropout, alignment
        "step": step,
        "epoch": step // steps_per_epoch,
    }


def identity(config: TrainConfig, group_size: int) -> dict[str, Any]:
    """The run's identity (job/run_identity.py), recorded in every checkpoint it writes."""
    return run_identity.of(config, group_size, NetSettings.from_config(config).meta())


def resume(config: TrainConfig, net: nn.Cell, optimizer: nn.Optimizer, *, group_size: int = 1) -> Position:
    """Restore the newest readable step checkpoint in train_dir; else load --ckpt_pre_trained.

    An unreadable (e.g. truncated) file is skipped with a warning; a readable one (or a final.ckpt)
    of another run is bad input naming the settings that differ (job/run_identity.py): resuming it
    would skip or cut short this run's loop, deleting it would lose work.
    """
    current = identity(config, group_size)
    notes = [_check_final(config, current)]
    for step, path in checkpoints.step_checkpoints(config.train_dir):
        try:
            entries = checkpoints.read(path)
        except BadInput as exc:
            print(f"deeplab-job: warning: skipping {exc}", file=sys.stderr)
            continue
        notes.append(run_identity.check(path, checkpoints.meta_of(entries), current))
        checkpoints.check_shapes(path, net, entries)
        checkpoints.check_shapes(path, optimizer, entries)
        names = {p.name for p in net.get_parameters()} | {p.name for p in optimizer.moments} | {"global_step"}
        absent = sorted(names - set(entries))
        if absent:
            raise BadInput(
                f"{path}: not a training checkpoint of this network ({len(absent)} entries missing)"
            )
        ms.load_param_into_net(net, {n: entries[n] for n in entries if n in names}, strict_load=False)
        ms.load_param_into_net(optimizer, {n: entries[n] for n in entries if n in names}, strict_load=False)
        restored = int(optimizer.global_step.asnumpy().reshape(-1)[0])
        if restored != step:
            raise BadInput(f"{path}: global_step inside ({restored}) does not match the file name")
        _warn_once(notes)
        ignored = (
            f"; --ckpt_pre_trained {config.ckpt_pre_trained} not loaded" if config.ckpt_pre_trained else ""
        )
        print(f"deeplab-job: resuming from {path} at step {step}{ignored}", file=sys.stderr)
        return Position(step, str(path))
    _warn_once(notes)
    if config.ckpt_pre_trained:
        checkpoints.load_pretrained(
            net,
            config.ckpt_pre_trained,
            allow_partial=config.allow_partial,
            filter_weight=config.filter_weight,
        )
    return Position(0, None)


def _check_final(config: TrainConfig, current: dict[str, Any]) -> str | None:
    """A final.ckpt of another run in train_dir is bad input too: this run would overwrite it, and
    with no step checkpoint left nothing else would notice. Returns the old-checkpoint warning."""
    final = Path(config.train_dir) / checkpoints.FINAL_NAME
    if not final.is_file():
        return None
    try:
        meta = checkpoints.read_meta(final)
    except BadInput as exc:
        print(f"deeplab-job: warning: ignoring {exc}", file=sys.stderr)
        return None
    return run_identity.check(final, meta, current)


def _warn_once(notes: list[str | None]) -> None:
    """At most one line about checkpoints too old to record their run (final.ckpt and a step one)."""
    note = next((note for note in notes if note), None)
    if note:
        print(f"deeplab-job: warning: {note}", file=sys.stderr)


def batches(dataset, steps_per_epoch: int, first_step: int, epochs: int) -> Iterator[tuple[int, tuple]]:
    """(epoch index, batch) from ``first_step`` on. A resumed partial epoch takes its remaining
    number of batches from a fresh pass, then a second iterator serves the remaining whole epochs
    (a MindSpore iterator cannot be left mid-epoch and then moved on to the next epoch)."""
    epoch, offset = divmod(first_step, steps_per_epoch)
    if offset:
        partial = dataset.create_tuple_iterator(num_epochs=1)
        for index, batch in enumerate(partial):
            if index >= steps_per_epoch - offset:
                break
            yield epoch, batch
        partial.stop()
        epoch += 1
    if epoch >= epochs:
        return
    iterator = dataset.create_tuple_iterator(num_epochs=epochs - epoch)
    for current in range(epoch, epochs):
        for batch in iterator:
            yield current, batch


class StopFlag:
    """SIGTERM handler: finish the current step, then stop (the loop asks ``agreed`` after each step).

    With several ranks each one gets its SIGTERM at its own time (pods are deleted one by one, or
    only one is evicted), so the flag is agreed after every step: a sum over all ranks, outside the
    compiled step. Every rank makes the same call after the same step, so nobody waits in the
    collective for a rank that already left, and all stop after the same step: rank 0 saves it, the
    others do not run ahead into a step rank 0 never takes. One rank trains with no collective.
    """

    def __init__(self, group_size: int = 1) -> None:
        self.requested = False
        self.group_size = group_size

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """Whether any rank has been asked to stop (each rank must call this after each step)."""
        if self.group_size <= 1:
            return self.requested
        return distributed.any_rank(self.requested)


# -- the loop ----------------------------------------------------------------------------------


def run(config: TrainConfig, dataset=None) -> dict[str, Any]:
    """Train (resuming if train_dir has checkpoints); returns the result dict. Raises BadInput,
    Interrupted (after saving) and RuntimeError."""
    return fit(config, dataset)[1]


def fit(config: TrainConfig, dataset=None) -> tuple[DeepLabV3, dict[str, Any]]:
    """``run`` that also returns the trained network (for the demo and the distributed test)."""
    backend = device.select_device(config.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(config.seed)  # the same on every rank: identical initial weights
    group = distributed.init(config.is_distributed)
    if dataset is None:
        dataset = build_dataset(config, group)
    steps_per_epoch = dataset.get_dataset_size()
    if steps_per_epoch <= 0:
        raise BadInput(
            f"{config.data_file}: no full batch of {config.batch_size} images per rank (empty dataset?)"
        )
    total = steps_per_epoch * config.train_epochs
    last_step = min(total, config.max_steps) if config.max_steps else total

    net = build_network(config, backend)
    lrs = learning_rates(
        config.lr_type,
        config.base_lr,
        total,
        end_lr=config.end_lr,
        decay_steps=config.lr_decay_step,
        decay_rate=config.lr_decay_rate,
    )
    optimizer = nn.Momentum(net.trainable_params(), ms.Tensor(lrs), recipe.MOMENTUM, recipe.WEIGHT_DECAY)
    position = resume(config, net, optimizer, group_size=group.size)
    if backend == "Ascend":
        # O2: fp16 network with fp32 BN; the loss casts logits to fp32. After loading, so that
        # checkpoints keep fp32 master weights on every backend.
        ms.amp.auto_mixed_precision(net, "O2")
    step_cell = TrainStep(
        NetWithLoss(net, SoftmaxCrossEntropy(config.ignore_label)), optimizer, config.loss_scale, group.size
    )
    step_cell.set_train(True)  # GRAPH mode: training mode must be set explicitly before compiling

    stop = StopFlag(group.size)
    stop.install()
    progress = Progress(
        epochs=config.train_epochs,
        steps=total,
        start_step=position.step,
        enabled=group.is_main,
        images_per_step=config.batch_size * group.size,
        log=ProgressLog(config.train_dir, enabled=group.is_main),
    )
    progress.begin()
    state = _loop(
        config,
        dataset,
        step_cell,
        net,
        optimizer,
        position.step,
        last_step,
        steps_per_epoch,
        group,
        progress,
        stop,
    )
    if state.interrupted:
        where = "" if stop.requested else " to another rank"
        raise Interrupted(f"stopped by SIGTERM{where} after step {state.step}")
    return net, _finish(config, net, state, steps_per_epoch, group)


@dataclass
class LoopState:
    step: int
    loss: float = math.nan
    saved_step: int = -1
    interrupted: bool = False


def _loop(config, dataset, step_cell, net, optimizer, first, last, steps_per_epoch, group, progress, stop):
    state = LoopState(first)
    window: list = []
    if first < last:
        for epoch, (data, label) in batches(dataset, steps_per_epoch, first, config.train_epochs):
            window.append(step_cell(data, label))
            state.step += 1
            at_end = state.step >= last
            # at_end is the same on every rank: all make the agreeing collective, or none does
            stopping = not at_end and stop.agreed()
            if state.step % config.log_steps == 0 or at_end or stopping:
                state.loss = float(np.mean([w.asnumpy() for w in window]))
                window.clear()
                if not math.isfinite(state.loss):
                    raise RuntimeError(f"loss is {state.loss} at step {state.step} (diverged)")
                progress.report(epoch=epoch + 1, step=state.step, loss=state.loss, lr=applied_lr(optimizer))
            if state.step % config.save_steps == 0 or at_end or stopping:
                _save_step(config, net, optimizer, state, steps_per_epoch, group)
            if at_end or stopping:
                state.interrupted = stopping
                break
    return state


def applied_lr(optimizer: nn.Optimizer) -> float:
    """The LR the optimizer applied in the step it just took: its own schedule at its own global step
    before that step. Read from the optimizer rather than from the schedule array, so the log shows
    what it really used (a global step restored wrongly would show here)."""
    if not optimizer.dynamic_lr:
        return float(optimizer.learning_rate.asnumpy())
    lr = optimizer.learning_rate(optimizer.global_step - 1)
    return float(lr.asnumpy().reshape(-1)[0])


def _save_step(config, net, optimizer, state: LoopState, steps_per_epoch: int, group) -> None:
    if not group.is_main:
        return
    path = checkpoints.step_path(config.train_dir, state.step)
    checkpoints.save_atomic(
        checkpoint_entries(net, optimizer),
        path,
        checkpoint_meta(config, state.step, steps_per_epoch, group_size=group.size),
    )
    checkpoints.prune(config.train_dir, config.keep_checkpoint_max)
    state.saved_step = state.step


def _report_rank(net, step: int, group) -> None:
    """Every rank prints a fingerprint of its weights: data parallelism must keep them identical,
    and a diverged rank would otherwise go unnoticed (only rank 0 writes checkpoints)."""
    values = [p.asnumpy().astype(np.float64) for p in net.trainable_params()]
    line = {
        "event": "rank-finished",
        "rank": group.rank,
        "size": group.size,
        "step": step,
        "param_sum": float(sum(v.sum() for v in values)),
        "param_l2": float(np.sqrt(sum(np.square(v).sum() for v in values))),
    }
    print(json.dumps(line), flush=True)


def _finish(config: TrainConfig, net, state: LoopState, steps_per_epoch: int, group) -> dict[str, Any]:
    """final.ckpt and the result file (rank 0), the optional evaluation (on every rank, each a shard)."""
    final = Path(config.train_dir) / checkpoints.FINAL_NAME
    result = {
        "event": "result",
        "checkpoint": str(final),
        "epochs": math.ceil(state.step / steps_per_epoch),
        "steps": state.step,
        "loss": state.loss,
        "miou": None,
    }
    if group.size > 1:
        _report_rank(net, state.step, group)
    if group.is_main:
        checkpoints.save_atomic(
            checkpoint_entries(net, None),
            final,
            checkpoint_meta(config, state.step, steps_per_epoch, group_size=group.size),
        )
    if config.eval_data_root and config.eval_data_lst:
        from job.evaluate import evaluate

        # every rank scores its share of the list; the confusion matrices are summed over the ranks
        net.set_train(False)
        metrics = evaluate(
            net,
            data_root=config.eval_data_root,
            data_lst=config.eval_data_lst,
            num_classes=config.num_classes,
            ignore_label=config.ignore_label,
            crop_size=config.crop_size,
            scales=list(config.eval_scales),
            flip=config.eval_flip,
            group=group,
        )
        result["miou"] = metrics["miou"]
    if not group.is_main:
        return result
    write_result(
        config.result_file or default_result_file(config.train_dir), result, log=ProgressLog(config.train_dir)
    )
    return result
