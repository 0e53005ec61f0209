"""What the operator generates really starts a distributed MindSpore job.

The controller's own pod specs for a 2-worker dynamicCluster training are turned into local
processes the way a kubelet would run them: the container command and env exactly as specified,
downward-API fields resolved, volume mount paths mapped to directories here, and the termination
log file provided. Nothing is substituted: MS_SCHED_HOST is the scheduler's pod IP in its own pod
and the Service's ClusterIP in the workers, as the controller writes them. The cluster network is
played as a CNI plugin and kube-proxy would: the scheduler's pod IP is an address of this machine
(a /32 on ``lo``) and an iptables DNAT rule sends the ClusterIP's port to it. Without containers,
this is as close to a pod as the machine allows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller import names, resources
from controller.api import Training
from envtest.plane import free_port

pytestmark = pytest.mark.mindspore
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "cpu-smoke.yaml"


def training(port: int) -> Training:
    obj = yaml.safe_load(SAMPLE.read_text())
    stage = obj["spec"]["stages"][0]
    stage.update(  # the sample's stage at the size of this test's data (below): 21 classes, batch 2
        cropSize=33, epochs=2, dataFile="smoke.mindrecord", logSteps=1, extraArgs=["--max_steps", "3"],
        numClasses=21, batchSize=2,
    )  # fmt: skip
    obj["spec"]["schedulerPort"] = port
    obj["metadata"].update(namespace="default", uid="0f0e0d0c-0000-4000-8000-000000000001")
    return Training.from_obj(obj)


# The scheduler pod's IP and the training Service's ClusterIP. Both exist only on this machine: the
# first as an address on lo, the second as the DNAT rule below (no packet leaves the machine).
SCHED_POD_IP = "10.250.0.2"
CLUSTER_IP = "10.96.77.7"
IPTABLES = "/usr/sbin/iptables"


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


def dnat_rule(port: int) -> list[str]:
    """kube-proxy's job for one Service port: ClusterIP:port -> the scheduler pod's IP:port."""
    return [
        "OUTPUT", "-d", f"{CLUSTER_IP}/32", "-p", "tcp", "--dport", str(port), "-m", "comment",
        "--comment", f"deeplab test service {os.getpid()}", "-j", "DNAT", "--to-destination",
        f"{SCHED_POD_IP}:{port}",
    ]  # fmt: skip


def dnat_packets(port: int) -> int:
    """How many packets the DNAT rule has rewritten (the workers' connections to the ClusterIP)."""
    listing = subprocess.run(
        [IPTABLES, "-t", "nat", "-L", "OUTPUT", "-v", "-n", "-x"], check=True, capture_output=True, text=True
    ).stdout
    mine = [line for line in listing.splitlines() if f"to:{SCHED_POD_IP}:{port}" in line]
    return sum(int(line.split()[0]) for line in mine)


@pytest.fixture
def service_network() -> Iterator[int]:
    """The Service's port, routed as in a cluster; the address and the rule go away afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: adds an address to lo and an iptables nat rule (the cluster network)")
    port = free_port()
    run("ip", "addr", "add", f"{SCHED_POD_IP}/32", "dev", "lo")
    try:
        run(IPTABLES, "-t", "nat", "-I", *dnat_rule(port))
        try:
            yield port
        finally:
            run(IPTABLES, "-t", "nat", "-D", *dnat_rule(port))
    finally:
        run("ip", "addr", "del", f"{SCHED_POD_IP}/32", "dev", "lo")


class PodRunner:
    """Runs a pod spec as a local process, as a kubelet would start it (tests/cluster/kubelet.py plays the
    other half of a kubelet: the pod status it reports to the API server)."""

    def __init__(self, root: Path, mounts: dict[str, Path], pod_ips: dict[str, str]):
        self.root, self.mounts, self.pod_ips = root, mounts, pod_ips

    def path(self, value: str) -> str:
        for mount, local in self.mounts.items():
            if value == mount or value.startswith(mount + "/"):
                return str(local) + value[len(mount) :]
        return value

    def env(self, pod: dict) -> dict[str, str]:
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": "default",
            "status.podIP": self.pod_ips.get(pod["metadata"]["name"], "127.0.0.1"),
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "DEEPLAB_", "RANK_"))}
        for var in pod["spec"]["containers"][0]["env"]:
            ref = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[var["name"]] = fields[ref] if ref else var["value"]
        env["MS_TOPO_TIMEOUT"] = "90"
        return env

    def start(self, pod: dict) -> subprocess.Popen:
        container = pod["spec"]["containers"][0]
        name = pod["metadata"]["name"]
        log_dir = self.root / name
        log_dir.mkdir()
        self.mounts[container["terminationMessagePath"]] = log_dir / "termination-log"
        command = [sys.executable if arg == "python" else self.path(arg) for arg in container["command"]]
        return subprocess.Popen(
            command, env=self.env(pod), cwd=log_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from job.data.convert import convert_list
    from job.data.synthetic import generate

    root = tmp_path_factory.mktemp("pods-data")
    train_lst, _ = generate(str(root), num_train=8, num_val=0, size=40, num_classes=21, seed=3)
    convert_list(str(root), train_lst, str(root / "smoke.mindrecord"), 1, True)
    return root


def test_two_worker_dynamic_cluster_pods_train_in_lockstep(
    data_dir: Path, tmp_path: Path, service_network: int
):
    t = training(service_network)
    pods = resources.desired_pods(t, 0, 1, resources.PodContext(sched_ip=CLUSTER_IP))
    roles = {name: pod["metadata"]["labels"][names.LABEL_ROLE] for name, pod in pods.items()}
    assert sorted(roles.values()) == sorted([names.ROLE_SCHEDULER, names.ROLE_WORKER, names.ROLE_WORKER])
    scheduler = next(name for name in pods if roles[name] == names.ROLE_SCHEDULER)
    checkpoints = tmp_path / "checkpoints"
    kubelet = PodRunner(tmp_path, {"/data": data_dir, "/checkpoints": checkpoints}, {scheduler: SCHED_POD_IP})
    # MindSpore gets IP addresses, as the controller wrote them: no name to resolve, nothing replaced.
    hosts = {name: kubelet.env(pod)["MS_SCHED_HOST"] for name, pod in pods.items()}
    assert hosts == {name: SCHED_POD_IP if name == scheduler else CLUSTER_IP for name in pods}
    processes = {}
    try:
        for name, pod in pods.items():
            processes[name] = kubelet.start(pod)
        outputs = {name: proc.communicate(timeout=300) for name, proc in processes.items()}
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, proc in processes.items():
        assert proc.returncode == 0, f"{name}: {outputs[name][1][-3000:]}"
        assert "resolved" not in outputs[name][1]  # the launcher passed the IP on unchanged
    assert dnat_packets(service_network) > 0  # the workers reached the scheduler through the ClusterIP

    workers = {
        int(pods[n]["metadata"]["labels"][names.LABEL_RANK]): n for n in pods if roles[n] == names.ROLE_WORKER
    }
    finished = {}
    for rank, name in workers.items():
        lines = [json.loads(x) for x in outputs[name][0].splitlines() if x.startswith("{")]
        finished[rank] = next(x for x in lines if x["event"] == "rank-finished")
        assert finished[rank]["rank"] == rank and finished[rank]["size"] == 2 and finished[rank]["step"] == 3
    # Data parallelism kept the weights identical on both ranks.
    assert finished[0]["param_l2"] == pytest.approx(finished[1]["param_l2"], rel=1e-6)
    assert finished[0]["param_sum"] == pytest.approx(finished[1]["param_sum"], rel=1e-6, abs=1e-3)

    # Rank 0 alone wrote the result (its termination message) and the checkpoints, at the pod paths.
    result = json.loads((tmp_path / workers[0] / "termination-log").read_text())
    stage_dir = f"/checkpoints/{t.name}/{t.spec.stages[0].name}"
    assert result["event"] == "result" and result["steps"] == 3
    assert result["checkpoint"] == kubelet.path(f"{stage_dir}/final.ckpt")
    assert Path(result["checkpoint"]).is_file()
    assert Path(kubelet.path(f"{stage_dir}/deeplab-00000003.ckpt")).is_file()
    assert not (tmp_path / workers[1] / "termination-log").exists()
