"""A real one-node cluster: the envtest plane plus containerd, kubelet, kube-scheduler and kube-proxy.

Everything stays on this machine. The node's address is a /32 added to ``lo`` (this kernel has no
dummy links), the API server listens there so pods reach it through the ``kubernetes`` Service,
pods live on a CNI bridge of their own, and kube-proxy (iptables mode) makes ClusterIP Services
work. containerd runs with its own generated config (the traps of FACTS.md section 6:
``restrict_oom_score_adj``, CNI plugins in /usr/lib/cni, a locally built sandbox image). Its
image store lives in the user's cache, so images imported once survive ``make node-down``;
everything else lives in the node's work directory and is removed with it. Needs root.

Stopping is by PID, last part first: the kubelet first deletes every pod while containerd and the
API server still run (so sandboxes, mounts and network namespaces are torn down by their owners),
then what is left is unmounted and the links, addresses and iptables chains the node made are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import urllib.error
from pathlib import Path

from envtest import images
from envtest.binaries import NODE_PACKAGES, PACKAGES, cache_dir, ensure_binaries, ensure_coredns
from envtest.plane import (
    APISERVER,
    CONTROLLER_MANAGER,
    ETCD,
    Component,
    ControlPlane,
    ControlPlaneError,
)

NODE_NAME = "deeplab-node"
NODE_IP = "10.231.0.1"  # a /32 on lo: pods reach it through the bridge gateway
POD_CIDR = "10.232.0.0/24"
SERVICE_CIDR = "10.0.0.0/24"  # the plane's; 10.0.0.1 is already in the serving certificate
BRIDGE = "dlcni0"
# The node runs real workloads, so its controller manager runs what a real one does.
NODE_CONTROLLERS = "*"  # every on-by-default controller: Deployments, Jobs, EndpointSlices, root CA...


class NodeError(ControlPlaneError):
    """The node cannot run here (not root, a package missing); one line says which."""


def containerd_root() -> Path:
    """Image store kept across node restarts: importing the worker image costs about a minute."""
    return cache_dir().parent / "node-containerd"


def socket(plane: ControlPlane) -> Path:
    return plane.workdir / "containerd" / "containerd.sock"


def _ctr(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess:
    cmd = ["ctr", "--address", str(socket(plane)), "-n", "k8s.io", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


# -- network: an address on lo, forwarding, the CNI config ---------------------------------------------
def _network_setup(plane: ControlPlane) -> None:
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (containerd, kubelet, iptables, network setup)")
    lo = subprocess.run(["ip", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
    if f" {NODE_IP}/" in lo:
        raise NodeError(f"another node runs here ({NODE_IP} is on lo): stop it with 'make node-down'")
    (plane.workdir / "network.owned").touch()  # from here on, cleanup undoes what this node did
    subprocess.run(["ip", "addr", "replace", f"{NODE_IP}/32", "dev", "lo"], check=True)
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    (plane.workdir / "ip_forward.orig").write_text(forward.read_text())
    forward.write_text("1")
    netns = Path("/run/netns")
    _shared_mount_point(netns)
    before = sorted(p.name for p in netns.iterdir()) if netns.is_dir() else []
    (plane.workdir / "netns.before").write_text("\n".join(before))
    conf_dir = plane.workdir / "cni" / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-deeplab.conflist").write_text(json.dumps(_cni_config(plane), indent=2))


def _shared_mount_point(netns: Path) -> None:
    """Make /run/netns a shared bind mount of itself before any pod's namespace is mounted under it.

    iproute2 (`ip netns add`) and rootful podman (`podman run`) do this the first time they meet a plain
    directory. Done while pods run, it hides their namespace mounts underneath: the kubelet can then no
    longer remove a finished pod's sandbox ("unlinkat /run/netns/cni-...: device or resource busy"), the
    pod stays Running with every container terminated, and its training waits for ever (seen with a
    `podman run` during `make demo`). Once it is a mount point those tools leave it alone. Left in
    place at the end, as they leave it."""
    netns.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(netns)]).returncode != 0:
        subprocess.run(["mount", "--bind", str(netns), str(netns)], check=True)
    subprocess.run(["mount", "--make-shared", str(netns)], check=True)


def _cni_config(plane: ControlPlane) -> dict:
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": POD_CIDR}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(plane.workdir / "cni" / "ipam"),
    }
    bridge = {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True}
    return {
        "cniVersion": "1.0.0",
        "name": "deeplab",
        "plugins": [{**bridge, "ipam": ipam}, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }


def _network_cleanup(plane: ControlPlane) -> None:
    if not (plane.workdir / "network.owned").is_file():
        return  # setup refused to start (another node runs): its network is not ours to remove
    subprocess.run(["ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo"], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            _remove_kube_chains(tool, table)
    original = plane.workdir / "ip_forward.orig"
    if original.is_file():
        Path("/proc/sys/net/ipv4/ip_forward").write_text(original.read_text().strip())


def _remove_kube_chains(tool: str, table: str) -> None:
    """The kubelet's KUBE-FIREWALL and canary chains (kube-proxy removes its own): jumps, then chains."""
    listed = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
    rules = listed.stdout.splitlines() if listed.returncode == 0 else []
    for rule in rules:
        words = shlex.split(rule)
        jumps_to_kube = "-j" in words and words[words.index("-j") + 1].startswith("KUBE-")
        if words[0] == "-A" and not words[1].startswith("KUBE-") and jumps_to_kube:
            subprocess.run([tool, "-t", table, "-D", *words[1:]], capture_output=True)
    chains = [rule.split()[1] for rule in rules if rule.startswith("-N KUBE-")]
    for flag in ("-F", "-X"):
        for chain in chains:
            subprocess.run([tool, "-t", table, flag, chain], capture_output=True)


