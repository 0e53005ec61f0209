"""pydantic models -> a structural OpenAPI v3 schema -> the CustomResourceDefinition in manifests/.

Kubernetes accepts only *structural* schemas: every node has a type, no ``$ref``, no ``anyOf`` of
alternative types, OpenAPI v3.0 number bounds. pydantic emits JSON Schema 2020-12, so this module
inlines references, collapses ``X | None`` to ``X`` (absent == None), rewrites exclusive bounds, turns
map-key bounds (``propertyNames``, which Kubernetes lacks) into CEL rules, and states each default in
the field's description (``kubectl explain`` shows descriptions, not defaults).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from controller import api

CRD_PATH = Path(__file__).resolve().parent.parent / "manifests" / "crd.yaml"
HEADER = "# Generated from controller/api.py by `python -m controller crd --write`: do not edit.\n"
_DROP = {"title"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` and collapse optional ``anyOf: [X, null]`` into X, keeping the outer keywords."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**copy.deepcopy(target), **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"not structural: a field may have exactly one type, got {options}")
        inner = _resolve(options[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if node.get("default", 0) is None:
        del node["default"]
    return node


def _key_rule(names: dict[str, Any]) -> dict[str, str]:
    """Map-key length bounds as a CEL rule (structural schemas have no ``propertyNames``)."""
    if set(names) - {"minLength", "maxLength", "type"}:
        raise ValueError(f"not structural: only key lengths can be checked, got {names}")
    low, high = names.get("minLength", 0), names.get("maxLength")
    checks = ([f"size(k) >= {low}"] if low else []) + ([f"size(k) <= {high}"] if high is not None else [])
    return {
        "rule": f"self.all(k, {' && '.join(checks)})",
        "message": f"keys must be {low} to {high} characters long",
    }


def _describe_default(node: dict[str, Any]) -> None:
    if "default" in node and node["default"] not in ([], {}):
        default = node["default"]
        text = json.dumps(default) if isinstance(default, str) and not default else default
        if isinstance(default, bool):
            text = str(default).lower()
        node["description"] = f"{node.get('description', '').rstrip()} Default: {text}.".lstrip()


def _structural(node: dict[str, Any], defs: dict[str, Any], *, keep_defaults: bool) -> dict[str, Any]:
    node = _resolve(node, defs)
    if keep_defaults:
        _describe_default(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and not keep_defaults):
            continue
        if key == "propertyNames":
            out.setdefault("x-kubernetes-validations", []).append(_key_rule(value))
            continue
        if key == "x-kubernetes-validations":
            out.setdefault(key, []).extend(value)
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs, keep_defaults=keep_defaults) for k, v in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs, keep_defaults=keep_defaults)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True  # free-form Kubernetes leaf objects
            else:
                out[key] = _structural(value, defs, keep_defaults=keep_defaults)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020-12 numeric bound -> OpenAPI v3.0 boolean flag next to minimum/maximum
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    typeless = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")
    if "type" not in out and not any(out.get(key) for key in typeless):
        raise ValueError(f"not structural: no type in {node}")
    return out


def _list_types(schema: dict[str, Any]) -> None:
    """Conditions are a map keyed by type (the metav1.Condition convention)."""
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]


def openapi_schema() -> dict[str, Any]:
    raw = api.DeepLabTraining.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    spec = _structural(raw["properties"]["spec"], defs, keep_defaults=True)
    # Status defaults would make the stored status differ from what the controller wrote,
    # and "write only when changed" compares the two.
    status = _structural(raw["properties"]["status"], defs, keep_defaults=False)
    schema = {
        "type": "object",
        "description": raw.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": api.API_VERSION},
            "kind": {"type": "string", "description": api.KIND},
            "metadata": {"type": "object"},  # the API server allows nothing else here
            "spec": spec,
            "status": status,
        },
    }
    _list_types(schema)
    return schema


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["deeplab"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": api.PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)


def write(path: Path = CRD_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path
