"""The NetworkPolicy sample fits the Deployment: same pods, the port the health server listens on."""

from __future__ import annotations

from pathlib import Path

import yaml

from controller import health

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _one(path: Path, kind: str) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)


def _controller_container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "controller")


def _health_port(container: dict) -> int:
    """The port of `--health-addr` on the container's command line (the server's own default if absent)."""
    argv = [*container.get("command", []), *container.get("args", [])]
    flag = next((a.split("=", 1)[1] for a in argv if a.startswith("--health-addr=")), ":8081")
    address = health.parse_address(flag)
    assert address is not None, "the Deployment's probes need the health server"
    return address[1]


def test_the_policy_selects_the_operator_pods_in_their_namespace():
    policy = _one(MANIFESTS / "samples/networkpolicy.yaml", "NetworkPolicy")
    deployment = _one(MANIFESTS / "deployment.yaml", "Deployment")
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_ingress_is_only_the_health_port_the_container_serves():
    policy = _one(MANIFESTS / "samples/networkpolicy.yaml", "NetworkPolicy")
    deployment = _one(MANIFESTS / "deployment.yaml", "Deployment")
    container = _controller_container(deployment)
    served = _health_port(container)
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(served)
    declared = {p["containerPort"] for p in container["ports"]}
    assert declared == {served}, "the container's port must be the one --health-addr listens on"
    allowed = [port for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    assert allowed == [{"protocol": "TCP", "port": served}]


def test_egress_is_the_api_server_and_dns_only():
    policy = _one(MANIFESTS / "samples/networkpolicy.yaml", "NetworkPolicy")
    rules = policy["spec"]["egress"]
    ports = {(p["protocol"], p["port"]) for rule in rules for p in rule["ports"]}
    assert ports == {("TCP", 6443), ("TCP", 443), ("UDP", 53), ("TCP", 53)}
    assert all(rule.get("to") for rule in rules), "an egress rule without `to` allows every destination"
    api_server = next(rule for rule in rules if {"protocol": "TCP", "port": 6443} in rule["ports"])
    assert [peer["ipBlock"]["cidr"].endswith("/32") for peer in api_server["to"]] == [True]
