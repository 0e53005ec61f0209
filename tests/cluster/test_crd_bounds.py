"""Bounded, typed input checked by the real API server: the CRD's limits, CEL rules and descriptions.

The API server refuses a CRD whose CEL rules could cost too much; `operator_installed` applying the
generated CRD at all is the first check here.
"""

from __future__ import annotations

import json
import re

import pytest
from kubelet import training_manifest

from controller import api, crd

pytestmark = pytest.mark.cluster

NAME = "bounds"


def _server_dry_run(kubectl, manifest: dict) -> tuple[int, str, str]:
    result = kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(manifest))
    return result.returncode, result.stdout, result.stderr


def _manifest(stage: dict | None = None, **spec) -> dict:
    manifest = training_manifest(NAME, "default", **spec)
    if stage:
        manifest["spec"]["stages"][0].update(stage)
    return manifest


def env(*variables: dict) -> dict:
    return {"template": {"env": list(variables)}}


NODE = {"fieldRef": {"fieldPath": "spec.nodeName"}}
T, S0 = "spec.template", "spec.stages[0]"

# (spec changes, changes to stage 0, the field the message must name, words of the message)
REFUSED = [
    ({"npuResource": "cpu"}, None, "spec.npuResource", "domain-qualified extended resource"),
    ({"npuResource": "memory"}, None, "spec.npuResource", "domain-qualified extended resource"),
    ({"npuResource": "kubernetes.io/npu"}, None, "spec.npuResource", "outside kubernetes.io"),
    ({"npuResource": "Huawei.com/Ascend910"}, None, "spec.npuResource", "domain-qualified"),
    ({}, {"extraArgs": ["--train_dir", "/x"]}, "spec.stages[0].extraArgs[0]",
     "extraArgs must not set --train_dir: the operator sets it"),
    ({}, {"extraArgs": ["--max_steps", "3", "--train_dir=/x"]}, "spec.stages[0].extraArgs[2]",
     "extraArgs must not set --train_dir: the operator sets it"),
    ({}, {"extraArgs": ["--result_fi", "/tmp/r"]}, "spec.stages[0].extraArgs[0]",
     "extraArgs must not set --result_fi (an abbreviation of --result_file): the operator sets it"),
    ({}, {"extraArgs": ["--seed=3"]}, "spec.stages[0].extraArgs[0]", "extraArgs must not set --seed"),
    ({}, {"extraArgs": ["x" * (api.EXTRA_ARG_MAX + 1)]}, "spec.stages[0].extraArgs[0]", "Too long"),
    ({}, {"extraArgs": ["--max_steps"] * (api.MAX_EXTRA_ARGS + 1)}, "spec.stages[0].extraArgs", "Too many"),
    ({"template": {"env": [{"name": f"V{i}", "value": "x"} for i in range(300)]}}, None,
     "spec.template.env", "Too many"),
    ({"template": {"env": [{"name": "A", "value": "x" * (api.ENV_VALUE_MAX + 1)}]}}, None,
     "spec.template.env[0].value", "Too long"),
    (env({"name": "A B", "value": "x"}), None, f"{T}.env[0].name", "should match"),
    (env({"name": "A", "value": "x", "valueFrom": NODE}), None, f"{T}.env[0]", "valueFrom, not both"),
    (env({"name": "A", "valueFrom": {**NODE, "configMapKeyRef": {"name": "c", "key": "k"}}}), None,
     f"{T}.env[0].valueFrom", "exactly one of fieldRef, configMapKeyRef"),
    (env({"name": "A", "valueFrom": {}}), None, f"{T}.env[0].valueFrom", "exactly one of"),
    ({"template": {"resources": {"limits": {f"x.io/r{i}": 1 for i in range(api.MAX_RESOURCE_NAMES + 1)}}}},
     None, f"{T}.resources.limits", "Too many"),
    ({"template": {"resources": {"limits": {"memory": "lots"}}}}, None,
     "spec.template.resources.limits.memory", "should match"),
    ({"template": {"resources": {"requests": {"cpu": 0.5}}}}, None,
     "spec.template.resources.requests.cpu", "must be of type integer,string"),
    ({"template": {"annotations": {f"example.com/a{i}": "v" for i in range(api.MAX_MAP_ENTRIES + 1)}}}, None,
     "spec.template.annotations", "Too many"),
    ({"template": {"annotations": {"a": "v" * (api.ANNOTATION_VALUE_MAX + 1)}}}, None,
     "spec.template.annotations.a", "Too long"),
    ({"template": {"labels": {"k" * (api.QUALIFIED_NAME_MAX + 1): "v"}}}, None, "spec.template.labels",
     "keys must be 1 to 317 characters long"),
    ({"template": {"labels": {"team": "not a label value"}}}, None, f"{T}.labels.team", "should match"),
    ({"template": {"nodeSelector": {f"n{i}": "v" for i in range(api.MAX_MAP_ENTRIES + 1)}}}, None,
     "spec.template.nodeSelector", "Too many"),
    ({"template": {"tolerations": [{"key": "npu", "operator": "Sometimes"}]}}, None,
     "spec.template.tolerations[0].operator", "Unsupported value"),
    ({"template": {"tolerations": [{"key": "npu", "operator": "Exists", "value": "x"}]}}, None,
     "spec.template.tolerations[0].value", "value must be empty when operator is Exists"),
    ({"template": {"tolerations": [{"key": "npu", "operator": "Exists"}] * (api.MAX_TOLERATIONS + 1)}}, None,
     "spec.template.tolerations", "Too many"),
    ({"template": {"priorityClassName": "High_Priority"}}, None, f"{T}.priorityClassName", "should match"),
    ({"schedulerName": "x" * 254}, None, "spec.schedulerName", "Too long"),
    ({}, {"ignoreLabel": 256}, "spec.stages[0].ignoreLabel", "less than or equal to 255"),
    ({}, {"asppRates": [6, 12]}, "spec.stages[0].asppRates", "at least 3 items"),
    ({}, {"asppRates": [6, 0, 18]}, "spec.stages[0].asppRates[1]", "greater than or equal to 1"),
    ({}, {"endLR": -0.1}, "spec.stages[0].endLR", "greater than or equal to 0"),
    ({}, {"logSteps": 0}, "spec.stages[0].logSteps", "greater than or equal to 1"),
    ({}, {"numParallelWorkers": 0}, "spec.stages[0].numParallelWorkers", "greater than or equal to 1"),
    ({}, {"seed": -1}, "spec.stages[0].seed", "greater than or equal to 0"),
    ({}, {"freezeBn": "yes"}, "spec.stages[0].freezeBn", "boolean"),
    ({}, {"evaluate": {"dataList": "l", "scales": [0]}}, f"{S0}.evaluate.scales[0]", "greater than 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "stage", "field", "why"), REFUSED, ids=[f"{c[2]}-{i}" for i, c in enumerate(REFUSED)]
)
def test_the_api_server_refuses_and_names_the_field(kubectl, operator_installed, spec, stage, field, why):
    code, _, stderr = _server_dry_run(kubectl, _manifest(stage, **spec))
    assert code != 0, f"accepted: {spec} {stage}"
    assert any(form in stderr for form in (f"{field}:", f"{field} ", f'"{field}"')), stderr
    assert why in stderr, stderr


FULL_TEMPLATE = {
    "nodeSelector": {"accelerator": "huawei-Ascend910", "kubernetes.io/arch": "arm64"},
    "tolerations": [
        {"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "dedicated",
            "operator": "Equal",
            "value": "ai",
            "effect": "NoExecute",
            "tolerationSeconds": 30,
        },
    ],
    "resources": {
        "requests": {"cpu": 4, "memory": "32Gi"},
        "limits": {"memory": "64Gi", "example.com/fpga": 1},
    },
    "env": [
        {"name": "PLAIN", "value": "1"},
        {"name": "EMPTY", "value": ""},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "CFG", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": True}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
    ],
    "annotations": {"example.com/owner": "team-a", "note": "x" * api.ANNOTATION_VALUE_MAX},
    "labels": {"team": "a", "example.com/cost-centre": "42"},
    "priorityClassName": "high.priority",
    "terminationGracePeriodSeconds": 900,
}


def test_a_full_manifest_with_every_typed_field_is_accepted_as_written(kubectl, operator_installed):
    stage = {
        "freezeBn": True, "asppRates": [12, 24, 36], "endLR": 0.0001, "lrType": "poly", "seed": 7,
        "logSteps": 5, "numParallelWorkers": 4, "ignoreLabel": 255,
        "extraArgs": ["--max_steps", "100", "--lr_decay_step=100", "-v", "positional"],
        "evaluate": {"dataRoot": "/data", "dataList": "val.txt", "scales": [0.5, 1.0], "flip": True},
    }  # fmt: skip
    manifest = _manifest(
        stage, npuResource="example.com/npu", schedulerName="volcano", template=FULL_TEMPLATE
    )
    code, stdout, stderr = _server_dry_run(kubectl, manifest)
    assert code == 0, stderr
    stored = json.loads(stdout)["spec"]
    assert stored["template"] == FULL_TEMPLATE, "nothing pruned, nothing changed (cpu: 4 stays a number)"
    assert {k: stored["stages"][0][k] for k in stage} == stage
    assert stored["stages"][1]["saveSteps"] == 1500 and stored["stages"][1]["seed"] == 1
    # the controller reads it back as typed models, and the pod gets the Kubernetes shapes
    parsed = api.DeepLabTrainingSpec.model_validate(stored)
    assert parsed.template.resources.wire()["requests"] == {"cpu": "4", "memory": "32Gi"}
    assert parsed.template.wire()["env"] == FULL_TEMPLATE["env"]

    cpu = _manifest(None, npuResource="", launcher="dynamicCluster")
    code, _, stderr = _server_dry_run(kubectl, cpu)
    assert code == 0, stderr


def _explain(kubectl, path: str) -> str:
    result = kubectl("explain", path)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_kubectl_explain_shows_every_stage_field_with_its_description(kubectl, operator_installed):
    stage = crd.openapi_schema()["properties"]["spec"]["properties"]["stages"]["items"]["properties"]
    text = _explain(kubectl, "deeplabtrainings.spec.stages")
    for name, node in stage.items():
        description = " ".join(node["description"].split())
        assert re.search(rf"\b{name}\b", text), f"{name} not listed"
        assert description in text, f"{name}: {description!r} not in `kubectl explain`"
    assert "Default: 1500." in text and "in pixels" in text
    template = _explain(kubectl, "dlt.spec.template.env.valueFrom")
    assert "secretKeyRef" in template and "refused by the controller unless the admin allows it" in template
