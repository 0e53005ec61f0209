"""Dataset list files: one ``image_path label_path`` pair per line, relative to a data root.

Shared by conversion (which reports every bad line at once) and evaluation (which reads the
list directly, without MindRecord).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from job.errors import BadInput

# A list with thousands of bad lines (e.g. every label a palette PNG) should not produce a
# megabyte-long message: Kubernetes truncates termination messages at 4 KiB anyway.
MAX_LISTED_PROBLEMS = 20
MAX_SHOWN_SHARED = 5  # images named when a training list overlaps a validation list


@dataclass(frozen=True)
class Pair:
    """One sample of a list file; ``line`` is 1-based, paths are as written in the list."""

    line: int
    image: str
    label: str

    def paths(self, data_root: str) -> tuple[str, str]:
        """Absolute-or-root-relative file paths (absolute entries in the list are kept as they are)."""
        return os.path.join(data_root, self.image), os.path.join(data_root, self.label)


def parse_list(data_lst: str) -> tuple[list[Pair], list[str]]:
    """Return the pairs and one problem string per malformed line (blank lines are skipped).

    Problems are returned, not raised, so that callers can add their own per-sample checks and
    report everything in a single error.
    """
    try:
        with open(data_lst, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise BadInput(f"cannot read data list {data_lst}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise BadInput(f"data list {data_lst} is not UTF-8 text: {error}") from error
    pairs: list[Pair] = []
    problems: list[str] = []
    for number, text in enumerate(lines, start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2:
            problems.append(f"line {number}: expected 'image_path label_path', got {len(fields)} fields")
            continue
        pairs.append(Pair(number, fields[0], fields[1]))
    return pairs, problems


def bad_input(data_lst: str, problems: list[str]) -> BadInput:
    """One BadInput naming every problem (the first ``MAX_LISTED_PROBLEMS`` in full) on one line.

    Problems are ordered by line number (they may come from separate checks).
    """
    problems = sorted(problems, key=_line_number)
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    if more > 0:
        shown += f"; ... and {more} more"
    noun = "problem" if len(problems) == 1 else "problems"
    return BadInput(f"data list {data_lst}: {len(problems)} {noun}: {shown}")


def read_list(data_root: str, data_lst: str, *, check_exists: bool = True) -> list[Pair]:
    """Parse a list and (optionally) check that every file exists; raise one BadInput for all problems."""
    pairs, problems = parse_list(data_lst)
    if check_exists:
        problems += [p for pair in pairs for p in missing_files(data_root, pair)]
    if problems:
        raise bad_input(data_lst, problems)
    if not pairs:
        raise BadInput(f"data list {data_lst} has no samples")
    return pairs


def missing_files(data_root: str, pair: Pair) -> list[str]:
    """Problem strings for the pair's files that do not exist."""
    image, label = pair.paths(data_root)
    problems = []
    if not os.path.isfile(image):
        problems.append(f"line {pair.line}: image {pair.image} not found")
    if not os.path.isfile(label):
        problems.append(f"line {pair.line}: label {pair.label} not found")
    return problems


def _line_number(problem: str) -> int:
    """Sort key: problems start with ``line N:``."""
    try:
        return int(problem.split(":", 1)[0].split()[1])
    except (IndexError, ValueError):
        return 0


def image_key(path: str) -> str:
    """The identity of a list entry's image: its path relative to the data root, normalised.

    Paths, not file stems: data sets that number each split from 1 (``train/0001.jpg``,
    ``val/0001.jpg``) must not be reported as overlapping; VOC-style lists share one root anyway.
    """
    return posixpath.normpath(path.replace("\\", "/")).removeprefix("./")


def shared_images(train: Iterable[str], val: Iterable[str]) -> list[str]:
    """Training images that are also validation images, in training order (each once)."""
    val_keys = {image_key(path) for path in val}
    seen: dict[str, None] = {}
    for path in train:
        if image_key(path) in val_keys:
            seen.setdefault(image_key(path), None)
    return list(seen)


def check_disjoint(train: Iterable[str], val: Iterable[str], train_name: str, val_name: str) -> None:
    """BadInput when a training set shares images with a validation set (its mIoU would be inflated)."""
    shared = shared_images(train, val)
    if shared:
        first = ", ".join(shared[:MAX_SHOWN_SHARED])
        more = ", ..." if len(shared) > MAX_SHOWN_SHARED else ""
        noun = "image" if len(shared) == 1 else "images"
        raise BadInput(
            f"training list {train_name} shares {len(shared)} {noun} with validation list {val_name}:"
            f" {first}{more}"
        )