NETWORK = Component("node-network", None, setup=_network_setup, cleanup=_network_cleanup)


# -- containerd -------------------------------------------------------------------------------------------
def _containerd_config(plane: ControlPlane) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{containerd_root()}"
state = "{plane.workdir / "containerd" / "state"}"

[grpc]
  address = "{socket(plane)}"

[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  # a negative oom_score_adj needs CAP_SYS_RESOURCE, which these machines do not grant
  restrict_oom_score_adj = true
  [{cri}.containerd]
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{plane.workdir / "cni" / "net.d"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{plane.workdir / "containerd" / "opt"}"
"""


def _containerd_setup(plane: ControlPlane) -> None:
    directory = plane.workdir / "containerd"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(_containerd_config(plane))


def _containerd_ready(plane: ControlPlane, timeout: float) -> None:
    plane.wait_until(lambda: _ctr(plane, "version").returncode == 0, timeout, "containerd")
    with open(plane.workdir / "images.log", "a") as log:
        images.import_image(socket(plane), images.ensure_pause(log), log)


def _containerd_cleanup(plane: ControlPlane) -> None:
    """After containerd: kill shims still serving our socket, unmount, drop stray network namespaces."""
    marker = str(socket(plane)).encode()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
            if marker in cmdline and b"containerd-shim" in cmdline:
                os.kill(int(proc.name), signal.SIGKILL)
    _unmount_under(plane.workdir, containerd_root())
    recorded = plane.workdir / "netns.before"
    before = set(recorded.read_text().split()) if recorded.is_file() else set()
    netns = Path("/run/netns")
    for entry in netns.iterdir() if netns.is_dir() else []:
        if entry.name.startswith("cni-") and entry.name not in before:
            subprocess.run(["ip", "netns", "del", entry.name], capture_output=True)


CONTAINERD = Component(
    "containerd",
    lambda plane: ["--config", str(plane.workdir / "containerd" / "config.toml")],
    _containerd_ready,
    binary="containerd",
    setup=_containerd_setup,
    cleanup=_containerd_cleanup,
)


# -- kubelet ----------------------------------------------------------------------------------------------
def kubelet_config(plane: ControlPlane) -> dict:
    """FACTS.md section 6: cgroup v1 with cgroupfs, no QoS cgroups, nothing reserved, swap tolerated."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "containerRuntimeEndpoint": f"unix://{socket(plane)}",
        "address": NODE_IP,
        "port": plane.port("kubelet"),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": plane.port("kubelet-healthz"),
        # The API server authenticates with the admin certificate; nothing else reaches NODE_IP.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(plane.pki["ca_cert"])},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # A shared test machine: evict nothing, never garbage-collect the imported images.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "fileCheckFrequency": "5s",
        "syncFrequency": "10s",  # how soon a ConfigMap volume shows an update (the rank table)
    }
    if any(c.name == "coredns" for c in plane.components):
        config["clusterDNS"] = [NODE_IP]
    return config


def _kubelet_setup(plane: ControlPlane) -> None:
    directory = plane.workdir / "kubelet"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(json.dumps(kubelet_config(plane), indent=2))


def _kubelet_args(plane: ControlPlane) -> list[str]:
    return [
        f"--config={plane.workdir / 'kubelet' / 'config.yaml'}",
        f"--kubeconfig={plane.kubeconfig}",
        f"--root-dir={plane.workdir / 'kubelet' / 'root'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        "--v=1",
    ]


def _node_ready(plane: ControlPlane) -> bool:
    try:
        node = json.loads(plane.get(f"/api/v1/nodes/{NODE_NAME}"))
    except (OSError, urllib.error.URLError):
        return False
    conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
    taints = [t["key"] for t in node.get("spec", {}).get("taints", [])]
    return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints


def _kubelet_drain(plane: ControlPlane) -> None:
    """Delete every pod while the kubelet still runs: it stops their containers, sandboxes and mounts."""
    kubectl = [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig)]
    subprocess.run(
        [*kubectl, "delete", "pods", "--all", "--all-namespaces", "--grace-period=5", "--timeout=60s"],
        capture_output=True,
        timeout=90,
    )
    plane.wait_until(lambda: not _ctr(plane, "tasks", "ls", "-q").stdout.strip(), 30, "containers to stop")


def _kubelet_cleanup(plane: ControlPlane) -> None:
    _unmount_under(plane.workdir / "kubelet")


