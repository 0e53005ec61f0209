"""Configuration: flags generated from the pydantic models, YAML + flags, one-line errors, exit 2."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from job import recipe
from job.__main__ import main, make_parser
from job.config import BuildDataConfig, EvalConfig, TrainConfig, build
from job.errors import BadInput

# The recipe's command lines (model zoo scripts / seed README) must keep working unchanged.
RECIPE_TRAIN = shlex.split(
    "--data_file /d/vocaug.mindrecord0 --train_dir /ckpt --train_epochs 300 --batch_size 32 --crop_size 513 "
    "--base_lr 0.08 --lr_type cos --min_scale 0.5 --max_scale 2.0 --ignore_label 255 --num_classes 21 "
    "--model deeplab_v3_s16 --ckpt_pre_trained /p/resnet101.ckpt --save_steps 410 "
    "--keep_checkpoint_max 200 "
    "--loss_scale 3072 --is_distributed"
)
RECIPE_EVAL = shlex.split(
    "--data_root /voc --data_lst /voc/val.txt --batch_size 32 --crop_size 513 --ignore_label 255 "
    "--num_classes 21 --model deeplab_v3_s8 --scales 0.5 --scales 0.75 --scales 1.0 --scales 1.25 "
    "--scales 1.75 --flip --freeze_bn "
    "--ckpt_path /ckpt/final.ckpt"
)


def parse(command: str, argv: list[str], config_file: str | None = None):
    args = make_parser().parse_args([command, *argv])
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    model = {"train": TrainConfig, "eval": EvalConfig, "build-data": BuildDataConfig}[command]
    return build(model, values, config_file)


def test_recipe_train_command_line_parses_to_typed_values():
    config = parse("train", RECIPE_TRAIN)
    assert config.is_distributed is True
    assert config.base_lr == 0.08 and config.loss_scale == 3072.0 and config.train_epochs == 300
    assert config.model == "deeplab_v3_s16" and config.ckpt_pre_trained == "/p/resnet101.ckpt"
    # Unset fields take the model's defaults, which come from recipe.py.
    assert config.device_target == "auto" and config.log_steps == 10 and config.max_steps == 0


def test_recipe_eval_command_line_collects_repeated_scales():
    config = parse("eval", RECIPE_EVAL)
    assert config.scales == [0.5, 0.75, 1.0, 1.25, 1.75]
    assert config.flip is True and config.model == "deeplab_v3_s8"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),
        (["--is_distributed"], True),
        (["--is_distributed", "false"], False),
        (["--is_distributed", "False"], False),
        (["--is_distributed", "true"], True),
        (["--is_distributed", "0"], False),
    ],
)
def test_booleans_are_real_booleans(argv, expected):
    # The zoo's argparse type=bool made "False" true; here "false" is false.
    assert parse("train", ["--data_file", "d", "--train_dir", "t", *argv]).is_distributed is expected


def test_build_data_shuffle_false_is_false():
    config = parse("build-data", shlex.split("--data_root r --data_lst l --dst_path d --shuffle false"))
    assert config.shuffle is False and config.num_shards == 8


def test_aspp_rates_take_three_ints():
    config = parse("train", shlex.split("--data_file d --train_dir t --aspp_rates 12 24 36"))
    assert config.aspp_rates == (12, 24, 36)


def test_network_defaults_are_the_model_zoos_and_flags_change_them():
    train = parse("train", shlex.split("--data_file d --train_dir t --model deeplab_v3_s8"))
    assert train.aspp_rates == (6, 12, 18) and train.aspp_dropout == 0.7 and train.align_corners is True
    assert not {"aspp_rates", "aspp_dropout", "align_corners"} & train.model_fields_set  # defaults, not given
    argv = "--data_file d --train_dir t --aspp_dropout 0.5 --align_corners false"
    given = parse("train", shlex.split(argv))
    assert given.aspp_dropout == 0.5 and given.align_corners is False
    evaluation = parse("eval", RECIPE_EVAL)
    assert evaluation.align_corners is True and not hasattr(evaluation, "aspp_dropout")  # training only


@pytest.mark.parametrize("value", ["1", "-0.1"])
def test_aspp_dropout_is_a_probability_below_one(value, capsys):
    code = main(["train", "--data_file", "d", "--train_dir", "t", "--aspp_dropout", value])
    err = capsys.readouterr().err.strip()
    assert code == recipe.EXIT_BAD_INPUT and err.startswith("deeplab-job: error: aspp_dropout")


def test_yaml_config_with_flag_override(tmp_path: Path):
    yaml_file = tmp_path / "stage.yaml"
    yaml_file.write_text(
        "data_file: /d/x.mindrecord0\ntrain_dir: /t\nbase_lr: 0.02\nmodel: deeplab_v3_s8\n"
        "eval_scales: [0.5, 1.0]\nis_distributed: true\n"
    )
    config = parse("train", ["--base_lr", "0.008"], str(yaml_file))
    assert config.base_lr == 0.008  # the flag wins
    assert (
        config.model == "deeplab_v3_s8" and config.eval_scales == [0.5, 1.0] and config.is_distributed is True
    )


def test_help_comes_from_field_descriptions():
    text = make_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--loss_scale" in text and "fixed loss scale" in text and f"default: {recipe.LOSS_SCALE}" in text


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--batch_size", "abc"], "batch_size"),
        (["--lr_type", "step"], "lr_type"),
        (["--crop_size", "0"], "crop_size"),
        (["--min_scale", "3"], "min_scale"),
        (["--is_distributed", "maybe"], "is_distributed"),
    ],
)
def test_bad_value_is_one_line_error_naming_the_key(argv, key, capsys):
    code = main(["train", "--data_file", "d", "--train_dir", "t", *argv])
    err = capsys.readouterr().err.strip()
    assert code == recipe.EXIT_BAD_INPUT
    assert len(err.splitlines()) == 1 and err.startswith("deeplab-job: error: ") and key in err


def test_unknown_yaml_key_names_file_and_key(tmp_path: Path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data_file: d\ntrain_dir: t\nbase_lrr: 0.1\n")
    with pytest.raises(BadInput, match=r"c\.yaml: base_lrr"):
        parse("train", [], str(yaml_file))


def test_missing_required_key_is_bad_input():
    with pytest.raises(BadInput, match="train_dir"):
        parse("train", ["--data_file", "d"])


def test_validation_happens_before_mindspore_is_imported():
    # A fresh interpreter: a bad config must fail with exit 2 without ever loading MindSpore.
    code = (
        "import sys; from job.__main__ import main; "
        "rc = main(['train', '--data_file', 'd', '--train_dir', 't', '--num_classes', '-1']); "
        "assert 'mindspore' not in sys.modules, 'mindspore imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == recipe.EXIT_BAD_INPUT, proc.stderr
    assert proc.stderr.strip().startswith("deeplab-job: error: num_classes")
