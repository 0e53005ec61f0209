"""``train --recompute``: ResNet blocks recomputed in the backward pass change memory, not numbers.

Two one-batch-per-step runs from the same seed on the same data, with and without recomputation:
the losses of steps 1 and 2 (step 2's depends on step 1's gradients) and every parameter afterwards,
BatchNorm moving statistics included, agree within float tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from job.config import TrainConfig

pytestmark = pytest.mark.mindspore


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("recompute-data")
    train_lst, _ = generate(str(root), num_train=4, num_val=0, size=40, num_classes=3, seed=2)
    return convert_list(str(root), train_lst, str(root / "train.mindrecord"), 1, False)[0]


def train(data_file: str, train_dir, recompute: bool) -> tuple[list[float], dict[str, np.ndarray]]:
    from job import train as job_train

    config = TrainConfig(
        data_file=data_file, train_dir=str(train_dir), batch_size=2, crop_size=33, num_classes=3,
        device_target="CPU", train_epochs=1, max_steps=2, log_steps=1, base_lr=0.05, seed=7,
        num_parallel_workers=1, recompute=recompute, result_file=str(train_dir / "result.json"),
    )  # fmt: skip
    net, _ = job_train.fit(config)
    progress = (train_dir / "progress.jsonl").read_text().splitlines()
    import json

    losses = [record["loss"] for record in map(json.loads, progress) if record.get("event") == "progress"]
    return losses, {p.name: p.asnumpy() for p in net.get_parameters()}


def test_recompute_marks_every_bottleneck() -> None:
    from job.model import deeplabv3

    net = deeplabv3("deeplab_v3_s16", 3)
    assert net.backbone.recompute_blocks() == 3 + 4 + 23 + 3  # ResNet-101's bottlenecks


def test_recompute_gives_the_same_losses_and_weights(data_file, tmp_path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "recompute").mkdir()
    plain_losses, plain = train(data_file, tmp_path / "plain", recompute=False)
    losses, params = train(data_file, tmp_path / "recompute", recompute=True)
    assert len(plain_losses) == 2 and len(losses) == 2
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-4)
    assert set(params) == set(plain) and any("moving_mean" in name for name in params)
    moved = 0
    for name, value in plain.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-3, atol=1e-5, err_msg=name)
        moved += "moving_mean" in name and not np.allclose(value, 0)
    assert moved > 30  # BN statistics were really updated (and updated once, as without recompute)
