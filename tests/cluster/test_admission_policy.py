"""The sample ValidatingAdmissionPolicy (manifests/samples/admission-policy.yaml) on the real API server:
an admin's limits on images, priority classes, tolerations and label/annotation keys refuse a training
at `kubectl apply`, naming the field."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import yaml
from kubelet import training_manifest

pytestmark = pytest.mark.cluster

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "admission-policy.yaml"


@pytest.fixture
def limited_namespace(kubectl, namespace):
    """The sample, its binding narrowed to this test's namespace (other tests' trainings unaffected)."""
    docs = list(yaml.safe_load_all(SAMPLE.read_text()))
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    binding["metadata"]["name"] = f"deeplab-training-limits-{namespace}"
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    binding["spec"]["matchResources"] = {"namespaceSelector": selector}
    applied = kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )
    assert applied.returncode == 0, applied.stderr
    try:
        yield namespace
    finally:
        for doc in reversed(docs):
            kind, meta = doc["kind"], doc["metadata"]
            args = ["delete", kind, meta["name"], "--ignore-not-found", "--wait=false"]
            kubectl(*args, *(["-n", meta["namespace"]] if "namespace" in meta else []))


def create(kubectl, manifest: dict):
    return kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest))


def test_the_sample_policy_refuses_what_the_admin_did_not_allow(kubectl, limited_namespace):
    ns = limited_namespace
    good = training_manifest("fine", ns, image="registry.example.com/deeplab/worker:1.0")
    bad_image = training_manifest("img", ns, image="evil.example.org/miner:latest")
    # the binding takes effect once the API server's policy informer has it: wait for the first refusal
    deadline = time.monotonic() + 30
    while (refused := create(kubectl, bad_image)).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert refused.returncode != 0 and "spec.image: evil.example.org/miner:latest" in refused.stderr
    assert "ValidatingAdmissionPolicy" in refused.stderr, refused.stderr

    allowed = copy.deepcopy(good)
    allowed["spec"]["template"] = {
        "priorityClassName": "training-high",
        "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}],
        "labels": {"team.example.com/cost-center": "ml"},
        "annotations": {"team.example.com/owner": "alice"},
    }
    accepted = create(kubectl, allowed)
    assert accepted.returncode == 0, accepted.stderr

    cases = [
        (
            "priorityClassName",
            "system-node-critical",
            "spec.template.priorityClassName: system-node-critical",
        ),
        ("tolerations", [{"operator": "Exists"}], "spec.template.tolerations: only keys"),
        ("labels", {"deeplab.io/role": "scheduler"}, "spec.template.labels: keys must start with"),
        ("annotations", {"scheduling.k8s.io/group-name": "x"}, "spec.template.annotations: keys must start"),
    ]
    for field, value, message in cases:
        manifest = copy.deepcopy(allowed)
        manifest["spec"]["template"][field] = value
        result = create(kubectl, manifest)
        assert result.returncode != 0 and message in result.stderr, (field, result.stderr)
