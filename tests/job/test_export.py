"""``export``: the MINDIR file computes what the checkpoint's network computes (logits, softmax, argmax);
AIR off Ascend and ONNX (which MindSpore 2.10 cannot write for this network) are one line and exit 2.

The checkpoint is a random-weight network saved in the project's format with non-default settings, so
an export that ignored the record (and built the defaults) would fail to load or give other numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from job import checkpoints, device, recipe
from job.__main__ import main
from job.config import ExportConfig
from job.errors import BadInput
from job.export import check_backend, exported_path, input_shape, output_prefix, output_shape
from job.model import NetSettings

pytestmark = pytest.mark.mindspore

SETTINGS = NetSettings("deeplab_v3_s16", 3, (3, 6, 9), 0.5, False)
HEIGHT, WIDTH, BATCH = 65, 49, 2  # non-square: height and width must not be swapped
TOLERANCE = 1e-4


# -- decisions --------------------------------------------------------------------------------------


def test_input_size_is_a_side_or_height_and_width():
    assert input_shape(1, [513]) == (1, 3, 513, 513)
    assert input_shape(4, [480, 640]) == (4, 3, 480, 640)
    assert output_shape((4, 3, 480, 640), 21, "logits") == (4, 21, 480, 640)
    assert output_shape((4, 3, 480, 640), 21, "softmax") == (4, 21, 480, 640)
    assert output_shape((4, 3, 480, 640), 21, "argmax") == (4, 480, 640)


def test_the_file_name_gets_the_formats_extension_once():
    assert exported_path("out/deeplab", "MINDIR") == Path("out/deeplab.mindir")
    assert exported_path("out/deeplab.mindir", "MINDIR") == Path("out/deeplab.mindir")
    assert exported_path("m", "AIR") == Path("m.air") and exported_path("m", "ONNX") == Path("m.onnx")
    config = ExportConfig.model_validate({"ckpt_path": "runs/s8/final.ckpt"})
    assert output_prefix(config) == "runs/s8/final"  # -> runs/s8/final.mindir next to the checkpoint
    config = ExportConfig.model_validate({"ckpt_path": "runs/s8/final.ckpt", "output_file": "x/y"})
    assert output_prefix(config) == "x/y"


def test_defaults_and_bad_values():
    config = ExportConfig.model_validate({"ckpt_path": "c.ckpt"})
    assert (config.file_format, config.input_size, config.batch_size) == ("MINDIR", [513], 1)
    assert config.output == "logits"
    with pytest.raises(ValueError, match="input_size"):
        ExportConfig.model_validate({"ckpt_path": "c.ckpt", "input_size": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"device_target\n.*file_format AIR needs an Ascend device"):
        ExportConfig.model_validate({"ckpt_path": "c.ckpt", "file_format": "AIR", "device_target": "CPU"})
    check_backend("AIR", "Ascend")
    check_backend("MINDIR", "CPU")
    with pytest.raises(BadInput, match=r"^--file_format AIR needs an Ascend device .* runs on CPU"):
        check_backend("AIR", "CPU")


# -- the exported graph against the network -----------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight network with non-default settings, saved as this project's checkpoints are.

    Each residual branch's last BatchNorm scale is 0.1, so 33 blocks with untrained statistics keep
    the logits in a trained network's range (|logit| < 10, softmax not saturated) instead of ~1e5.
    """
    device.select_device("CPU")
    ms.set_seed(3)
    net = SETTINGS.build()
    for param in net.get_parameters():
        if param.name.endswith("bn3.gamma"):
            param.set_data(ms.Tensor(np.full(param.shape, 0.1, np.float32)))
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    return checkpoints.save_atomic(entries, tmp_path_factory.mktemp("export") / "final.ckpt", SETTINGS.meta())


