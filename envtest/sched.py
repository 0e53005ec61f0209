"""A test plane that really schedules: kube-scheduler, kwok's simulated Atlas 800 nodes, optionally Kueue.

The envtest plane has no scheduler: tests used to bind pods and invent their IPs themselves. Here
the release's kube-scheduler binds them, and kwok (``sigs.k8s.io/kwok``, the simulator SIG Scheduling
and Kueue use for scale tests) plays the kubelets of many nodes shaped like Atlas 800 servers: eight
``huawei.com/Ascend910`` allocatable, the labels a real node carries, a pod CIDR per node. kwok's
stages are configured so a bound pod becomes Running with an IP from its node's CIDR and is removed
when deleted; completion and failure stay with the tests (there is no ``pod-complete`` stage). The
NPU annotation is written by envtest/device_plugin.py, and Kueue (``sigs.k8s.io/kueue``) adds
all-or-nothing admission for ``gang: kueue``.

kwok and Kueue are built once into the same cache as the release binaries, against the release's own
module versions (envtest/binaries.py), so they reuse the plane's compiled packages; Kueue's CRDs and
webhook manifests are copied from its module at that version.
Kueue runs outside the cluster: its webhooks are registered by URL on loopback, served with the
plane's API-server certificate (SAN 127.0.0.1, signed by the plane's CA, which is the caBundle).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from envtest.binaries import (
    KUBERNETES_VERSION,
    PACKAGES,
    BinariesUnavailable,
    cache_root,
    ensure_binaries,
    release_module_versions,
)
from envtest.node import SCHEDULER
from envtest.plane import APISERVER, CONTROLLER_MANAGER, ETCD, Component, ControlPlane, ControlPlaneError

KWOK_VERSION = "v0.8.0"
KUEUE_VERSION = "v0.17.0"
# binary name -> (module, package, version).
TOOLS = {
    "kwok": ("sigs.k8s.io/kwok", "sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION),
    "kueue": ("sigs.k8s.io/kueue", "sigs.k8s.io/kueue/cmd/kueue", KUEUE_VERSION),
}
# Built on the release's module set, Kueue v0.17.0's own pin of Kubeflow Trainer (v2.2.0) does not compile:
# its generated OpenAPI names corev1.WorkloadReference, which k8s.io/api v0.36 dropped. Trainer v2.3.0 is
# built on v0.36; only Kueue's TrainJob integration, which these tests never enable, uses it.
OVERRIDES = {"github.com/kubeflow/trainer/v2": "v2.3.0"}
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
NPU = "huawei.com/Ascend910"
KUEUE_NAMESPACE = "kueue-system"
MERGE = "application/merge-patch+json"
# Namespaces Kueue's pod webhooks never see (the operator's own, the system ones).
UNMANAGED_NAMESPACES = ("kube-system", KUEUE_NAMESPACE, "deeplab-system")
RECIPE = ".recipe"  # next to each binary: how it was built (_recipe); another recipe means a rebuild


# -- binaries ---------------------------------------------------------------------------------------------
def tool_dir(name: str) -> Path:
    return cache_root() / f"{name}-{TOOLS[name][2]}"


def ensure_tool(name: str, build: bool = True, log=sys.stderr) -> Path:
    """The cached ``kwok`` or ``kueue`` binary; the first call builds every missing tool (minutes)."""
    binary = tool_dir(name) / "bin" / name
    config = tool_dir(name) / "config" / "crd"
    stale = _stale_tools()
    if not stale and (name != "kueue" or config.is_dir()):
        return binary
    if not build or shutil.which("go") is None:
        raise BinariesUnavailable(f"no {binary}: build it with 'make sched-binaries' (needs Go, the proxy)")
    if stale:
        _build_tools(stale, log)
    if name == "kueue":
        module, _, version = TOOLS[name]
        _copy_kueue_manifests(_module_dir(module, version), tool_dir(name) / "config")
    return binary


def _recipe(name: str) -> str:
    module, _, version = TOOLS[name]
    overrides = ", ".join(f"{m}@{v}" for m, v in OVERRIDES.items())
    return f"{module}@{version} on k8s.io/kubernetes@{KUBERNETES_VERSION}'s module set; {overrides}\n"


def _stale_tools() -> list[str]:
    """Tools with no binary, or one built another way (an older ``go install`` with their own pins)."""
    stale = []
    for name in TOOLS:
        binary, stamp = tool_dir(name) / "bin" / name, tool_dir(name) / "bin" / RECIPE
        if not (binary.is_file() and stamp.is_file() and stamp.read_text() == _recipe(name)):
            stale.append(name)
    return stale


def _build_tools(names: list[str], log) -> None:
    """One ``go build`` of the tools in a module that pins the plane's versions (release_module_versions):
    358 of their 1,793 packages are not the plane's (kwok, Kueue, controller-runtime, ...). Measured on 2
    cores with empty Go caches: 4 min 58 s, against 7 min 27 s for ``go install`` of each with its own
    pins (a second, older Kubernetes for Kueue)."""
    print(f"envtest: building {' and '.join(names)} (first time only, takes minutes)", file=log)
    module_dir = cache_root() / "sched" / "module"
    _write_tools_module(module_dir)
    staging = module_dir / ".bin"
    shutil.rmtree(staging, ignore_errors=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    packages = [TOOLS[name][1] for name in names]
    cmd = ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", f"{staging}/", *packages]
    result = subprocess.run(cmd, cwd=module_dir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BinariesUnavailable(f"go build {' '.join(packages)} failed:\n{result.stderr[-4000:]}")
    for name in names:
        binary = tool_dir(name) / "bin" / name
        binary.parent.mkdir(parents=True, exist_ok=True)
        (staging / name).replace(binary)  # atomic: a half-built binary is never taken as cached
        (binary.parent / RECIPE).write_text(_recipe(name))


def _write_tools_module(module_dir: Path) -> None:
    """A go.mod requiring the tools; each module the release also uses is pinned to the release's version."""
    go_line, release = release_module_versions()
    required = {module: version for module, _, version in TOOLS.values()} | OVERRIDES
    pinned = {module: version for module, version in release.items() if module not in required}
    lines = [
        "module envtest.local/sched",
        "",
        f"go {go_line}",
        "",
        "require (",
        *[f"\t{module} {version}" for module, version in sorted(required.items())],
        ")",
        "",
        "replace (",
        *[f"\t{module} => {module} {version}" for module, version in sorted(pinned.items())],
        ")",
        "",
    ]
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "go.mod").write_text("\n".join(lines))
    imports = "\n".join(f'\t_ "{package}"' for _, package, _ in TOOLS.values())
    (module_dir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    result = subprocess.run(["go", "mod", "tidy"], cwd=module_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise BinariesUnavailable(f"go mod tidy in {module_dir} failed:\n{result.stderr[-4000:]}")


def _module_dir(module: str, version: str) -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True, cwd="/"
    )
    if out.returncode != 0:
        raise BinariesUnavailable(f"go mod download {module}@{version} failed: {out.stdout}{out.stderr}")
    return Path(json.loads(out.stdout)["Dir"])


def _copy_kueue_manifests(module_dir: Path, config: Path) -> None:
    """The version's own CRDs and webhook list: the API the binary serves, never a hand-written copy."""
    tmp = config.with_name(".config.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(module_dir / "config" / "components" / "crd" / "bases", tmp / "crd")
    shutil.copy(module_dir / "config" / "components" / "webhook" / "manifests.yaml", tmp / "webhooks.yaml")
    for path in tmp.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)  # the module cache is read-only
    shutil.rmtree(config, ignore_errors=True)
    tmp.replace(config)


# -- simulated Atlas 800 nodes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AtlasNode:
    """One simulated Atlas 800 (Ascend 910) server: eight NPUs in two HCCS rings."""

    index: int
    per_rack: int = 4

    @property
    def name(self) -> str:
        return f"atlas-{self.index:03d}"

    @property
    def ip(self) -> str:
        return f"10.240.{self.index // 250}.{self.index % 250 + 1}"

    @property
    def pod_cidr(self) -> str:
        return f"10.{64 + self.index // 256}.{self.index % 256}.0/24"

    @property
    def rack(self) -> str:
        return f"rack-{self.index // self.per_rack}"

    def manifest(self, npus: int = 8, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "arm64",  # Atlas 800 9000: Kunpeng 920
            "node-role.kubernetes.io/worker": "",
            "accelerator": "huawei-Ascend910",  # MindX's NPU node label
            "accelerator-type": "module",  # Atlas 800 training server (MindX nodeSelector)
            "host-arch": "huawei-arm",
            "topology.deeplab.io/rack": self.rack,  # the ToR switch the server hangs off
            "type": "kwok",
            **(extra_labels or {}),
        }
        resources = {
            "cpu": "192",
            "memory": "1536Gi",
            "pods": "110",
            "ephemeral-storage": "3Ti",
            NPU: str(npus),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    {"type": "InternalIP", "address": self.ip},
                    {"type": "Hostname", "address": self.name},
                ],
            },
        }


