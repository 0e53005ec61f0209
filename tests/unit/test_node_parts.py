"""The real node's generated configuration carries every trap FACTS.md section 6 found on these machines,
and the image cache key moves exactly when an input of the image does."""

from __future__ import annotations

from pathlib import Path

from envtest import images, node
from envtest.plane import ControlPlane


def _plane(tmp_path: Path, dns: bool = True) -> ControlPlane:
    parts = node.node_components(dns)
    return ControlPlane(tmp_path, Path("/nonexistent"), components=parts, address=node.NODE_IP)


def test_containerd_config_holds_the_traps(tmp_path):
    config = node._containerd_config(_plane(tmp_path))
    assert "restrict_oom_score_adj = true" in config  # no CAP_SYS_RESOURCE: no negative oom_score_adj
    assert 'bin_dir = "/usr/lib/cni"' in config  # Debian's plugin path
    assert f'sandbox_image = "{images.PAUSE_IMAGE}"' in config  # built locally: no registry here
    assert (
        f'address = "{tmp_path}/containerd/containerd.sock"' in config
    )  # its own socket, not /run/containerd
    assert f'conf_dir = "{tmp_path}/cni/net.d"' in config  # not podman's /etc/cni/net.d
    assert "SystemdCgroup = false" in config


def test_kubelet_config_runs_on_cgroup_v1_without_reservations(tmp_path):
    config = node.kubelet_config(_plane(tmp_path))
    expected = {
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "address": node.NODE_IP,
        "containerRuntimeEndpoint": f"unix://{tmp_path}/containerd/containerd.sock",
    }
    assert {key: config[key] for key in expected} == expected
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["clusterDNS"] == [node.NODE_IP]  # CoreDNS listens on the node's address
    assert "clusterDNS" not in node.kubelet_config(_plane(tmp_path, dns=False))  # the host's resolver
    assert f"bind {node.NODE_IP}" in node._corefile(_plane(tmp_path))


def test_cni_config_is_a_bridge_of_the_nodes_own(tmp_path):
    bridge = node._cni_config(_plane(tmp_path))["plugins"][0]
    assert (bridge["type"], bridge["bridge"], bridge["ipam"]["ranges"]) == (
        "bridge", node.BRIDGE, [[{"subnet": node.POD_CIDR}]],
    )  # fmt: skip
    assert bridge["ipam"]["dataDir"].startswith(str(tmp_path))  # not /var/lib/cni


def test_image_tag_changes_with_a_copied_file_and_the_base(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    (tmp_path / "unrelated.txt").write_text("not copied\n")
    monkeypatch.setattr(images, "REPO", tmp_path)
    image = images.Image("localhost/x", "Dockerfile", ("pkg",))
    first = image.tag("base-1")
    (tmp_path / "unrelated.txt").write_text("changed\n")
    assert image.tag("base-1") == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    changed = image.tag("base-1")
    assert changed != first
    assert image.tag("base-2") != changed
    assert first.startswith("localhost/x:")


def test_every_image_names_a_dockerfile_and_inputs_that_exist():
    for image in images.IMAGES.values():
        assert (images.REPO / image.dockerfile).is_file()
        for rel in image.inputs:
            assert (images.REPO / rel).exists(), rel


def test_only_earlier_hash_tags_of_the_same_image_are_pruned():
    image = images.IMAGES["worker-cpu"]
    refs = [
        f"{image.name}:old1", f"{image.name}:new", f"{image.name}:dev", f"{image.name}-other:old",
        "localhost/deeplab-controller:old", images.PAUSE_IMAGE,
    ]  # fmt: skip
    assert images.stale_tags(refs, image, f"{image.name}:new") == [f"{image.name}:old1"]
