"""``deeplab-job predict``: segment one's own images with a trained checkpoint, no labels needed.

Each image goes through exactly evaluation's protocol (``job.evaluate.Predictor``: the same
canvases, scales, flip and resizing), so what predict draws is what eval scores. For every image it
writes a colour mask (``<stem>_mask.png``, the VOC palette or ``--palette``), the mask blended over the
image (``<stem>_overlay.jpg``) and with ``--save_index`` the class ids (``<stem>_index.png``), and
prints one JSON line naming the files and the share of each class present.

Inputs are resolved and named before MindSpore loads, so a missing file or two inputs that would
write the same output names fail at once (exit 2). An image that cannot be decoded is named in one
line and skipped; the others are still predicted and the exit code is 2 at the end.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from job import device, recipe
from job.config import PredictConfig
from job.errors import BadInput
from job.palette import colorize, default_class_names, read_class_names, read_palette, voc_palette
from job.progress import dumps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GLOB_CHARACTERS = "*?["


# -- inputs and output names (pure, before MindSpore) ---------------------------------------------------


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """The images to predict, in the order given: a file as it is, a folder's JPEG/PNG files (sorted,
    not recursive), a glob's matches (sorted; ``**`` recurses). A file named twice is predicted once.
    BadInput for an input that names nothing."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = _images_in(path)
        elif path.is_file():
            matches = [path]
        elif any(character in item for character in GLOB_CHARACTERS):
            matches = _globbed(item)
        else:
            raise BadInput(f"--input {item}: no such file or folder")
        if not matches:
            raise BadInput(f"--input {item}: no JPEG or PNG images there")
        found.extend(matches)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _images_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and _is_image_name(path))


def _globbed(pattern: str) -> list[Path]:
    matches: list[Path] = []
    for name in sorted(glob.glob(pattern, recursive=True)):
        path = Path(name)
        if path.is_dir():
            matches.extend(_images_in(path))
        elif _is_image_name(path):
            matches.append(path)
    return matches


def output_names(paths: Sequence[Path]) -> list[str]:
    """The ``<name>`` of each image's ``<name>_mask.png``: its stem, unless another input has the same
    stem; then as many parent folder names as tell them apart (``a/x.jpg``, ``b/x.jpg`` -> ``a_x``,
    ``b_x``), and the file type if the folders cannot (``x.jpg``, ``x.png`` -> ``x_jpg``, ``x_png``).
    BadInput if two inputs would still share a name: an output must never overwrite another's."""
    names = [path.stem for path in paths]
    for stem in sorted({name for name in names if names.count(name) > 1}):
        group = [index for index, name in enumerate(names) if name == stem]
        for index, name in zip(group, _distinct([paths[index] for index in group]), strict=True):
            names[index] = name
    seen: dict[str, Path] = {}
    for path, name in zip(paths, names, strict=True):
        if name in seen:
            raise BadInput(
                f"--input {seen[name]} and {path} would both be written as {name}_mask.png; "
                "predict them in separate runs or rename one"
            )
        seen[name] = path
    return names


def _distinct(paths: Sequence[Path]) -> list[str]:
    """Names for same-stem paths: the fewest parent folders (then the file type) that differ."""
    parents = [list(path.resolve().parent.parts[1:]) for path in paths]  # without the root
    deepest = max(len(parts) for parts in parents)
    for with_type in (False, True):
        for depth in range(0 if with_type else 1, deepest + 1):
            names = []
            for path, parts in zip(paths, parents, strict=True):
                words = [*parts[len(parts) - depth :], path.stem] if depth else [path.stem]
                names.append("_".join(words + ([path.suffix.lstrip(".")] if with_type else [])))
            if len(set(names)) == len(names):
                return names
    return [path.stem for path in paths]  # identical even so: output_names reports the clash


# -- what is written per image (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    """The files written for one image."""

    mask: Path
    overlay: Path
    index: Path | None

    @classmethod
    def of(cls, directory: Path, name: str, config: PredictConfig) -> Outputs:
        index = directory / f"{name}_index.png" if config.save_index else None
        return cls(
            directory / f"{name}_mask.png", directory / f"{name}_overlay.{config.overlay_format}", index
        )


def blend(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """The mask's colours over the image: ``(1 - alpha) * image + alpha * colours`` (uint8 BGR)."""
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)


def index_image(prediction: np.ndarray) -> np.ndarray:
    """Class ids as a gray PNG's pixels: 8-bit up to 256 classes (``Predictor.labels`` gives uint8), else
    16-bit."""
    return prediction if prediction.dtype == np.uint8 else prediction.astype(np.uint16)