def atlas_nodes(count: int, per_rack: int = 4) -> list[AtlasNode]:
    return [AtlasNode(i, per_rack) for i in range(count)]


def add_nodes(core, nodes: list[AtlasNode], npus: int = 8, extra_labels: dict[str, str] | None = None):
    """Register the nodes as a kubelet would, in an order that survives kwok's node-initialize stage.

    kwok fills in a new node's status (Ready, and addresses or allocatable when missing) with a patch
    computed from the node it saw; written at the same time, the Atlas status (InternalIP, 8 NPUs)
    could be lost. So: create, wait until kwok has marked each node Ready (its stage never fires
    again), then write the status, then lift the not-ready taint the API server puts on every new
    node (the node lifecycle controller's job; it is not in this plane: without kubelet heartbeats it
    would evict everything)."""
    for node in nodes:
        body = node.manifest(npus, extra_labels)
        core.create_node({k: v for k, v in body.items() if k != "status"}, _preload_content=False)
    pending = {node.name: node for node in nodes}
    deadline = time.monotonic() + 60 + len(nodes) / 2
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            found = json.loads(core.read_node(name, _preload_content=False).data)
            conditions = (found.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                status = pending.pop(name).manifest(npus, extra_labels)["status"]
                core.patch_node_status(name, {"status": status}, _preload_content=False)
                core.patch_node(name, {"spec": {"taints": None}}, _content_type=MERGE, _preload_content=False)
        time.sleep(0.2)
    if pending:
        raise ControlPlaneError(f"kwok did not mark {sorted(pending)[:5]} Ready; is it running?")


# -- kwok -------------------------------------------------------------------------------------------------
def kwok_stages() -> list[dict[str, Any]]:
    """kwok's own fast node/pod stages (kustomize/stage/{node,pod}/fast), minus ``pod-complete``: a pod
    is Running (IP from its node's CIDR) once bound, gone once deleted, and finishes when a test says."""
    here = Path(__file__).with_name("kwok-stages.yaml")
    return list(yaml.safe_load_all(here.read_text()))


def kwok_configuration(pod_writers: int = 32) -> dict[str, Any]:
    """kwok's options. It plays every node's kubelet from one process, writing pod status with
    ``podPlayStageParallelism`` requests at a time (4 by default): with 1,024 pods bound at once, Running
    trailed binding by ~2 minutes (bench/README.md), where a real cluster has one kubelet per node
    reporting its own pods. Given a KwokConfiguration, kwok wants every parallelism set (0 is refused)."""
    options = {"podPlayStageParallelism": pod_writers, "nodePlayStageParallelism": 4,
               "nodeLeaseParallelism": 4, "podsOnNodeSyncParallelism": 1}  # fmt: skip
    return {"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration", "options": options}


def _kwok_setup(plane: ControlPlane) -> None:
    (plane.workdir / "kwok.yaml").write_text(yaml.safe_dump_all([kwok_configuration(), *kwok_stages()]))


def _kwok_args(plane: ControlPlane) -> list[str]:
    return [
        f"--kubeconfig={plane.kubeconfig}",
        f"--config={plane.workdir / 'kwok.yaml'}",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--server-address=127.0.0.1:{plane.port('kwok')}",
        "--cidr=10.63.0.0/16",  # only for a node without podCIDR; every Atlas node has its own
        "--node-lease-duration-seconds=0",
    ]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _kwok_ready(plane: ControlPlane, timeout: float) -> None:
    url = f"http://127.0.0.1:{plane.port('kwok')}/healthz"
    plane.wait_until(lambda: _http_ok(url), timeout, "kwok")


# -- Kueue ------------------------------------------------------------------------------------------------
def kueue_config(plane: ControlPlane) -> dict[str, Any]:
    """Only the plain-pod integration; webhooks on loopback with the plane's certificate; no leader
    election, no internal cert rotation (it would mint certificates for an in-cluster Service)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{plane.port('kueue-health')}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {
            "port": plane.port("kueue-webhook"),
            "host": "127.0.0.1",
            "certDir": str(_cert_dir(plane)),
        },
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["pod"]},
        "managedJobsNamespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": list(UNMANAGED_NAMESPACES),
                }
            ]
        },
    }


def _cert_dir(plane: ControlPlane) -> Path:
    return plane.workdir / "kueue-certs"


def webhook_configurations(manifest: str, base_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, pointed at ``base_url`` and kept to what this plane serves:
    Kueue's own kinds and pods (the other integrations are off, so their paths would answer 404 and,
    with failurePolicy Fail, refuse every Job or Deployment). Pod webhooks only see pods that name a
    queue, outside the system namespaces: Kueue leaves every other pod alone anyway."""
    kept = []
    for config in yaml.safe_load_all(manifest):
        if not config:
            continue
        hooks = []
        for hook in config.get("webhooks") or ():
            path = hook["clientConfig"]["service"]["path"]
            is_pod = path.endswith("--v1-pod")
            if not (is_pod or "kueue-x-k8s-io" in path):
                continue
            hook["clientConfig"] = {"url": base_url + path, "caBundle": ca_bundle}
            if is_pod:
                names = {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": list(UNMANAGED_NAMESPACES),
                }
                hook["namespaceSelector"] = {"matchExpressions": [names]}
                hook["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
            hooks.append(hook)
        config["metadata"]["name"] = "kueue-" + config["metadata"]["name"]
        config["webhooks"] = hooks
        kept.append(config)
    return kept


QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
POD_GROUP_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> None:
    cmd = [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args[:2])}: {result.stderr.strip()[-2000:]}")


# With its own certificate rotation off, Kueue reads the metrics certificate from this fixed path
# (cmd/kueue/main.go; no flag or config field moves it), even when metrics are off. The plane puts
# its serving certificate there for Kueue's lifetime and removes the directory afterwards.
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")


def _kueue_metrics_certs(plane: ControlPlane) -> None:
    if (KUEUE_METRICS_CERTS / "tls.crt").is_file():
        return  # an earlier or concurrent plane's: any certificate will do, nothing scrapes it
    try:
        KUEUE_METRICS_CERTS.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise ControlPlaneError(f"kueue needs {KUEUE_METRICS_CERTS}: {error}") from None
    shutil.copy(plane.pki["serving_cert"], KUEUE_METRICS_CERTS / "tls.crt")
    shutil.copy(plane.pki["serving_key"], KUEUE_METRICS_CERTS / "tls.key")
    (plane.workdir / "kueue-made-metrics-certs").touch()


def _kueue_cleanup(plane: ControlPlane) -> None:
    if (plane.workdir / "kueue-made-metrics-certs").is_file():
        shutil.rmtree(KUEUE_METRICS_CERTS.parent.parent, ignore_errors=True)  # /etc/kueue, ours


def _kueue_setup(plane: ControlPlane) -> None:
    import base64

    config_dir = tool_dir("kueue") / "config"
    _kueue_metrics_certs(plane)
    certs = _cert_dir(plane)
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copy(plane.pki["serving_cert"], certs / "tls.crt")
    shutil.copy(plane.pki["serving_key"], certs / "tls.key")
    (plane.workdir / "kueue.yaml").write_text(yaml.safe_dump(kueue_config(plane)))
    # CRDs are large (client-side apply would overflow the last-applied annotation): server-side apply.
    _kubectl(plane, "apply", "--server-side", "-f", str(config_dir / "crd"))
    _kubectl(plane, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    _kubectl(plane, "create", "namespace", KUEUE_NAMESPACE)
    ca = base64.b64encode(plane.pki["ca_cert"].read_bytes()).decode()
    base = f"https://127.0.0.1:{plane.port('kueue-webhook')}"
    hooks = webhook_configurations((config_dir / "webhooks.yaml").read_text(), base, ca)
    _kubectl(
        plane, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": hooks})
    )


def _kueue_args(plane: ControlPlane) -> list[str]:
    return [
        f"--config={plane.workdir / 'kueue.yaml'}",
        f"--kubeconfig={plane.kubeconfig}",
        "--feature-gates=VisibilityOnDemand=false",  # its API server would want certificates in /visibility
        "--zap-log-level=2",
    ]


def _kueue_ready(plane: ControlPlane, timeout: float) -> None:
    url = f"http://127.0.0.1:{plane.port('kueue-health')}/readyz"
    plane.wait_until(lambda: _http_ok(url), timeout, "kueue")


def _with_binary(component: Component, name: str) -> Component:
    return Component(
        component.name, component.args, component.ready, str(ensure_tool(name)),
        component.setup, component.before_stop, component.cleanup,
    )  # fmt: skip


KWOK = Component("kwok", _kwok_args, _kwok_ready, setup=_kwok_setup)
KUEUE = Component("kueue", _kueue_args, _kueue_ready, setup=_kueue_setup, cleanup=_kueue_cleanup)


def sched_components(kueue: bool = False) -> list[Component]:
    """etcd, kube-apiserver, the slim controller manager, kube-scheduler, kwok (and Kueue), in start order."""
    parts = [ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, _with_binary(KWOK, "kwok")]
    return parts + ([_with_binary(KUEUE, "kueue")] if kueue else [])


def new_sched_plane(workdir: Path, kueue: bool = False) -> ControlPlane:
    """A scheduling plane (not started); builds kube-scheduler, kwok and Kueue the first time."""
    bin_dir = ensure_binaries(names=(*PACKAGES, "kube-scheduler"))
    return ControlPlane(workdir, bin_dir, components=sched_components(kueue), kind="sched")


def kueue_queues(
    namespace: str, queue: str, npus: int, cpu: str = "10000", memory: str = "100Ti"
) -> list[dict]:
    """A ResourceFlavor for the Atlas nodes, a ClusterQueue with ``npus`` of quota and the
    namespace's LocalQueue ``queue`` pointing at it."""
    group = "kueue.x-k8s.io/v1beta2"
    flavor = {"apiVersion": group, "kind": "ResourceFlavor", "metadata": {"name": "atlas-800"},
              "spec": {"nodeLabels": {"accelerator-type": "module"}}}  # fmt: skip
    resources = [
        {"name": "cpu", "nominalQuota": cpu},
        {"name": "memory", "nominalQuota": memory},
        {"name": NPU, "nominalQuota": npus},
    ]
    cluster_queue = {
        "apiVersion": group,
        "kind": "ClusterQueue",
        "metadata": {"name": f"npu-{namespace}"},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": [r["name"] for r in resources],
                    "flavors": [{"name": "atlas-800", "resources": resources}],
                }
            ],
        },
    }
    local = {"apiVersion": group, "kind": "LocalQueue", "metadata": {"name": queue, "namespace": namespace},
             "spec": {"clusterQueue": f"npu-{namespace}"}}  # fmt: skip
    return [flavor, cluster_queue, local]


def main(argv: list[str] | None = None) -> int:
    """`make sched-binaries`: kube-scheduler, kwok and Kueue built into the cache (minutes, once)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m envtest.sched", description=main.__doc__)
    parser.add_argument("command", choices=["build"])
    parser.parse_args(argv)
    try:
        print(ensure_binaries(names=(*PACKAGES, "kube-scheduler")) / "kube-scheduler")
        for name in TOOLS:
            print(ensure_tool(name))
    except BinariesUnavailable as error:
        print(f"envtest: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
