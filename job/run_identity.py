"""The identity of a training run, recorded in every checkpoint it writes.

A global step only means something within one run: it indexes that run's LR array and counts that
run's batches. Resuming a checkpoint of another run (the next stage given the same ``--train_dir``)
would skip or shorten the loop and hand the other run's weights on as this run's result, silently.
So every checkpoint records the settings that fix what a step is, what the LR at a step is, and
which network learns from which data, and ``train`` resumes only when they are all equal.

Recorded (``KEYS``):
- the network (``job.model.NetSettings``: ``model``, ``num_classes``, ``aspp_rates``,
  ``aspp_dropout``, ``align_corners``): the weights belong to it.
- ``data_file`` (absolute path), ``batch_size``, ``group_size`` (ranks): what an epoch is, and so
  how many steps it has.
- ``crop_size``: the input geometry the network is trained at.
- ``train_epochs``: the total number of steps, over which the schedule decays.
- ``lr_type``, ``base_lr`` and the schedule's own parameters (``end_lr`` for poly,
  ``lr_decay_step``/``lr_decay_rate`` for exp; a setting the schedule ignores is not recorded, so
  changing it refuses nothing): the LR at every step.

Not recorded, so a resume may change them: ``loss_scale`` (numerical only: gradients are unscaled
before the optimizer; lowering it after an overflow and resuming is legitimate), ``max_steps`` (a
stop, not the schedule's length), the save/log/keep intervals, evaluation settings, workers,
device, seed, ``min_scale``/``max_scale``/``freeze_bn`` (augmentation and BN mode, not the meaning
of a step), and ``ckpt_pre_trained`` (a run's starting point; a resumed run has its own weights).

The identity is stored as one JSON string (checkpoint meta ``run``): MindSpore keeps float meta
values as float32, and 0.08 must compare equal to 0.08. Keys are compared where both sides record
them. Checkpoints written before identities existed carry only ``model`` and ``num_classes``: those
are compared, and ``train`` resumes them with one warning line naming what it could not check (an
upgrade of the worker image must not fail the stages in flight).

Pure: no MindSpore, so every rule here is tested without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from job.config import TrainConfig
from job.errors import BadInput

META_KEY = "run"  # stored as the checkpoint entry meta_run
KEYS = (
    "model",
    "num_classes",
    "aspp_rates",
    "aspp_dropout",
    "align_corners",
    "data_file",
    "batch_size",
    "group_size",
    "crop_size",
    "train_epochs",
    "lr_type",
    "base_lr",
    "end_lr",
    "lr_decay_step",
    "lr_decay_rate",
)
# The parameters each schedule reads besides base_lr (job/schedules.py).
SCHEDULE_KEYS = {"cos": (), "poly": ("end_lr",), "exp": ("lr_decay_step", "lr_decay_rate")}
LEGACY_KEYS = ("model", "num_classes")  # meta every checkpoint carried before identities


def of(config: TrainConfig, group_size: int, network: dict[str, Any]) -> dict[str, Any]:
    """This run's identity: the ``KEYS`` its settings define. ``network`` is the network's record
    (``NetSettings.meta()``; passed in because importing ``job.model`` loads MindSpore)."""
    identity: dict[str, Any] = {
        **network,
        "data_file": os.path.abspath(config.data_file),
        "batch_size": config.batch_size,
        "group_size": group_size,
        "crop_size": config.crop_size,
        "train_epochs": config.train_epochs,
        "lr_type": config.lr_type,
        "base_lr": config.base_lr,
    }
    for key in SCHEDULE_KEYS[config.lr_type]:
        identity[key] = getattr(config, key)
    return identity


def encode(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True)


def recorded(meta: dict[str, Any]) -> dict[str, Any]:
    """The identity a checkpoint's meta records. Without a ``run`` entry (a checkpoint from before
    identities) that is just the legacy keys it carries."""
    text = meta.get(META_KEY)
    if isinstance(text, str):
        try:
            identity = json.loads(text)
        except ValueError:
            identity = None
        if isinstance(identity, dict):
            return identity
    return {key: meta[key] for key in LEGACY_KEYS if key in meta}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old != new`` for every key both record and disagree on, in ``KEYS`` order. A key only
    one side records is not compared (see ``unchecked``): within one lr_type both sides record the
    same schedule keys, and a key added by a newer job must not refuse the runs an older one began."""
    common = [key for key in KEYS if key in old and key in new]
    common += sorted((set(old) & set(new)) - set(KEYS))
    return [f"{key}: {old[key]} != {new[key]}" for key in common if old[key] != new[key]]


def unchecked(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """This run's keys the checkpoint does not record (written by an older job)."""
    return [key for key in new if key not in old]


def check(path: str | Path, meta: dict[str, Any], current: dict[str, Any]) -> str | None:
    """BadInput naming the differing keys if ``path`` (a checkpoint in train_dir) belongs to another
    run; else None, or one warning line naming what could not be checked (an older checkpoint)."""
    path = Path(path)
    old = recorded(meta)
    differing = differences(old, current)
    if differing:
        raise BadInput(
            f"train_dir {path.parent} holds checkpoints of another run ({path.name} vs this run: "
            f"{', '.join(differing)}); use a new --train_dir per stage"
        )
    missing = unchecked(old, current)
    if not missing:
        return None
    return (
        f"{path}: written by an older job that did not record {', '.join(missing)}; "
        "those settings are not checked"
    )