KUBELET = Component(
    "kubelet",
    _kubelet_args,
    lambda plane, timeout: plane.wait_until(lambda: _node_ready(plane), timeout, f"node {NODE_NAME} Ready"),
    setup=_kubelet_setup,
    before_stop=_kubelet_drain,
    cleanup=_kubelet_cleanup,
)


# -- kube-scheduler and kube-proxy ------------------------------------------------------------------------
def _https_health(port_key: str, what: str):
    def check(plane: ControlPlane, timeout: float) -> None:
        plane.wait_until(lambda: _healthz(f"https://127.0.0.1:{plane.port(port_key)}/healthz"), timeout, what)

    return check


def _healthz(url: str) -> bool:
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the component's self-signed serving cert; only "ok" matters
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _scheduler_args(plane: ControlPlane) -> list[str]:
    return [
        f"--kubeconfig={plane.kubeconfig}",
        f"--authentication-kubeconfig={plane.kubeconfig}",
        f"--authorization-kubeconfig={plane.kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={plane.port('kube-scheduler')}",
        "--v=1",
    ]


def _proxy_args(plane: ControlPlane) -> list[str]:
    return [
        f"--kubeconfig={plane.kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        "--proxy-mode=iptables",
        f"--cluster-cidr={POD_CIDR}",
        f"--nodeport-addresses={NODE_IP}/32",
        f"--healthz-bind-address=127.0.0.1:{plane.port('kube-proxy-healthz')}",
        f"--metrics-bind-address=127.0.0.1:{plane.port('kube-proxy-metrics')}",
        # Leave the host's conntrack sysctls alone: a shared VM, and no CAP_SYS_RESOURCE.
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0s",
        "--conntrack-tcp-timeout-close-wait=0s",
        "--v=1",
    ]


def _proxy_ready(plane: ControlPlane, timeout: float) -> None:
    url = f"http://127.0.0.1:{plane.port('kube-proxy-healthz')}/healthz"
    plane.wait_until(lambda: _healthz(url), timeout, "kube-proxy")


def _proxy_cleanup(plane: ControlPlane) -> None:
    """Remove the KUBE-* chains; kube-proxy's own --cleanup knows them all."""
    proxy = plane.bin_dir / "kube-proxy"
    subprocess.run([str(proxy), "--cleanup", "--proxy-mode=iptables"], capture_output=True, timeout=60)


# -- cluster DNS ------------------------------------------------------------------------------------------
def _corefile(plane: ControlPlane) -> str:
    """cluster.local from the API (Services, and pod A records), the rest forwarded to the host's resolver."""
    return f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{plane.port("coredns-ready")}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {plane.kubeconfig} envtest
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 30
}}
"""


def _coredns_setup(plane: ControlPlane) -> None:
    (plane.workdir / "Corefile").write_text(_corefile(plane))


def _coredns_ready(plane: ControlPlane, timeout: float) -> None:
    url = f"http://127.0.0.1:{plane.port('coredns-ready')}/ready"
    plane.wait_until(lambda: _healthz(url), timeout, "coredns")


COREDNS = Component(
    "coredns",
    lambda plane: ["-conf", str(plane.workdir / "Corefile")],
    _coredns_ready,
    setup=_coredns_setup,
)
SCHEDULER = Component("kube-scheduler", _scheduler_args, _https_health("kube-scheduler", "kube-scheduler"))
PROXY = Component("kube-proxy", _proxy_args, _proxy_ready, cleanup=_proxy_cleanup)


def node_components(dns: bool = True) -> list[Component]:
    """The node's parts in start order; ``dns`` adds CoreDNS (the kubelet then points pods at it)."""
    return [
        NETWORK, ETCD, APISERVER, CONTROLLER_MANAGER, *([COREDNS] if dns else []),
        CONTAINERD, KUBELET, SCHEDULER, PROXY,
    ]  # fmt: skip


def new_node(workdir: Path, dns: bool = True) -> ControlPlane:
    """A node plane (not started); builds the node binaries the first time (about a minute warm)."""
    bin_dir = ensure_binaries(names=(*PACKAGES, *NODE_PACKAGES))
    if dns:
        ensure_coredns()
    return ControlPlane(
        workdir,
        bin_dir,
        components=node_components(dns),
        address=NODE_IP,
        service_cidr=SERVICE_CIDR,
        controllers=NODE_CONTROLLERS,
        kind="node",
    )


# -- mounts -----------------------------------------------------------------------------------------------
def _unmount_under(*roots: Path) -> None:
    """Lazily unmount every mount below ``roots``, deepest first (kubelet leaves bind and tmpfs mounts)."""
    prefixes = [str(r.resolve()) + "/" for r in roots]
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point.startswith(p) for p in prefixes):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def leftover_mounts(plane: ControlPlane) -> list[str]:
    """Mounts below the node's directories (a test asserts none survive ``stop``)."""
    prefixes = [str(plane.workdir.resolve()) + "/", str(containerd_root()) + "/"]
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if any(p.startswith(prefix) for prefix in prefixes)]
