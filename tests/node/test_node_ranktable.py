"""The rankTable launcher in real pods of the worker image (issue #12 section 4).

A two-worker CPU training with ``launcher: rankTable``: the operator writes MindX DL's HCCL rank table
into the ConfigMap the worker pods mount at /user/serverid/devindex/config, and each pod's launcher
(``python -m job launch``) waits until that volume shows the completed table of its own attempt, finds
its rank, exports RANK_TABLE_FILE (a private copy), RANK_ID, RANK_SIZE and DEVICE_ID and execs the job.

The test plays the Ascend device plugin: each worker pod gets the plugin's allocation annotation
(envtest/device_plugin.py's format and chip choice, server_id the node's InternalIP), and the table
must be built from it (the chips' ids and addresses), not from the pods' own addresses. A real plugin
annotates during the kubelet's admission, before the pod has a sandbox or an IP; a test cannot hook in
there, so it keeps that order by holding the pods off the node (a node selector on a label the node
gets only once both pods are annotated). The kubelet mounts the ConfigMap before it creates the
sandbox, and the operator completes the table only once every worker has an IP, so each launcher
starts on the ``initializing`` table and must see the kubelet refresh the volume in place.

What runs after the launcher: the job stops right after the launcher has printed and exported what it
would use. It is a real job process, but not a training: MindSpore's CPU backend forms a group only
through the dynamic cluster (MS_* variables, a scheduler process), which a rank table does not give,
so ``init()`` refuses (MindSpore 2.10: "RuntimeError: Maybe you are trying to call
'mindspore.communication.init()' without using 'mpirun' ..."; the attempt then fails and, with
``backoffLimit: 0``, the training). The test reads the exported environment of that process from the node
(/proc/<pid>/environ of the container's task, and the table copy through /proc/<pid>/root) while it
lives, and the launcher's printed line from the pod's log; both must match the table the operator
wrote. Training for real with these ranks needs HCCL, i.e. Ascend NPUs. The training is then deleted
and nothing of it may remain, in the API or in the node's containerd.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from kubelet import apply, wait_for
from nodehelp import (
    NAMESPACE,
    PodRecorder,
    cpu_training,
    delete_and_check_nothing_is_left,
    environ,
    get_json,
    task_pid,
)

from controller import names, ranktable
from envtest import device_plugin as dp
from envtest.node import NODE_NAME

pytestmark = [pytest.mark.node, pytest.mark.full_node]  # the 3.4 GB worker image

GATE = "deeplab.io/ranktable-test"  # the node label the pods wait for


def workers(pods: PodRecorder) -> dict[str, dict]:
    """The live worker pods by name."""
    return {p["metadata"]["name"]: p for p in pods.matching({names.LABEL_ROLE: names.ROLE_WORKER}, live=True)}


def play_device_plugin(node_kubectl, pods: dict[str, dict], server_id: str) -> dict[str, list[int]]:
    """Annotate each pod as ascend-device-plugin does: one chip each, chosen as it chooses them."""
    held: set[int] = set()
    chips: dict[str, list[int]] = {}
    for name in sorted(pods, key=lambda n: int(pods[n]["metadata"]["labels"][names.LABEL_RANK])):
        chips[name] = dp.choose(set(range(dp.CHIPS_PER_NODE)) - held, 1)
        held.update(chips[name])
        annotated = node_kubectl(
            "annotate", "pod", name, "-n", NAMESPACE,
            f"{dp.DEVICE_ANNOTATION}={dp.annotation(name, server_id, chips[name])}",
            f"{dp.REAL_ANNOTATION}={dp.real_devices(chips[name])}",
        )  # fmt: skip
        assert annotated.returncode == 0, annotated.stderr
    return chips


def container_id(pod: dict) -> str | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("containerID") and "running" in (status.get("state") or {}):
            return status["containerID"].split("://", 1)[1]
    return None


def job_environments(node, pods: PodRecorder, expected: int, timeout: float = 300) -> dict[str, dict]:
    """Each worker's job process as the launcher exec'd it: its environment (once RANK_ID is in it:
    before, the process is still the launcher) and the table copy RANK_TABLE_FILE names."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        for name, pod in workers(pods).items():
            cid = container_id(pod)
            pid = task_pid(node, cid) if cid and name not in seen else None
            env = environ(pid) if pid else {}
            if "RANK_ID" in env:
                table_copy = Path(f"/proc/{pid}/root{env['RANK_TABLE_FILE']}").read_text()
                seen[name] = {**env, "table copy": json.loads(table_copy)}
        time.sleep(0.1)
    assert len(seen) == expected, f"saw the job's environment in {sorted(seen)} only"
    return seen


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check_pod(node_kubectl, pod: dict, env: dict, data: dict, chip: int, server_id: str) -> None:
    """One worker: its entry of the operator's table, what its launcher exported and printed, and when."""
    name = pod["metadata"]["name"]
    table, ranks = json.loads(data[ranktable.TABLE_KEY]), json.loads(data[ranktable.RANKS_KEY])
    rank = ranks["ranks"][name]
    devices = [(entry, device) for entry in table["server_list"] for device in entry["device"]]
    [(entry, device)] = [(e, d) for e, d in devices if d["rank_id"] == str(rank)]
    # the table: this pod's IP, and the device plugin's chip and its address, not the pod's
    assert entry["container_ip"] == pod["status"]["podIP"] and entry["server_id"] == server_id
    assert (device["device_id"], device["device_ip"]) == (str(chip), dp.device_ip(server_id, chip))
    # what the launcher exported to the job process, and the copy of the table it points at
    assert (env["RANK_ID"], env["RANK_SIZE"], env["DEVICE_ID"]) == (str(rank), "2", "0")
    assert (env["DEEPLAB_ATTEMPT"], env["HCCL_IF_IP"]) == (ranks["attempt"], entry["container_ip"])
    assert env["table copy"] == table and env["RANK_TABLE_FILE"].startswith("/tmp/hccl-")
    # what it printed
    log = node_kubectl("logs", name, "-n", NAMESPACE).stdout
    assert f"launch: {name} is rank {rank}/2 on {server_id}" in log.splitlines(), log[-2000:]
    # it started before the table was complete (seconds): it waited for the kubelet's refresh
    state = pod["status"]["containerStatuses"][0]["state"]  # running, or terminated by now
    started = (state.get("running") or state.get("terminated"))["startedAt"]
    written = int(data[ranktable.VERSION_KEY])
    assert int(timestamp(started)) <= written, (started, written)


