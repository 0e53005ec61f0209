"""The CRD in manifests/ is generated from the pydantic models, and is a structural schema."""

from __future__ import annotations

from typing import Any

import yaml

from controller import api, crd


def walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def test_committed_crd_matches_the_models():
    assert crd.CRD_PATH.read_text() == crd.render(), "stale: run `python -m controller crd --write`"


def test_schema_is_structural():
    schema = crd.openapi_schema()
    for path, node in walk(schema):
        assert not {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"} & node.keys(), path
    for section in ("spec", "status"):
        for path, node in walk(schema["properties"][section]):
            if (
                path.endswith((".properties", "x-kubernetes-validations"))
                or "x-kubernetes-validations[" in path
            ):
                continue
            if path.split(".")[-1] in ("default", "enum", "required", "x-kubernetes-list-map-keys"):
                continue
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{section}{path}"


def test_defaults_enums_bounds_and_rules_reach_the_schema():
    spec = crd.openapi_schema()["properties"]["spec"]
    props = spec["properties"]
    assert props["npusPerServer"]["default"] == 8
    assert props["npuResource"]["default"] == api.DEFAULT_NPU_RESOURCE
    assert (
        props["launcher"]["enum"] == ["rankTable", "dynamicCluster"]
        and props["launcher"]["default"] == "rankTable"
    )
    assert props["backoffLimit"]["default"] == 3 and props["workers"]["minimum"] == 1
    stage = props["stages"]["items"]
    assert stage["properties"]["name"]["pattern"] == api.DNS_LABEL
    assert (
        stage["properties"]["baseLR"]["exclusiveMinimum"] is True
        and stage["properties"]["baseLR"]["minimum"] == 0
    )
    assert stage["properties"]["lrType"]["enum"] == ["cos", "poly", "exp"]
    assert props["stages"]["maxItems"] == api.MAX_STAGES  # CEL cost estimation needs bounds
    messages = [rule["message"] for rule in spec["x-kubernetes-validations"]]
    assert "stage names must be unique" in messages and "initFrom must name an earlier stage" in messages
    volume = props["volumes"]["properties"]["data"]
    assert "exactly one of" in volume["x-kubernetes-validations"][0]["message"]
    tolerations = props["template"]["properties"]["tolerations"]["items"]
    assert tolerations == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_status_has_no_defaults_and_conditions_are_a_map():
    status = crd.openapi_schema()["properties"]["status"]
    assert not [path for path, node in walk(status) if "default" in node]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == [
        "type"
    ]


def test_crd_identity_and_printer_columns():
    doc = yaml.safe_load(crd.render())
    assert doc["metadata"]["name"] == "deeplabtrainings.deeplab.io"
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["shortNames"] == ["dlt"]
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"]]
    assert columns == ["STAGE", "PHASE", "EPOCH", "LOSS", "MIOU", "AGE"]


def test_command_line_check(capsys):
    from controller.__main__ import main

    assert main(["crd", "--check"]) == 0
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd.render()
