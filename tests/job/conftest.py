"""Job tests: CPU settings that must precede the first MindSpore import (see job/device.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from job import device

device.prepare_environment()


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny synthetic dataset shared by the data tests: (root, train.txt, val.txt); 4 classes, 64 px."""
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    train, val = generate(str(root), num_train=6, num_val=3, size=64, num_classes=4, seed=0)
    return root, Path(train), Path(val)
