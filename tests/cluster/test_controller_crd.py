"""The CRD itself validates: the API server refuses bad manifests with its own message, and defaults."""

from __future__ import annotations

import copy

import pytest
from kubelet import training_manifest

pytestmark = pytest.mark.cluster


def refused(kubectl, manifest) -> str:
    import json

    result = kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest))
    assert result.returncode != 0, f"accepted: {manifest['spec']}"
    return result.stderr


def mutate(**changes):
    manifest = training_manifest("bad", "default")
    for path, value in changes.items():
        node = manifest["spec"]
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return manifest


def test_valid_manifest_gets_server_side_defaults(kubectl, operator_installed):
    import json

    result = kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        stdin=json.dumps(training_manifest("ok", "default")),
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    assert spec["npuResource"] == "huawei.com/Ascend910" and spec["launcher"] == "rankTable"
    assert spec["backoffLimit"] == 3 and spec["imagePullPolicy"] == "IfNotPresent"
    assert spec["stages"][0]["model"] == "deeplab_v3_s16" and spec["stages"][0]["lrType"] == "cos"
    assert spec["stages"][0]["cropSize"] == 513 and spec["stages"][0]["ignoreLabel"] == 255


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"workers": 0},
            "spec.workers: Invalid value: 0: spec.workers in body should be greater than or equal to 1",
        ),
        ({"workers": 3}, "workers spanning more than one server must fill whole servers"),
        ({"launcher": "mpi"}, 'spec.launcher: Unsupported value: "mpi"'),
        ({"stages__1__name": "s16"}, "stage names must be unique"),
        ({"stages__0__initFrom": "s8"}, "initFrom must name an earlier stage"),
        ({"stages__1__initFrom": "nowhere"}, "initFrom must name an earlier stage"),
        ({"stages__0__name": "Stage_One"}, "spec.stages[0].name"),
        ({"stages__0__lrType": "step"}, "spec.stages[0].lrType: Unsupported value"),
        ({"stages__0__baseLR": 0}, "spec.stages[0].baseLR"),
        ({"stages": []}, "spec.stages: Invalid value"),
        (
            {"volumes__data": {"hostPath": {"path": "/d"}, "emptyDir": {}}},
            "exactly one of persistentVolumeClaim",
        ),
        ({"volumes__data": {}}, "exactly one of persistentVolumeClaim"),
        ({"image": ""}, "spec.image"),
    ],
)
def test_invalid_manifests_are_refused_with_the_servers_message(
    kubectl, operator_installed, changes, message
):
    assert message in refused(kubectl, mutate(**changes))


def test_stages_are_immutable(kubectl, operator_installed):
    import json

    manifest = training_manifest("frozen", "default")
    assert kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).returncode == 0
    try:
        changed = copy.deepcopy(manifest)
        changed["spec"]["stages"][0]["epochs"] = 99
        result = kubectl("apply", "-f", "-", stdin=json.dumps(changed))
        assert result.returncode != 0 and "immutable" in result.stderr
        changed = copy.deepcopy(manifest)
        changed["spec"]["suspend"] = True
        assert kubectl("apply", "-f", "-", stdin=json.dumps(changed)).returncode == 0, "suspend stays mutable"
    finally:
        kubectl("delete", "dlt", "frozen", "-n", "default", "--wait=false")
