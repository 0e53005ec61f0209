"""``python -m job predict`` on a real DeepLabV3 with random weights saved in the project's format.

Nothing is trained: the check is that predict runs evaluation's protocol on the network its checkpoint
records (non-default ASPP rates and alignment, so a predict that built the default network would
disagree) and writes what it says, for images of any size, without labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from job.__main__ import main
from job.model import NetSettings
from job.palette import colorize, voc_palette

pytestmark = pytest.mark.mindspore

CLASSES = 3
CROP = 33
SETTINGS = NetSettings("deeplab_v3_s16", CLASSES, (2, 4, 6), 0.7, False)


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> tuple[str, object]:
    """(checkpoint path, the same network loaded from it for reference predictions)."""
    import mindspore as ms

    from job import checkpoints, device

    device.select_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(3)
    net = SETTINGS.build()
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    path = checkpoints.save_atomic(entries, tmp_path_factory.mktemp("ckpt") / "final.ckpt", SETTINGS.meta())
    reference = SETTINGS.build()
    checkpoints.load_strict(reference, path)
    reference.set_train(False)
    return str(path), reference


def write_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    """Noise over a gradient and a block (so the prediction varies); returns the pixels as decoded."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) // 2
    image[:, :, seed % 3] += np.linspace(0, 120, width, dtype=np.uint8)[None, :]
    image[height // 3 : height // 2, width // 4 :] = (200, 30, 90)
    assert cv2.imwrite(str(path), image)
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def expected(reference, image: np.ndarray, scales: list[float], flip: bool) -> np.ndarray:
    from job.evaluate import predict_labels

    (labels,) = predict_labels(
        reference, [image], num_classes=CLASSES, crop_size=CROP, scales=scales, flip=flip
    )
    return labels


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_masks_overlays_and_indices_match_evals_prediction_and_a_bad_image_is_skipped(
    network, tmp_path, capsys
):
    ckpt, reference = network
    images = {
        "wide": write_image(tmp_path / "wide.png", 40, 57, 0),
        "tall": write_image(tmp_path / "tall.jpg", 64, 48, 1),
    }
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    out = tmp_path / "out"
    argv = ["predict", "--ckpt_path", ckpt, "--output", str(out), "--save_index", "--crop_size", str(CROP)]
    argv += [
        "--input",
        str(tmp_path / "wide.png"),
        str(tmp_path / "broken.jpg"),
        "--input",
        str(tmp_path / "tall.jpg"),
    ]

    code = main(argv)

    captured = capsys.readouterr()
    assert code == 2  # bad data, after the readable images were written
    skipped = [line for line in captured.err.splitlines() if "broken.jpg" in line]
    assert skipped == [f"deeplab-job: skipped {tmp_path / 'broken.jpg'}: not a decodable JPEG or PNG image"]
    lines = records(captured.out)
    assert [line["image"] for line in lines[:-1]] == [str(tmp_path / "wide.png"), str(tmp_path / "tall.jpg")]
    assert lines[-1] == {
        "event": "predict-done", "output": str(out), "images": 2, "skipped": [str(tmp_path / "broken.jpg")]
    }  # fmt: skip
    for name, image in images.items():
        index = cv2.imread(str(out / f"{name}_index.png"), cv2.IMREAD_UNCHANGED)
        assert index.shape == image.shape[:2] and index.dtype == np.uint8
        assert index.max() < CLASSES
        np.testing.assert_array_equal(index, expected(reference, image, [1.0], False))
        mask = cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(mask, colorize(index))  # the VOC palette by default
        overlay = cv2.imread(str(out / f"{name}_overlay.jpg"), cv2.IMREAD_COLOR)
        assert overlay.shape == image.shape
        blended = (image.astype(np.float32) + mask.astype(np.float32)) / 2
        error = np.abs(overlay - blended).mean()  # an alpha 0.5 blend, JPEG-compressed (noisy images)
        assert error < 0.5 * min(
            np.abs(overlay - image.astype(float)).mean(), np.abs(overlay - mask.astype(float)).mean()
        )
    record = lines[0]
    assert record["mask"] == str(out / "wide_mask.png") and record["index"] == str(out / "wide_index.png")
    assert sum(record["classes"].values()) == pytest.approx(1.0, abs=1e-3)
    assert set(record["classes"]) <= {"class 0", "class 1", "class 2"}
    assert not (out / "broken_mask.png").exists()


def test_folders_globs_own_palette_and_names_multi_scale_and_flip(network, tmp_path, capsys):
    ckpt, reference = network
    first = write_image(_folder(tmp_path / "a") / "same.png", 40, 57, 2)
    second = write_image(_folder(tmp_path / "b") / "same.png", 48, 36, 3)
    (tmp_path / "a" / "notes.txt").write_text("not an image")  # a folder's other files are not inputs
    palette = [(10, 200, 30), (250, 0, 250), (0, 40, 160)]
    (tmp_path / "colours.txt").write_text("".join(f"{r} {g} {b}\n" for r, g, b in palette))
    (tmp_path / "names.json").write_text(json.dumps(["sky", "road", "car"]))
    out = tmp_path / "out"
    argv = ["predict", "--ckpt_path", ckpt, "--output", str(out), "--crop_size", str(CROP), "--save_index"]
    argv += ["--input", str(tmp_path / "a"), "--input", str(tmp_path / "*" / "same.png")]  # a/same.png twice
    argv += ["--palette", str(tmp_path / "colours.txt"), "--class_names", str(tmp_path / "names.json")]
    argv += ["--scales", "0.5", "1.0", "--flip", "--overlay_format", "png"]

    code = main(argv)

    lines = records(capsys.readouterr().out)
    assert code == 0
    assert [line["image"] for line in lines[:-1]] == [
        str(tmp_path / "a" / "same.png"),
        str(tmp_path / "b" / "same.png"),
    ]
    for name, image in (("a_same", first), ("b_same", second)):  # same stems: the folder tells them apart
        index = cv2.imread(str(out / f"{name}_index.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(index, expected(reference, image, [0.5, 1.0], True))
        mask = cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(mask[:, :, ::-1], np.array(palette, np.uint8)[index])
        overlay = cv2.imread(str(out / f"{name}_overlay.png"), cv2.IMREAD_COLOR)
        np.testing.assert_allclose(overlay, (image.astype(float) + mask) / 2, atol=1)
    assert set(lines[0]["classes"]) <= {"sky", "road", "car"} and lines[0]["classes"]


def test_a_palette_shorter_than_the_classes_is_bad_input(network, tmp_path, capsys):
    ckpt, _ = network
    write_image(tmp_path / "x.png", 33, 33, 0)
    (tmp_path / "two.txt").write_text("0 0 0\n255 255 255\n")
    argv = [
        "predict",
        "--ckpt_path",
        ckpt,
        "--input",
        str(tmp_path / "x.png"),
        "--output",
        str(tmp_path / "o"),
    ]
    code = main([*argv, "--palette", str(tmp_path / "two.txt")])
    assert code == 2
    assert (
        f"--palette {tmp_path / 'two.txt'}: 2 colours for a network of 3 classes" in capsys.readouterr().err
    )
    assert not list((tmp_path / "o").glob("*.png"))


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def test_the_default_palette_is_vocs():
    assert colorize(np.array([[1]], np.uint8))[0, 0].tolist() == voc_palette()[1][::-1].tolist()