@pytest.fixture(scope="module")
def reference(checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """(input, logits) of the checkpoint's own network on a random normalised batch."""
    net = SETTINGS.build()
    checkpoints.load_strict(net, checkpoint)
    net.set_train(False)
    batch = np.random.default_rng(0).standard_normal((BATCH, 3, HEIGHT, WIDTH)).astype(np.float32)
    logits = net(ms.Tensor(batch)).asnumpy()
    assert 1 < np.abs(logits).max() < 100, "the test network's logits are out of a useful range"
    return batch, logits


def export(capsys, checkpoint: Path, *flags: str) -> tuple[int, str, str]:
    """Run ``deeplab-job export`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["export", "--ckpt_path", str(checkpoint), "--device_target", "CPU", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def run_exported(path: str, batch: np.ndarray) -> np.ndarray:
    graph = nn.GraphCell(ms.load(path))
    return graph(ms.Tensor(batch)).asnumpy()


@pytest.mark.parametrize("output", ["logits", "softmax", "argmax"])
def test_the_mindir_file_computes_the_networks_output(capsys, checkpoint, reference, tmp_path, output):
    batch, logits = reference
    size = ["--input_size", str(HEIGHT), str(WIDTH), "--batch_size", str(BATCH)]
    size += ["--output_file", str(tmp_path / "m")]
    code, out, err = export(capsys, checkpoint, *size, "--output", output)
    assert code == recipe.EXIT_OK, err[-2000:]
    event = json.loads(out.splitlines()[-1])
    assert event["file"] == str(tmp_path / "m.mindir") and event["format"] == "MINDIR"
    assert event["input_shape"] == [BATCH, 3, HEIGHT, WIDTH] and event["output"] == output
    assert event["network"] == {"model": "deeplab_v3_s16", "num_classes": 3, "aspp_rates": [3, 6, 9]} | {
        "align_corners": False
    }
    got = run_exported(event["file"], batch)
    assert list(got.shape) == event["output_shape"]
    if output == "argmax":
        assert got.dtype == np.int32
        agree = float(np.mean(got == logits.argmax(axis=1)))
        print(f"argmax: {agree:.6f} of pixels equal the network's argmax")
        assert agree == 1.0
        return
    want = logits if output == "logits" else softmax(logits)
    difference = float(np.abs(got - want).max())
    print(f"{output}: max abs difference {difference:.3g} (values up to {float(np.abs(want).max()):.3g})")
    assert difference < TOLERANCE


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_air_off_ascend_is_one_line_and_exit_2(capsys, checkpoint, tmp_path):
    capsys.readouterr()
    args = ["export", "--ckpt_path", str(checkpoint), "--file_format", "AIR"]
    args += ["--output_file", str(tmp_path / "m")]
    assert main(args) == recipe.EXIT_BAD_INPUT  # device_target auto: this machine has no Ascend
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("deeplab-job:")] == [
        "deeplab-job: error: --file_format AIR needs an Ascend device (MindSpore builds AIR with Ascend's "
        "graph engine) and this process runs on CPU: export MINDIR here (MindSpore Lite converts it), or "
        "AIR on Ascend"
    ]
    assert main([*args, "--device_target", "CPU"]) == recipe.EXIT_BAD_INPUT  # refused before MindSpore
    assert capsys.readouterr().err.splitlines() == [
        "deeplab-job: error: device_target: file_format AIR needs an Ascend device (got 'CPU')"
    ]
    assert not list(tmp_path.iterdir())


def test_onnx_says_in_one_line_why_mindspore_cannot_export_it(capsys, checkpoint, tmp_path):
    """MindSpore 2.10's ONNX exporter lacks the padded max-pool (and bilinear resize) this network uses.
    If a MindSpore upgrade makes this pass, compare the ONNX file with onnxruntime here instead."""
    flags = ["--file_format", "ONNX", "--input_size", "33", "--output_file", str(tmp_path / "m")]
    code, out, err = export(capsys, checkpoint, *flags)
    assert code == recipe.EXIT_BAD_INPUT and out == ""
    lines = [line for line in err.splitlines() if line.startswith("deeplab-job: error:")]
    print(lines)
    assert len(lines) == 1 and lines[0].startswith(
        f"deeplab-job: error: ONNX export of this network fails in MindSpore {ms.__version__}: "
    ), err[-2000:]
    assert lines[0].endswith("; use --file_format MINDIR (MindSpore Lite runs it)")
    assert not list(tmp_path.iterdir())


def test_a_flag_contradicting_the_record_is_exit_2(capsys, checkpoint):
    code, _, err = export(capsys, checkpoint, "--aspp_rates", "6", "12", "18")
    assert code == recipe.EXIT_BAD_INPUT
    assert f"--aspp_rates 6 12 18 contradicts {checkpoint}, which records aspp_rates 3 6 9" in err
