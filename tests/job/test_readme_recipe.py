"""README's "Reproduce the seed's table on one device", run command by command on small generated data.

The commands are read from the README itself, so the documented sequence cannot rot: from the two
archives (made here in their published layouts) through prepare-voc, build-data, the three training
stages and the evaluations. Only the sizes shrink (flags appended after the README's own, which win
over the config files): one step per stage, 65-pixel crops, two shards.

Each command starts once every command before it has ended, except that an evaluation does not hold up
the trainings and evaluations after it: it reads what the commands before it wrote (a checkpoint, the
data) and writes only its own JSON, which no training or evaluation reads. Any other command waits for
every evaluation. Why: a train or eval process spends 90-97 % of its CPU time in its main thread (graph
compilation, measured), so on the 2-core test machine the evaluations overlap at little cost.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from _ms_cluster import Processes, processes
from voc_archives import make_archives, make_sbd, make_voc

pytestmark = pytest.mark.mindspore

REPO = Path(__file__).resolve().parents[2]
SECTION = "### Reproduce the seed's table on one device"
SMALL = {
    "train": ["--train_epochs", "1", "--max_steps", "1", "--batch_size", "2", "--crop_size", "65",
              "--num_parallel_workers", "1", "--device_target", "CPU"],
    "eval": ["--crop_size", "65", "--device_target", "CPU"],
    "build-data": ["--num_shards", "2"],
    "prepare-voc": [],
}  # fmt: skip


def readme_commands() -> list[list[str]]:
    """The section's first code block (4-space indented), continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    block = re.search(r"\n\n((?:    .*\n|\n)+)", section).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


OVERLAP_EVALS = {"train", "eval"}  # the commands that may run while an earlier eval still does


def finish(group: Processes, commands: list[list[str]], indices: list[int]) -> None:
    """Wait for these commands (emptying the list); each must have succeeded."""
    while indices:
        i = indices.pop(0)
        code = group.wait(str(i), timeout=900)
        assert code == 0, f"{shlex.join(commands[i])}\n{group.err(str(i))[-3000:]}"


def zoo_backbone_checkpoint(path: Path) -> None:
    """What the model zoo's README has users download: an ImageNet ResNet-101 in its naming
    (``layerL.0.down_sample_layer``, an ``end_point`` classifier), here with random weights."""
    import mindspore as ms
    import numpy as np

    from job.model import deeplabv3

    net = deeplabv3("deeplab_v3_s16", 21)
    entries = [
        {"name": p.name.removeprefix("backbone.").replace(".downsample.", ".down_sample_layer."), "data": p}
        for p in net.get_parameters()
        if p.name.startswith("backbone.")
    ]
    entries.append({"name": "end_point.weight", "data": ms.Tensor(np.zeros((1001, 2048), np.float32))})
    path.parent.mkdir(parents=True)
    ms.save_checkpoint(entries, str(path))


def test_the_readme_recipe_runs_from_the_archives_to_the_final_miou(tmp_path):
    commands = readme_commands()
    assert [c[:3] for c in commands[:3]] == [["python", "-m", "job"]] * 3
    kinds = [c[3] for c in commands]
    assert kinds.count("train") == 3 and kinds[0] == "prepare-voc" and kinds[-1] == "eval", kinds

    make_archives(make_voc(tmp_path / "src"), make_sbd(tmp_path / "src"), tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    zoo_backbone_checkpoint(tmp_path / "pretrained" / "resnet101.ckpt")

    (tmp_path / "logs").mkdir()
    with processes(tmp_path / "logs") as group:  # every process is ended, also on a failure
        running: list[int] = []  # evals started, not yet waited for (the module docstring says why)
        for i, kind in enumerate(kinds):
            if kind not in OVERLAP_EVALS:
                finish(group, commands, running)
            args = [sys.executable, "-m", "job", *commands[i][3:], *SMALL[kind]]
            group.start(str(i), args, dict(os.environ), cwd=tmp_path)
            if kind == "eval":
                running.append(i)
            else:
                finish(group, commands, [i])
        finish(group, commands, running)
        trains = [group.err(str(i)) for i, kind in enumerate(kinds) if kind == "train"]
    loaded = [next(line for line in err.splitlines() if " loaded " in line) for err in trains]
    assert "(model zoo ImageNet ResNet-101): backbone 520/520 tensors" in loaded[0], loaded
    assert all("(this project's DeepLabV3): backbone 520/520 tensors, head loaded" in x for x in loaded[1:])
    for stage in ("s16-vocaug", "s8-vocaug", "s8-voctrain"):
        assert (tmp_path / "runs" / stage / "final.ckpt").is_file(), stage
    results = sorted((tmp_path / "runs").glob("*/*.json"))
    evals = [json.loads(p.read_text()) for p in results if p.name.startswith("eval")]
    assert len(evals) == kinds.count("eval"), [p.name for p in results]
    assert all(0.0 <= e["miou"] <= 1.0 for e in evals)
