"""predict's pure parts: which files are inputs, what their outputs are called, palette and name files,
the progress bar, and a bad input failing before MindSpore loads."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from job.config import PredictConfig, build
from job.errors import BadInput
from job.palette import default_class_names, read_class_names, read_palette
from job.predict import Outputs, Progress, blend, check_classes, class_shares, expand_inputs, output_names


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_files_folders_and_globs_expand_in_order_and_once(tmp_path: Path):
    b, a = touch(tmp_path / "f" / "b.PNG"), touch(tmp_path / "f" / "a.jpg")
    touch(tmp_path / "f" / "readme.txt")
    deep = touch(tmp_path / "f" / "sub" / "c.jpeg")
    odd = touch(tmp_path / "odd.bmp")  # named explicitly: tried as given
    got = expand_inputs([str(odd), str(tmp_path / "f"), str(tmp_path / "f" / "**" / "*.jp*g")])
    assert got == [odd, a, b, deep]  # a.jpg matched twice, listed once


@pytest.mark.parametrize("item", ["missing.jpg", "nothing-*.png", "empty"])
def test_an_input_that_names_no_image_is_bad_input(tmp_path: Path, item: str):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="^" + re.escape(f"--input {tmp_path / item}: no")):
        expand_inputs([str(tmp_path / item)])


def test_output_names_stay_stems_unless_two_inputs_share_one(tmp_path: Path):
    paths = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "a" / "y.png"]
    assert output_names(paths) == ["a_x", "b_x", "y"]
    deep = [tmp_path / "p" / "a" / "x.jpg", tmp_path / "q" / "a" / "x.jpg"]
    assert output_names(deep) == ["p_a_x", "q_a_x"]
    assert output_names([tmp_path / "x.jpg", tmp_path / "x.png"]) == ["x_jpg", "x_png"]


def test_names_that_would_still_clash_are_bad_input(tmp_path: Path):
    paths = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "a_x.png"]
    with pytest.raises(BadInput, match=r"would both be written as a_x_mask\.png"):
        output_names(paths)


def test_outputs_are_named_after_the_input(tmp_path: Path):
    config = PredictConfig(ckpt_path="c", input=["i"], output="o", save_index=True, overlay_format="png")
    outputs = Outputs.of(tmp_path, "cat", config)
    assert (outputs.mask.name, outputs.overlay.name, outputs.index.name) == (
        "cat_mask.png", "cat_overlay.png", "cat_index.png"
    )  # fmt: skip
    assert Outputs.of(tmp_path, "cat", PredictConfig(ckpt_path="c", input=["i"], output="o")).index is None


def test_palette_files_text_and_json(tmp_path: Path):
    text = tmp_path / "p.txt"
    text.write_text("# r g b\n0 0 0\n\n128, 64, 0  # road\n")
    assert read_palette(text).tolist() == [[0, 0, 0], [128, 64, 0]]
    js = tmp_path / "p.json"
    js.write_text(json.dumps([[1, 2, 3], [4, 5, 6]]))
    assert read_palette(js).dtype == np.uint8 and read_palette(js).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("content", "where"), [("0 0 0\n1 2\n", "line 2"), ("0 0 300\n", "line 1"), ("[[0, 0, 0], 5]", "entry 2")]
)
def test_a_bad_colour_is_bad_input_naming_where(tmp_path: Path, content: str, where: str):
    path = tmp_path / "p"
    path.write_text(content)
    with pytest.raises(BadInput, match=rf"^{path}: {where}: a colour is three integers"):
        read_palette(path)


def test_class_names_files_and_defaults(tmp_path: Path):
    (tmp_path / "n.txt").write_text("sky\n\n road \n")
    assert read_class_names(tmp_path / "n.txt") == ["sky", "road"]
    (tmp_path / "n.json").write_text('["a", "b"]')
    assert read_class_names(tmp_path / "n.json") == ["a", "b"]
    (tmp_path / "bad.json").write_text('["a", 3]')
    with pytest.raises(BadInput, match="non-empty strings"):
        read_class_names(tmp_path / "bad.json")
    assert default_class_names(21)[15] == "person" and default_class_names(2) == ["class 0", "class 1"]


def test_colours_and_names_must_cover_the_classes():
    config = PredictConfig(ckpt_path="c", input=["i"], output="o", class_names="n.txt")
    check_classes(2, np.zeros((256, 3), np.uint8), ["a", "b"], config)
    with pytest.raises(BadInput, match=r"^--class_names n.txt: 3 names for a network of 2 classes"):
        check_classes(2, np.zeros((256, 3), np.uint8), ["a", "b", "c"], config)


def test_class_shares_and_blend():
    prediction = np.array([[0, 2, 2, 2]], np.uint8)
    assert class_shares(prediction, ["bg", "cat", "dog"]) == {"dog": 0.75, "bg": 0.25}
    image, colours = np.full((1, 2, 3), 100, np.uint8), np.full((1, 2, 3), 200, np.uint8)
    assert blend(image, colours, 0.25).tolist() == [[[125] * 3] * 2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_on_a_terminal_only(capsys):
    quiet = io.StringIO()
    progress = Progress(2, quiet)
    progress.update(1, Path("a.jpg"))
    progress.close()
    assert quiet.getvalue() == ""
    tty = Terminal()
    progress = Progress(2, tty)
    progress.update(1, Path("a.jpg"))
    progress.say("skipped b.jpg: broken")
    progress.update(2, Path("c.jpg"))
    progress.record('{"event":"predict"}')  # stdout: the bar is cleared first, so they never share a line
    progress.close()
    assert tty.getvalue().split("\r")[1:] == [
        "deeplab-job: predict 1/2 a.jpg",
        " " * 30,
        "deeplab-job: skipped b.jpg: broken\n",
        "deeplab-job: predict 2/2 c.jpg",
        " " * 30,
        "",
    ]
    assert capsys.readouterr().out == '{"event":"predict"}\n'


def test_config_flags():
    config = build(
        PredictConfig, {"ckpt_path": "c", "input": ["a", "b"], "output": "o", "scales": ["0.5", "1"]}
    )
    assert config.input == ["a", "b"] and config.scales == [0.5, 1.0] and config.flip is False
    with pytest.raises(BadInput, match="overlay_alpha"):
        build(PredictConfig, {"ckpt_path": "c", "input": ["a"], "output": "o", "overlay_alpha": "2"})


def test_a_missing_input_is_exit_2_before_mindspore_loads(tmp_path: Path):
    code = (
        "import sys; from job.__main__ import main; "
        f"code = main(['predict', '--ckpt_path', 'x.ckpt', '--input', {str(tmp_path / 'no.jpg')!r}, "
        f"'--output', {str(tmp_path / 'out')!r}]); "
        "assert 'mindspore' not in sys.modules, 'loaded'; sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"deeplab-job: error: --input {tmp_path / 'no.jpg'}: no such file or folder"
