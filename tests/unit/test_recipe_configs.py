"""configs/voc/ (the recipe as ``--config`` files) against job/recipe.py and the VOC CR sample.

The YAML files are what a user runs on one machine; the sample is what the operator runs. Both state
the seed's recipe, so a number changed in one place and not the others fails here.
"""

from __future__ import annotations

import itertools
import posixpath
from pathlib import Path

import pytest
import yaml

from controller.api import DeepLabTrainingSpec
from job import config, recipe, run_identity

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "voc"
SAMPLE = ROOT / "manifests" / "samples" / "voc-three-stage.yaml"
DATA = "data"  # the configs' data folder: the sample's data volume, as a local directory
STAGES = [stage["name"] for stage in recipe.VOC_STAGES]
TRAIN = {stage["name"]: stage for stage in (*recipe.VOC_STAGES, recipe.VOC_SINGLE_DEVICE)}
EVAL = "eval-ms-flip"


def load(name: str):
    model = config.EvalConfig if name.startswith("eval-") else config.TrainConfig
    return config.build(model, {}, str(CONFIGS / f"{name}.yaml"))  # the job's own parsing and checks


def sample_spec() -> DeepLabTrainingSpec:
    return DeepLabTrainingSpec.model_validate(yaml.safe_load(SAMPLE.read_text())["spec"])


def test_the_folder_holds_the_three_stages_the_single_device_variant_and_the_evaluation():
    assert sorted(path.stem for path in CONFIGS.iterdir()) == sorted([*TRAIN, EVAL])
    assert all(path.suffix == ".yaml" for path in CONFIGS.iterdir())


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_training_configs_equal_the_recipe(name):
    settings = load(name)
    assert isinstance(settings, config.TrainConfig)
    got = {"name": name, "model": settings.model, "epochs": settings.train_epochs,
           "batch_size": settings.batch_size, "base_lr": settings.base_lr,
           "loss_scale": settings.loss_scale}  # fmt: skip
    assert got == TRAIN[name]
    assert settings.lr_type == "cos"  # FACTS section 1: every stage is cosine
    assert (settings.num_classes, settings.crop_size) == (recipe.NUM_CLASSES, recipe.CROP_SIZE)
    assert (settings.min_scale, settings.max_scale) == (recipe.MIN_SCALE, recipe.MAX_SCALE)
    assert not settings.is_distributed and settings.max_steps == 0  # the launcher adds --is_distributed


def test_the_three_stages_equal_the_operator_sample():
    stages = sample_spec().stages
    assert [stage.name for stage in stages] == STAGES
    for stage in stages:
        settings = load(stage.name)
        assert settings.model == stage.model.value
        assert (settings.train_epochs, settings.batch_size) == (stage.epochs, stage.batch_size)
        assert (settings.base_lr, settings.loss_scale) == (stage.base_lr, stage.loss_scale)
        assert settings.lr_type == stage.lr_type.value
        assert settings.data_file == posixpath.join(DATA, stage.data_file)  # the same data layout


def test_the_evaluation_is_multi_scale_and_flip_on_the_last_stage_as_in_the_sample():
    evaluation = load(EVAL)
    last = load(STAGES[-1])
    assert isinstance(evaluation, config.EvalConfig)
    assert tuple(evaluation.scales) == recipe.EVAL_SCALES and evaluation.flip
    assert evaluation.ckpt_path == posixpath.join(last.train_dir, "final.ckpt")
    assert evaluation.model == last.model and evaluation.num_classes == last.num_classes
    assert evaluation.crop_size == recipe.CROP_SIZE
    sample = sample_spec().stages[-1].evaluate
    assert sample is not None
    assert evaluation.data_root == posixpath.join(DATA, sample.data_root)
    assert evaluation.data_lst == posixpath.join(DATA, sample.data_list)
    assert (list(evaluation.scales), evaluation.flip) == (list(sample.scales), sample.flip)


def test_each_stage_starts_from_the_previous_final_checkpoint_in_its_own_train_dir():
    stages = [load(name) for name in STAGES]
    single = load(recipe.VOC_SINGLE_DEVICE["name"])
    train_dirs = [settings.train_dir for settings in (*stages, single)]
    assert len(set(train_dirs)) == len(train_dirs)  # train refuses a train_dir of another run
    assert stages[0].ckpt_pre_trained == single.ckpt_pre_trained  # the ImageNet backbone
    assert not stages[0].ckpt_pre_trained.endswith("final.ckpt")
    for previous, current in itertools.pairwise(stages):
        assert current.ckpt_pre_trained == posixpath.join(previous.train_dir, "final.ckpt")
    identities = [run_identity.of(settings, 8, {}) for settings in stages]
    assert all(run_identity.differences(a, b) for a, b in itertools.pairwise(identities))
