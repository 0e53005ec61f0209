"""Each checkpoint records its network (model, classes, ASPP rates, dropout, alignment); eval builds the
network from that record, and an explicit flag that contradicts it is exit 2 with one line.

The round trip trains one step through the command line with non-default settings (so an eval that
ignored the record and used its defaults would build another network) and evaluates the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from job import recipe
from job.config import EvalConfig, TrainConfig
from job.errors import BadInput
from job.model import NetSettings, settings_from_checkpoint

pytestmark = pytest.mark.mindspore

CLASSES = 3
# Every network setting away from its default: s8, the paper's OS8 rates, another dropout, no alignment.
TRAINED = ("--model", "deeplab_v3_s8", "--aspp_rates", "12", "24", "36", "--aspp_dropout", "0.5")
TRAINED += ("--align_corners", "false")


def eval_config(**values) -> EvalConfig:
    return EvalConfig.model_validate({"data_root": "r", "data_lst": "l", "ckpt_path": "c.ckpt", **values})


# -- the settings and their record (no network built) -------------------------------------------------


def test_defaults_are_the_model_zoos_at_both_strides():
    for model in recipe.MODELS:
        config = TrainConfig.model_validate({"data_file": "d", "train_dir": "t", "model": model})
        settings = NetSettings.from_config(config)
        assert settings.aspp_rates == (6, 12, 18) and settings.aspp_dropout == 0.7, model
        assert settings.align_corners is True and settings.model == model
    assert NetSettings.from_config(eval_config()) == NetSettings()  # eval has no dropout flag: default


def test_record_wins_over_defaults_and_agreeing_flags_are_fine():
    meta = NetSettings("deeplab_v3_s8", 5, (12, 24, 36), 0.5, False).meta()
    meta["aspp_dropout"] = float(np.float32(0.5 + 1e-9))  # as MindSpore stores it: float32
    got = settings_from_checkpoint(meta, eval_config())
    assert got == NetSettings("deeplab_v3_s8", 5, (12, 24, 36), 0.5, False)
    agreeing = eval_config(model="deeplab_v3_s8", aspp_rates=[12, 24, 36], align_corners=False)
    assert settings_from_checkpoint(meta, agreeing) == got


@pytest.mark.parametrize(
    ("flag", "value", "given", "recorded"),
    [
        ("aspp_rates", [6, 12, 18], "6 12 18", "12 24 36"),
        ("model", "deeplab_v3_s16", "deeplab_v3_s16", "deeplab_v3_s8"),
        ("num_classes", 21, "21", "5"),
        ("align_corners", True, "true", "false"),
    ],
)
def test_an_explicit_flag_that_contradicts_the_record_is_bad_input(flag, value, given, recorded):
    meta = NetSettings("deeplab_v3_s8", 5, (12, 24, 36), 0.5, False).meta()
    with pytest.raises(BadInput) as caught:
        settings_from_checkpoint(meta, eval_config(**{flag: value}), "/ckpt/final.ckpt")
    message = str(caught.value)
    assert message.startswith(f"--{flag} {given} contradicts /ckpt/final.ckpt")
    assert f"records {flag} {recorded}" in message and "\n" not in message


def test_without_a_record_the_flags_and_defaults_decide():
    # A model zoo checkpoint has no meta; this project's older ones recorded only model and classes.
    assert settings_from_checkpoint({}, eval_config(aspp_rates=[12, 24, 36])).aspp_rates == (12, 24, 36)
    older = {"model": "deeplab_v3_s8", "num_classes": 5, "step": 10, "epoch": 1}
    got = settings_from_checkpoint(older, eval_config())
    assert got == NetSettings("deeplab_v3_s8", 5, recipe.ASPP_RATES, recipe.ASPP_DROPOUT, True)


def test_the_settings_import_without_mindspore():
    # So configuration and run-identity code can use them before (or without) loading MindSpore.
    code = "import sys; from job.model import NetSettings; assert 'mindspore' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_unreadable_record_is_bad_input_naming_the_file():
    with pytest.raises(BadInput, match=r"^x\.ckpt: unreadable network record aspp_rates='six'"):
        settings_from_checkpoint({"aspp_rates": "six"}, eval_config(), "x.ckpt")


def test_the_record_survives_a_checkpoint_file(tmp_path: Path):
    from job import checkpoints, device

    device.select_device("CPU")
    settings = NetSettings("deeplab_v3_s8", 4, (3, 6, 9), 0.3, False)
    weight = ms.Parameter(ms.Tensor(np.ones((2, 2), np.float32)), name="classifier.weight")
    path = checkpoints.save_atomic(
        [{"name": weight.name, "data": weight}], tmp_path / "a.ckpt", settings.meta()
    )
    assert settings_from_checkpoint(checkpoints.read_meta(path), eval_config()) == settings
    bare = checkpoints.save_atomic([{"name": "network.x", "data": weight}], tmp_path / "zoo.ckpt", {})
    assert checkpoints.read_meta(bare) == {}  # a model zoo checkpoint: no record


# -- the round trip through train and eval ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, str]:
    """One training step with every network setting away from its default; final.ckpt and a val set."""
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("record")
    train_lst, val_lst = generate(str(root), num_train=2, num_val=1, size=40, num_classes=CLASSES, seed=5)
    shard = convert_list(str(root), train_lst, str(root / "train.mindrecord"), 1, True)[0]
    train_dir = root / "train"
    args = [sys.executable, "-m", "job", "train", "--data_file", shard, "--train_dir", str(train_dir)]
    args += f"--batch_size 2 --crop_size 33 --num_classes {CLASSES} --device_target CPU".split()
    args += ["--min_scale", "1", "--max_scale", "1", "--train_epochs", "1", "--max_steps", "1", *TRAINED]
    args += ["--result_file", str(train_dir / "result.json")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": str(root), "val": val_lst, "final": str(train_dir / "final.ckpt"), "dir": str(train_dir)}


def test_train_records_the_network_in_every_checkpoint(trained):
    from job import checkpoints

    steps = checkpoints.step_checkpoints(trained["dir"])
    assert [step for step, _ in steps] == [1]
    for path in (trained["final"], steps[0][1]):
        meta = checkpoints.read_meta(path)
        assert meta["model"] == "deeplab_v3_s8" and meta["num_classes"] == CLASSES, path
        assert meta["aspp_rates"] == "12 24 36" and meta["align_corners"] is False, path
        assert abs(meta["aspp_dropout"] - 0.5) < 1e-6, path


def test_eval_builds_the_recorded_network(trained):
    """What `eval` builds from the record (no network flags given) is the trained network: the same
    stride, rates, alignment and classes, and the checkpoint loads into it strictly."""
    from job import checkpoints

    ms.set_context(mode=ms.PYNATIVE_MODE)
    config = eval_config(data_root=trained["root"], data_lst=trained["val"], ckpt_path=trained["final"])
    settings = settings_from_checkpoint(checkpoints.read_meta(trained["final"]), config, trained["final"])
    net = settings.build()
    checkpoints.load_strict(net, trained["final"])
    assert net.output_stride == 8 and net.num_classes == CLASSES and net.align_corners is False
    assert [branch[0].dilation[0] for branch in list(net.aspp.branches)[1:4]] == [12, 24, 36]


def eval_args(trained, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "job", "eval", "--data_root", trained["root"], "--data_lst", trained["val"]]
    return [*args, "--ckpt_path", trained["final"], "--crop_size", "33", "--device_target", "CPU", *extra]


def test_eval_command_uses_the_record_without_flags(trained):
    proc = subprocess.run(eval_args(trained), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["event"] == "eval" and result["images"] == 1 and len(result["iou"]) == CLASSES
    assert result["network"] == {"model": "deeplab_v3_s8", "aspp_rates": [12, 24, 36], "align_corners": False}


def test_eval_command_refuses_a_contradicting_flag_with_one_line(trained):
    proc = subprocess.run(
        eval_args(trained, "--aspp_rates", "6", "12", "18"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == recipe.EXIT_BAD_INPUT
    lines = [line for line in proc.stderr.splitlines() if line.startswith("deeplab-job:")]
    assert lines == [
        f"deeplab-job: error: --aspp_rates 6 12 18 contradicts {trained['final']}, which records "
        "aspp_rates 12 24 36 (leave the flag out to use the checkpoint's)"
    ], proc.stderr[-2000:]
