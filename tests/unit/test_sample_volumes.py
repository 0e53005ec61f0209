"""manifests/samples/voc-data.yaml prepares exactly what manifests/samples/voc-three-stage.yaml reads: the
claims it names, each stage's dataFile and the evaluation's root and list (paths under the data mount)."""

from __future__ import annotations

import posixpath
import re
import shlex
from pathlib import Path

import yaml

from controller import resources

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def _docs(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((SAMPLES / name).read_text()) if doc]


def _job_commands() -> list[list[str]]:
    (job,) = [doc for doc in _docs("voc-data.yaml") if doc["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["command"][-1].replace("\\\n", " ")
    return [shlex.split(line) for line in script.splitlines() if line.strip().startswith("python -m job")]


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _written_by_the_job() -> set[str]:
    """Files and folders the Job's commands create, as paths under the data mount."""
    written: set[str] = set()
    for command in _job_commands():
        if command[3] == "prepare-voc":
            root = _flag(command, "--output_dir")
            written |= {
                root,
                *(posixpath.join(root, f"{s}_lst.txt") for s in ("vocaug_train", "voc_train", "voc_val")),
            }
        elif command[3] == "build-data":
            dst, shards = _flag(command, "--dst_path"), int(_flag(command, "--num_shards"))
            written |= {f"{dst}{shard}" for shard in range(shards)}
    return written


def test_the_data_job_writes_every_path_the_recipe_sample_reads():
    (training,) = [doc for doc in _docs("voc-three-stage.yaml") if doc["kind"] == "DeepLabTraining"]
    written = _written_by_the_job()
    read = {stage["dataFile"] for stage in training["spec"]["stages"]}
    for stage in training["spec"]["stages"]:
        evaluate = stage.get("evaluate") or {}
        read |= {value for key, value in evaluate.items() if key in ("dataRoot", "dataList")}
    resolved = {posixpath.join(resources.DATA_MOUNT, path) for path in read}
    assert resolved <= written, sorted(resolved - written)


def test_the_data_sample_creates_the_claims_the_recipe_sample_mounts():
    (training,) = [doc for doc in _docs("voc-three-stage.yaml") if doc["kind"] == "DeepLabTraining"]
    claims = {volume["persistentVolumeClaim"]["claimName"] for volume in training["spec"]["volumes"].values()}
    created = {
        doc["metadata"]["name"] for doc in _docs("voc-data.yaml") if doc["kind"] == "PersistentVolumeClaim"
    }
    assert claims == created
    (job,) = [doc for doc in _docs("voc-data.yaml") if doc["kind"] == "Job"]
    (mount,) = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == resources.DATA_MOUNT  # the Job's paths are the training's paths
    assert re.fullmatch(r"deeplab-worker-cpu:\S+", job["spec"]["template"]["spec"]["containers"][0]["image"])
