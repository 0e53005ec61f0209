"""The run identity's rules without MindSpore: what is recorded, what is compared, what is refused."""

from __future__ import annotations

import os

import pytest

from job import run_identity
from job.config import TrainConfig
from job.errors import BadInput

NETWORK = {"model": "deeplab_v3_s16", "num_classes": 21, "aspp_rates": "6 12 18", "aspp_dropout": 0.7,
           "align_corners": True}  # fmt: skip


def config(**overrides) -> TrainConfig:
    values = {"data_file": "data/vocaug/vocaug.mindrecord0", "train_dir": "runs/s16", "base_lr": 0.08}
    return TrainConfig(**(values | overrides))


def stored(identity: dict) -> dict:
    """A checkpoint's meta as ``checkpoints.meta_of`` returns it (legacy keys beside the JSON)."""
    return {"run": run_identity.encode(identity), "model": identity["model"], "step": 8, "epoch": 2}


def test_identity_records_the_step_and_schedule_settings_exactly():
    identity = run_identity.of(config(), 8, NETWORK)
    assert identity["data_file"] == os.path.abspath("data/vocaug/vocaug.mindrecord0")
    assert identity["group_size"] == 8 and identity["base_lr"] == 0.08 and identity["lr_type"] == "cos"
    assert set(identity) == set(run_identity.KEYS) - {"end_lr", "lr_decay_step", "lr_decay_rate"}
    assert run_identity.recorded(stored(identity)) == identity  # 0.08 stays 0.08 (not float32)
    assert list(identity)[: len(NETWORK)] == list(NETWORK)


def test_the_schedule_records_only_the_parameters_it_reads():
    poly = run_identity.of(config(lr_type="poly", end_lr=0.001), 1, NETWORK)
    exp = run_identity.of(config(lr_type="exp", lr_decay_step=100), 1, NETWORK)
    assert poly["end_lr"] == 0.001 and "lr_decay_step" not in poly
    assert exp["lr_decay_step"] == 100 and exp["lr_decay_rate"] == 0.1 and "end_lr" not in exp
    cos = run_identity.of(config(), 1, NETWORK)
    assert cos == run_identity.of(config(end_lr=0.5, lr_decay_step=7), 1, NETWORK)  # unused by cos


def test_settings_outside_the_identity_do_not_change_it():
    base = run_identity.of(config(), 1, NETWORK)
    other = config(loss_scale=1024, max_steps=5, save_steps=7, seed=3, min_scale=1, max_scale=1,
                   ckpt_pre_trained="x.ckpt", freeze_bn=True, log_steps=1)  # fmt: skip
    assert run_identity.of(other, 1, NETWORK) == base


def test_the_next_stage_in_the_same_train_dir_is_refused_naming_every_difference():
    stage2 = run_identity.of(config(model="deeplab_v3_s8", train_epochs=800, batch_size=16, base_lr=0.02), 8,
                             NETWORK | {"model": "deeplab_v3_s8"})  # fmt: skip
    stage3 = run_identity.of(
        config(model="deeplab_v3_s8", train_epochs=300, batch_size=16, base_lr=0.008,
               data_file="data/voctrain/voctrain.mindrecord0"),
        8, NETWORK | {"model": "deeplab_v3_s8"},
    )  # fmt: skip
    with pytest.raises(BadInput) as caught:
        run_identity.check("/runs/chain/deeplab-00001000.ckpt", stored(stage2), stage3)
    message = str(caught.value)
    assert message.startswith("train_dir /runs/chain holds checkpoints of another run (deeplab-00001000.ckpt")
    assert "train_epochs: 800 != 300" in message and "base_lr: 0.02 != 0.008" in message
    assert "data_file: " in message and "voctrain.mindrecord0" in message
    assert "model" not in message.split("(", 1)[1]  # equal keys are not listed
    assert message.endswith("use a new --train_dir per stage")
    assert message.index("data_file") < message.index("train_epochs") < message.index("base_lr")  # KEYS order


@pytest.mark.parametrize(
    ("change", "key"),
    [({"batch_size": 16}, "batch_size"), ({"crop_size": 321}, "crop_size"), ({"lr_type": "poly"}, "lr_type"),
     ({"train_epochs": 301}, "train_epochs"), ({"base_lr": 0.0801}, "base_lr")],
)  # fmt: skip
def test_each_key_alone_refuses(change, key):
    old = run_identity.of(config(), 1, NETWORK)
    with pytest.raises(BadInput, match=rf"\(final\.ckpt vs this run: {key}: [^,]*\);"):
        run_identity.check("d/final.ckpt", stored(old), run_identity.of(config(**change), 1, NETWORK))


@pytest.mark.parametrize(
    ("network", "expected"),
    [({"aspp_rates": "12 24 36"}, "aspp_rates: 6 12 18 != 12 24 36"),
     ({"num_classes": 3}, "num_classes: 21 != 3"),
     ({"align_corners": False}, "align_corners: True != False"),
     ({"aspp_dropout": 0.1}, "aspp_dropout: 0.7 != 0.1")],
)  # fmt: skip
def test_other_network_settings_refuse(network, expected):
    old = run_identity.of(config(), 8, NETWORK)
    with pytest.raises(BadInput, match=expected):
        run_identity.check("d/final.ckpt", stored(old), run_identity.of(config(), 8, NETWORK | network))


def test_another_rank_count_refuses():
    old = run_identity.of(config(), 8, NETWORK)
    with pytest.raises(BadInput, match="group_size: 8 != 16"):
        run_identity.check("d/final.ckpt", stored(old), run_identity.of(config(), 16, NETWORK))


def test_the_same_run_passes_silently():
    identity = run_identity.of(config(), 8, NETWORK)
    assert run_identity.check("d/deeplab-00000008.ckpt", stored(identity), dict(identity)) is None


def test_a_checkpoint_from_before_identities_is_checked_on_what_it_has_and_warned_about():
    current = run_identity.of(config(), 1, NETWORK)
    legacy = {"model": "deeplab_v3_s16", "num_classes": 21, "step": 8, "epoch": 2}
    note = run_identity.check("d/deeplab-00000008.ckpt", legacy, current)
    assert note is not None and note.startswith("d/deeplab-00000008.ckpt: written by an older job")
    assert "train_epochs" in note and "data_file" in note and "model" not in note.split("record", 1)[1]
    with pytest.raises(BadInput, match="model: deeplab_v3_s8 != deeplab_v3_s16"):
        run_identity.check("d/deeplab-00000008.ckpt", legacy | {"model": "deeplab_v3_s8"}, current)


def test_a_key_only_a_newer_job_records_is_not_compared():
    current = run_identity.of(config(), 1, NETWORK)
    newer = stored(current | {"future_key": 1})
    assert run_identity.check("d/final.ckpt", newer, current) is None
    assert run_identity.differences({"a": 1, "future": 2}, {"a": 1}) == []