@pytest.mark.timeout(1800)
def test_rank_table_launcher_exports_the_ranks_of_its_own_attempts_table(
    operator, node, node_kubectl, node_admin, worker_image, smoke_data
):
    name = f"ranktable-{uuid.uuid4().hex[:6]}"
    training = cpu_training(
        name, worker_image, smoke_data, launcher="rankTable", template={"nodeSelector": {GATE: name}}
    )
    with PodRecorder(node_admin, NAMESPACE, name) as pods:
        apply(node_kubectl, training)
        try:
            pending = wait_for(
                "two worker pods, held off the node", lambda: len(workers(pods)) == 2, 120, 0.5
            )
            assert pending and not any(p["spec"].get("nodeName") for p in workers(pods).values())
            server_id = dp.internal_ip(get_json(node_kubectl, "node", NODE_NAME))
            chips = play_device_plugin(node_kubectl, workers(pods), server_id)
            labelled = node_kubectl("label", "node", NODE_NAME, f"{GATE}={name}")
            assert labelled.returncode == 0, labelled.stderr

            seen = job_environments(node, pods, 2)
            configmap = get_json(node_kubectl, "configmap", names.configmap_name(name), "-n", NAMESPACE)
            data = configmap["data"]
            table, ranks = json.loads(data[ranktable.TABLE_KEY]), json.loads(data[ranktable.RANKS_KEY])
            status = get_json(node_kubectl, "dlt", name, "-n", NAMESPACE)["status"]
            assert table["status"] == "completed" and ranks["attempt"] == status["attemptId"]
            assert sorted(ranks["ranks"].values()) == [0, 1] and set(ranks["ranks"]) == set(seen)

            for pod_name, env in seen.items():
                check_pod(node_kubectl, workers(pods)[pod_name], env, data, chips[pod_name][0], server_id)

            delete_and_check_nothing_is_left(node, node_kubectl, pods, name)
        finally:
            node_kubectl("label", "node", NODE_NAME, f"{GATE}-")
            node_kubectl("delete", "dlt", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=false")
