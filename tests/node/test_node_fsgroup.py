"""A root-owned PersistentVolume becomes writable for the non-root CPU worker (issue #12 sections 4, 6).

Provisioned volumes start with a root directory that belongs to root, and the CPU worker runs as uid
1000: it could not write its checkpoints. The operator gives non-root pods ``fsGroup: 1000``, so the
kubelet hands such a volume to group 1000, group-writable, before the containers start. Here the
checkpoint volume is a PVC bound to a ``local`` PersistentVolume (a directory of this node, created
root-owned, mode 0755, as a provisioner would); a one-stage, two-worker training must write its step and
final checkpoints there and succeed.
"""

from __future__ import annotations

import json
import os
import stat
import uuid

import pytest
from nodehelp import NAMESPACE, cpu_training, finished_status

from envtest.node import NODE_NAME

pytestmark = [pytest.mark.node, pytest.mark.full_node]  # the 3.4 GB worker image


def local_volume(name: str, path: str) -> list[dict]:
    """A PersistentVolume on this node's directory ``path`` and the claim bound to it (by class name)."""
    affinity = {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "2Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": name,
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [affinity]}]}},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "storageClassName": name,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
            "volumeName": name,
        },
    }
    return [pv, claim]


@pytest.mark.timeout(1800)
def test_a_root_owned_checkpoint_volume_is_written_by_the_non_root_worker(
    operator, node_kubectl, worker_image, smoke_data
):
    name = f"fsgroup-{uuid.uuid4().hex[:6]}"
    volume = smoke_data / name
    volume.mkdir(mode=0o755)
    os.chown(volume, 0, 0)
    objects = local_volume(name, str(volume))
    training = cpu_training(name, worker_image, smoke_data)
    training["spec"]["volumes"]["checkpoints"] = {"persistentVolumeClaim": {"claimName": name}}
    listed = {"apiVersion": "v1", "kind": "List", "items": [*objects, training]}
    try:
        applied = node_kubectl("apply", "-f", "-", stdin=json.dumps(listed))
        assert applied.returncode == 0, applied.stderr

        finished_status(node_kubectl, name)
        final = volume / name / "s16" / "final.ckpt"
        assert final.is_file() and final.stat().st_uid == 1000
        root = volume.stat()  # the kubelet handed the volume's root to group 1000, group-writable
        assert (root.st_uid, root.st_gid) == (0, 1000) and root.st_mode & stat.S_IWGRP, oct(root.st_mode)
    finally:
        node_kubectl(
            "delete", "dlt", name, "-n", NAMESPACE, "--ignore-not-found", "--timeout=120s", timeout=150
        )
        node_kubectl("delete", "pvc", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=false")
        node_kubectl("delete", "pv", name, "--ignore-not-found", "--wait=false")
