"""The NetworkPolicy sample is accepted by the real API server (schema and validation, nothing stored)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_namespace(kubectl, repo_root) -> str:
    """deeplab-system only (the policy's namespace), as `kubectl apply -k manifests/` would create it."""
    applied = kubectl("apply", "-f", str(repo_root / "manifests/namespace.yaml"))
    assert applied.returncode == 0, applied.stderr
    return "deeplab-system"


def test_the_networkpolicy_sample_passes_server_side_validation(kubectl, operator_namespace, repo_root):
    sample = repo_root / "manifests/samples/networkpolicy.yaml"
    applied = kubectl("apply", "--dry-run=server", "-o", "json", "-f", str(sample))
    assert applied.returncode == 0, applied.stderr
    stored = json.loads(applied.stdout)
    assert stored["kind"] == "NetworkPolicy" and stored["metadata"]["namespace"] == operator_namespace
    assert stored["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8081}]
    absent = kubectl("get", "networkpolicy", "deeplab-operator", "-n", operator_namespace)
    assert absent.returncode != 0, "a dry run must not create the policy"


def test_the_server_does_validate_a_broken_policy(kubectl, operator_namespace, repo_root):
    """The check above means something: the same dry run refuses a policy the API cannot hold."""
    sample = (repo_root / "manifests/samples/networkpolicy.yaml").read_text()
    broken = sample.replace("{protocol: TCP, port: 8081}", "{protocol: ICMP, port: 8081}")
    assert broken != sample
    applied = kubectl("apply", "--dry-run=server", "-f", "-", stdin=broken)
    assert applied.returncode != 0 and "protocol" in applied.stderr