def class_shares(prediction: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """{class name: fraction of the image's pixels} for the classes present, largest first."""
    counts = np.bincount(prediction.ravel(), minlength=len(names))
    order = np.argsort(-counts, kind="stable")
    return {
        names[index]: round(float(counts[index]) / prediction.size, 4) for index in order if counts[index]
    }


def check_classes(num_classes: int, palette: np.ndarray, names: Sequence[str], config: PredictConfig) -> None:
    """The colour and name files must cover the network's classes (known once the checkpoint is read)."""
    if len(palette) < num_classes:
        raise BadInput(
            f"--palette {config.palette}: {len(palette)} colours for a network of {num_classes} classes"
        )
    if len(names) != num_classes:
        raise BadInput(
            f"--class_names {config.class_names}: {len(names)} names for a network of {num_classes} classes"
        )


# -- progress and messages ----------------------------------------------------------------------------


class Progress:
    """``predict 3/10`` rewritten in place on a terminal; nothing when stderr is a file or a pipe."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.stream = total, stream or sys.stderr
        self.shown = self.stream.isatty()
        self.width = 0

    def update(self, done: int, path: Path) -> None:
        if self.shown:
            line = f"deeplab-job: predict {done}/{self.total} {path.name}"
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()
            self.width = len(line)

    def say(self, line: str) -> None:
        """One human line (not overwritten by the bar)."""
        self._clear()
        print(f"deeplab-job: {line}", file=self.stream, flush=True)

    def record(self, text: str) -> None:
        """One JSON line on stdout, on a line of its own when both streams are the terminal."""
        self._clear()
        print(text, flush=True)

    def _clear(self) -> None:
        if self.shown and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def close(self) -> None:
        if self.shown and self.width:
            self.stream.write("\n")
            self.stream.flush()


# -- the command --------------------------------------------------------------------------------------


def read_image(path: Path) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 image, "") or (None, why it cannot be used)."""
    try:
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return (image, "") if image is not None else (None, "not a decodable JPEG or PNG image")


def _write_png_or_jpg(path: Path, image: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    ok, encoded = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(encoded.tobytes())


def _batches(items: Sequence[tuple[Path, str]], size: int) -> Iterator[Sequence[tuple[Path, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _prepare_output(directory: str) -> Path:
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--output {directory}: cannot create the folder ({exc.strerror})") from exc
    return path


def run(config: PredictConfig) -> int:
    """Predict every input; 0 if all were written, 2 if any was skipped (each named on stderr)."""
    paths = expand_inputs(config.input)
    items = list(zip(paths, output_names(paths), strict=True))
    palette = read_palette(config.palette) if config.palette else voc_palette()
    names = read_class_names(config.class_names) if config.class_names else None
    output = _prepare_output(config.output)

    import mindspore as ms

    from job import checkpoints
    from job.evaluate import Predictor
    from job.model import settings_from_checkpoint

    device.select_device(config.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    # The checkpoint's record decides the network, as in eval.
    settings = settings_from_checkpoint(checkpoints.read_meta(config.ckpt_path), config, config.ckpt_path)
    names = names or default_class_names(settings.num_classes)
    check_classes(settings.num_classes, palette, names, config)
    net = settings.build()
    checkpoints.load_strict(net, config.ckpt_path)
    net.set_train(False)
    predictor = Predictor(
        net, num_classes=settings.num_classes, crop_size=config.crop_size, scales=config.scales,
        flip=config.flip, batch_size=config.batch_size,
    )  # fmt: skip

    progress, done, skipped = Progress(len(items)), 0, []
    for batch in _batches(items, config.batch_size):
        readable = []
        for path, name in batch:
            image, why = read_image(path)
            if image is None:
                progress.say(f"skipped {path}: {why}")
                skipped.append(str(path))
                done += 1
            else:
                readable.append((path, name, image))
        if not readable:
            continue
        predictions = predictor.labels([image for _, _, image in readable])
        for (path, name, image), prediction in zip(readable, predictions, strict=True):
            record = _write(path, image, prediction, Outputs.of(output, name, config), palette, names, config)
            progress.record(dumps(record))
            done += 1
            progress.update(done, path)
    progress.close()
    summary = {"event": "predict-done", "output": str(output), "images": len(items) - len(skipped)}
    print(dumps({**summary, "skipped": skipped}), flush=True)
    return recipe.EXIT_BAD_INPUT if skipped else recipe.EXIT_OK


def _write(
    path: Path,
    image: np.ndarray,
    prediction: np.ndarray,
    outputs: Outputs,
    palette: np.ndarray,
    names: Sequence[str],
    config: PredictConfig,
) -> dict:
    """Write one image's files; returns its JSON record."""
    colours = colorize(prediction, palette)
    _write_png_or_jpg(outputs.mask, colours)
    _write_png_or_jpg(outputs.overlay, blend(image, colours, config.overlay_alpha))
    if outputs.index is not None:
        _write_png_or_jpg(outputs.index, index_image(prediction))
    files = {"mask": str(outputs.mask), "overlay": str(outputs.overlay)}
    if outputs.index is not None:
        files["index"] = str(outputs.index)
    return {"event": "predict", "image": str(path), **files, "classes": class_shares(prediction, names)}
