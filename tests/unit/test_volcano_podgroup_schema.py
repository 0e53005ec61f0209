"""The PodGroup the operator builds for ``gang: volcano``, against Volcano v1.14's PodGroup schema
(tests/data/volcano-podgroups-v1.14.0.yaml). A structural schema silently drops a field it does not
know (``minresources`` would vanish and Volcano would admit the gang without its NPUs), so every field
must be declared there and every value must have the declared type, pattern and bounds.
tests/cluster/test_reliability_faults.py checks the same against the real API server."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml
from sim import training_obj

from controller import resources
from controller.api import Training

CRD = Path(__file__).resolve().parents[1] / "data" / "volcano-podgroups-v1.14.0.yaml"
INT32 = (-(2**31), 2**31 - 1)


def podgroup_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    return version["schema"]["openAPIV3Schema"]


def problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """What the API server would prune or refuse in ``value``, for the parts of OpenAPI v3 that
    controller-gen writes for these types (object, integer, string, int-or-string, array)."""
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return [f"{path}: {value!r} is neither integer nor string"]
        pattern = schema.get("pattern")
        return [f"{path}: {value!r} !~ {pattern}"] if isinstance(value, str) and pattern and not re.search(
            pattern, value) else []  # fmt: skip
    kind = schema.get("type")
    if kind == "object":
        return _object_problems(value, schema, path)
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: not an array"]
        return [
            p for i, item in enumerate(value) for p in problems(item, schema.get("items", {}), f"{path}[{i}]")
        ]
    if kind == "integer":
        low, high = INT32 if schema.get("format") == "int32" else (-(2**63), 2**63 - 1)
        low = max(low, schema.get("minimum", low))
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return [] if ok else [f"{path}: {value!r} is not an integer in [{low}, {high}]"]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: {value!r} is not a string"]
        if len(value) > schema.get("maxLength", len(value)):
            return [f"{path}: longer than {schema['maxLength']}"]
        pattern = schema.get("pattern")
        return [f"{path}: {value!r} !~ {pattern}"] if pattern and not re.search(pattern, value) else []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: not a boolean"]
    return [f"{path}: no type in the schema"]


def _object_problems(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: not an object"]
    if path == ".metadata":
        return []  # ObjectMeta: the API server's own, not the CRD's schema
    found = [f"{path}: {name} is required" for name in schema.get("required", ()) if name not in value]
    properties, extra = schema.get("properties"), schema.get("additionalProperties")
    for key, item in value.items():
        if properties is not None and key in properties:
            found += problems(item, properties[key], f"{path}.{key}")
        elif isinstance(extra, dict):
            found += problems(item, extra, f"{path}.{key}")
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            found.append(f"{path}.{key}: unknown to the schema (pruned)")
    return found


def gang(**spec: Any) -> dict[str, Any]:
    return resources.podgroup(Training.from_obj(training_obj(gang="volcano", **spec)))


def test_the_operators_podgroup_is_volcanos_podgroup_field_for_field():
    built = gang(workers=16, npusPerServer=8, queue="ascend-train", template={"priorityClassName": "high"})
    assert set(built["spec"]) == {"minMember", "queue", "minResources", "priorityClassName"}
    assert built["spec"]["minResources"] == {"huawei.com/Ascend910": "16"}
    assert problems(built, podgroup_schema()) == []
    assert problems(gang(launcher="dynamicCluster", npuResource=""), podgroup_schema()) == []


def test_the_check_catches_what_the_server_would_drop_or_refuse():
    schema = podgroup_schema()
    built = gang(queue="ascend-train")
    typo = {**built, "spec": {**built["spec"], "minresources": built["spec"]["minResources"]}}
    del typo["spec"]["minResources"]
    assert problems(typo, schema) == [".spec.minresources: unknown to the schema (pruned)"]
    wrong = {**built, "spec": {**built["spec"], "minMember": "4", "queue": "Team_A"}}
    assert [p.split(":")[0] for p in problems(wrong, schema)] == [".spec.minMember", ".spec.queue"]
    assert problems({**built, "spec": {**built["spec"], "minResources": {"cpu": "2 cores"}}}, schema)


def test_the_schema_file_names_its_source_and_licence_and_is_unedited():
    lines = CRD.read_text().splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    text = "".join(header)
    for needed in ("volcano.sh/apis", "v1.14.0", "Apache-2.0", "controller-gen", "types.go"):
        assert needed in text, needed
    stated = re.search(r"sha256 ([0-9a-f]{64})", text).group(1)
    assert hashlib.sha256("".join(lines[len(header) :]).encode()).hexdigest() == stated  # as generated
    assert yaml.safe_load(CRD.read_text())["metadata"]["name"] == "podgroups.scheduling.volcano.sh"
