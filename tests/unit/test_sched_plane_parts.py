"""The pure parts of the scheduling plane (envtest/sched.py): simulated Atlas nodes, kwok's stages,
Kueue's webhook list pointed at loopback."""

from __future__ import annotations

import ipaddress
from subprocess import CompletedProcess

from envtest import sched

KUEUE_WEBHOOKS = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mjob.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}}
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
- name: mworkload.kb.io
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-kueue-x-k8s-io-v1beta2-workload}
"""


def test_atlas_nodes_are_distinct_servers_with_eight_npus():
    nodes = sched.atlas_nodes(300)
    assert len({n.name for n in nodes}) == len({n.ip for n in nodes}) == 300
    networks = {ipaddress.ip_network(n.pod_cidr) for n in nodes}  # distinct /24s never overlap
    assert len(networks) == 300 and all(net.prefixlen == 24 for net in networks)
    body = nodes[5].manifest(extra_labels={"deeplab.io/pool": "p"})
    labels = body["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == body["metadata"]["name"] == "atlas-005"
    assert labels["accelerator-type"] == "module" and labels["topology.deeplab.io/rack"] == "rack-1"
    assert labels["deeplab.io/pool"] == "p"
    assert body["status"]["allocatable"][sched.NPU] == "8"
    assert {"type": "InternalIP", "address": nodes[5].ip} in body["status"]["addresses"]
    assert body["metadata"]["annotations"][sched.KWOK_NODE_ANNOTATION] == "fake"


def test_kwok_stages_run_bound_pods_but_never_finish_them():
    names = [stage["metadata"]["name"] for stage in sched.kwok_stages()]
    assert names == ["node-initialize", "pod-ready", "pod-delete"]
    assert all(stage["kind"] == "Stage" for stage in sched.kwok_stages())


def test_kueue_webhooks_point_at_loopback_and_only_what_is_served():
    hooks = sched.webhook_configurations(KUEUE_WEBHOOKS, "https://127.0.0.1:9443", "Q0E=")
    (config,) = hooks
    assert config["metadata"]["name"] == "kueue-mutating-webhook-configuration"
    by_name = {h["name"]: h for h in config["webhooks"]}
    assert set(by_name) == {"mpod.kb.io", "mworkload.kb.io"}  # batch/job is not enabled: no webhook
    pod = by_name["mpod.kb.io"]
    assert pod["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate--v1-pod", "caBundle": "Q0E="}
    assert pod["objectSelector"]["matchExpressions"][0]["key"] == sched.QUEUE_LABEL
    assert "deeplab-system" in pod["namespaceSelector"]["matchExpressions"][0]["values"]


def test_kueue_queues_give_the_namespace_npu_quota():
    flavor, cluster_queue, local = sched.kueue_queues("ns", "npu", npus=32)
    resources = cluster_queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    assert {"name": sched.NPU, "nominalQuota": 32} in resources
    assert local["metadata"] == {"name": "npu", "namespace": "ns"}
    assert local["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"]
    assert cluster_queue["spec"]["resourceGroups"][0]["flavors"][0]["name"] == flavor["metadata"]["name"]


def test_kwok_and_kueue_are_built_on_the_release_module_versions(tmp_path, monkeypatch):
    """Every module the plane also builds is replaced by the plane's version, so the tools reuse its compiled
    packages; the tools themselves and the documented overrides stay required, never replaced."""
    release = {
        "k8s.io/client-go": "v0.36.3",
        "golang.org/x/net": "v0.49.0",
        "github.com/kubeflow/trainer/v2": "v2.2.0",
    }
    monkeypatch.setattr(sched, "release_module_versions", lambda: ("1.26.0", release))
    ran = []
    monkeypatch.setattr(sched.subprocess, "run", lambda cmd, **_: ran.append(cmd) or CompletedProcess(cmd, 0))
    sched._write_tools_module(tmp_path)
    gomod = (tmp_path / "go.mod").read_text()
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3\n" in gomod
    assert "\tgolang.org/x/net => golang.org/x/net v0.49.0\n" in gomod
    assert "\tgithub.com/kubeflow/trainer/v2 v2.3.0\n" in gomod and "trainer/v2 =>" not in gomod
    for module, package, version in sched.TOOLS.values():
        assert f"\t{module} {version}\n" in gomod and f'_ "{package}"' in (tmp_path / "tools.go").read_text()
    assert gomod.startswith("module envtest.local/sched\n\ngo 1.26.0\n") and ran == [["go", "mod", "tidy"]]


def test_a_tool_built_another_way_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in sched.TOOLS:
        bin_dir = sched.tool_dir(name) / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / name).write_bytes(b"built by go install with the tool's own pins")
    assert sched._stale_tools() == list(sched.TOOLS)
    (sched.tool_dir("kwok") / "bin" / sched.RECIPE).write_text(sched._recipe("kwok"))
    assert sched._stale_tools() == ["kueue"]
