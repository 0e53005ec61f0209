"""The namespaced install (overlays/namespaced) against the real API server.

The overlay is rendered by the release's own kustomize (`kubectl kustomize`); its RBAC is applied under a
test ServiceAccount and test namespaces (names rewritten, nothing else), so the cluster-wide install that
the other tests use stays as it is. A controller impersonating that ServiceAccount then works in the
namespaces it watches, and the API server refuses it everywhere else.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubelet import SA_USER, Kubelet, apply, lease_holder, result_message, training_manifest, wait_for
from kubernetes import client
from test_security_cluster import EXPECTED_OPERATOR_NAMESPACE, NOBODY, permissions

from controller import kube
from controller.__main__ import parse_namespaces
from controller.runtime import Controller, Options

pytestmark = pytest.mark.cluster

OVERLAY = "overlays/namespaced"
BASE_NAME = "deeplab-operator"  # every RBAC object of the install is named deeplab-operator*
OPERATOR_NAMESPACE = "deeplab-system"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def render(kubectl, repo_root) -> list[dict[str, Any]]:
    rendered = kubectl("kustomize", str(repo_root / OVERLAY))
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def watched_by_flag(docs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The namespaces the overlay's Deployment tells the controller to watch (`--namespaces=`)."""
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    flags = [arg.split("=", 1)[1] for arg in command if arg.startswith("--namespaces=")]
    assert len(flags) == 1, command
    return parse_namespaces(flags[0])


def retarget(doc: dict[str, Any], name: str, namespaces: dict[str, str]) -> dict[str, Any]:
    """One rendered RBAC object under test names: `deeplab-operator*` -> `<name>*`, the overlay's sample
    namespaces -> the test's; rules, kinds and references are left exactly as rendered."""

    def rename(value: str) -> str:
        return name + value[len(BASE_NAME) :] if value.startswith(BASE_NAME) else value

    meta = doc["metadata"]
    meta["name"] = rename(meta["name"])
    if "namespace" in meta:
        meta["namespace"] = namespaces.get(meta["namespace"], meta["namespace"])
    if "roleRef" in doc:
        doc["roleRef"]["name"] = rename(doc["roleRef"]["name"])
    for subject in doc.get("subjects", []):
        subject["name"] = rename(subject["name"])
    return doc


def can_i(kubectl, user: str, verb: str, resource: str, *where: str) -> str:
    return kubectl("auth", "can-i", verb, resource, *where, as_user=user).stdout.strip()


@dataclass
class Install:
    name: str  # the test ServiceAccount, ClusterRole and Lease name
    user: str
    watched: tuple[str, ...]
    unwatched: str


# -- the overlay as rendered ----------------------------------------------------------------------------
def test_the_overlay_binds_the_rules_only_in_the_namespaces_the_controller_watches(kubectl, repo_root):
    docs = render(kubectl, repo_root)
    watched = watched_by_flag(docs)
    assert len(watched) >= 1
    kinds = {d["kind"] for d in docs}
    assert "ClusterRoleBinding" not in kinds, "no cluster-wide grant at all"
    assert {"CustomResourceDefinition", "Namespace", "ServiceAccount", "Deployment"} <= kinds

    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": BASE_NAME, "namespace": OPERATOR_NAMESPACE}
        ]
    rules = {(b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings}
    # the controller's rules in each watched namespace, the Lease Role in its own: nothing else
    assert rules == {(ns, "ClusterRole", BASE_NAME) for ns in watched} | {
        (OPERATOR_NAMESPACE, "Role", f"{BASE_NAME}-leader-election")
    }
    base = [d for d in yaml.safe_load_all((repo_root / "manifests/rbac.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role == next(d for d in base if d["kind"] == "ClusterRole"), "the same rules as the base"


# -- the overlay's RBAC applied --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def install(kubectl, repo_root, operator_installed) -> Iterator[Install]:
    """The overlay's RBAC under a fresh name, watching fresh namespaces; all removed afterwards."""
    suffix = uuid.uuid4().hex[:6]
    name = f"{BASE_NAME}-ns-{suffix}"
    docs = render(kubectl, repo_root)
    sample = watched_by_flag(docs)
    namespaces = {ns: f"ns-{suffix}-{index}" for index, ns in enumerate(sample)}
    result = Install(
        name,
        f"system:serviceaccount:{OPERATOR_NAMESPACE}:{name}",
        tuple(namespaces.values()),
        f"ns-{suffix}-other",
    )
    rbac = [retarget(d, name, namespaces) for d in docs if d["kind"] in RBAC_KINDS]
    with ExitStack() as cleanup:  # registered before creating: removed even when a step fails
        for ns in (*result.watched, result.unwatched):
            cleanup.callback(kubectl, "delete", "namespace", ns, "--wait=false")
            assert kubectl("create", "namespace", ns).returncode == 0
        for doc in rbac:
            meta = doc["metadata"]
            where = ["-n", meta["namespace"]] if "namespace" in meta else []
            cleanup.callback(kubectl, "delete", doc["kind"], meta["name"], *where, "--ignore-not-found")
        cleanup.callback(
            kubectl, "delete", "lease", name, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", "--wait=false"
        )
        applied = kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac})
        )
        assert applied.returncode == 0, applied.stderr
        wait_for(
            "the RoleBindings to take effect",
            lambda: all(
                can_i(kubectl, result.user, "create", "pods", "-n", ns) == "yes" for ns in result.watched
            ),
        )
        yield result


@pytest.fixture(scope="module")
def namespaced_controller(control_plane, install) -> Iterator[Controller]:
    """The controller as the namespaced install runs it: `--namespaces`, leader-elected, its own SA."""
    options = Options(
        namespaces=install.watched,
        log_interval=1.0,
        resync_seconds=10.0,
        watch_timeout=20,
        lease_name=install.name,  # in deeplab-system, beside the cluster-wide install's Lease
        identity=f"namespaced-{uuid.uuid4().hex[:6]}",
        health_addr=None,
    )
    instance = Controller(kube.api_client(str(control_plane.kubeconfig), as_user=install.user), options)
    instance.start()
    try:
        # every informer listed its namespace: the RoleBindings are enough to watch
        wait_for("informers synced", instance.ready)
        yield instance
    finally:
        instance.stop()


def one_worker_training(name: str, namespace: str) -> dict[str, Any]:
    return training_manifest(
        name,
        namespace,
        workers=2,
        npusPerServer=2,
        volumes={
            "data": {"persistentVolumeClaim": {"claimName": "voc-data"}},
            "checkpoints": {"persistentVolumeClaim": {"claimName": "ckpt"}},
        },
        stages=[{"name": "s16", "dataFile": "vocaug.mindrecord0", "epochs": 2}],
        ttlSecondsAfterFinished=0,
    )


def test_reconciles_in_a_watched_namespace_and_ignores_the_others(
    namespaced_controller, install, kubectl, admin
):
    outside = Kubelet(admin, install.unwatched)
    apply(kubectl, one_worker_training("voc", install.unwatched))  # first, so it had every chance
    inside = Kubelet(admin, install.watched[-1])
    apply(kubectl, one_worker_training("voc", inside.ns))

    # every verb of the rules, in the watched namespace: pods, ConfigMap create and update,
    # status, events, pod deletes, the training's delete (ttlSecondsAfterFinished: 0)
    pods = wait_for("2 worker pods", lambda: len(inside.pods("voc")) == 2 and inside.pods("voc"))
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "DeepLabTraining" for p in pods)
    wait_for("initializing table", lambda: inside.table("voc")[0] == {"status": "initializing"})
    inside.place(pods, ["172.16.0.1", "172.16.0.1"])
    wait_for("complete table", lambda: inside.table("voc")[0].get("status") == "completed")
    wait_for("Running", lambda: inside.status("voc").get("phase") == "Running")
    ranks = inside.table("voc")[1]["ranks"]
    for pod in pods:
        name = pod["metadata"]["name"]
        inside.terminate(
            name, 0, result_message("/checkpoints/voc/s16/final.ckpt", 0.7) if ranks[name] == 0 else ""
        )
    wait_for(
        "the finished training deleted", lambda: not training_exists(kubectl, "voc", inside.ns), timeout=30
    )
    assert not inside.pods("voc")
    events = kubectl("get", "events", "-n", inside.ns, "-o", "json")
    reasons = {e["reason"] for e in json.loads(events.stdout)["items"]}
    assert {"Started", "RankTableReady", "Succeeded"} <= reasons, reasons

    # the unwatched namespace: untouched, and never even in the controller's cache
    assert outside.status("voc") == {} and outside.pods() == [] and outside.configmap("voc") is None
    assert kubectl("get", "services,events", "-n", outside.ns, "-o", "name").stdout.strip() == ""
    cached = {t["metadata"]["namespace"] for t in namespaced_controller.trainings_snapshot()}
    assert cached <= set(install.watched), cached
    # leader election in the operator's namespace, not in a watched one
    assert lease_holder(admin, OPERATOR_NAMESPACE, install.name) == namespaced_controller.identity


def training_exists(kubectl, name: str, namespace: str) -> bool:
    return kubectl("get", "deeplabtrainings", name, "-n", namespace).returncode == 0


def test_the_namespaced_account_is_refused_outside_its_namespaces(install, kubectl, control_plane):
    user = install.user
    for ns in (install.unwatched, "kube-system", OPERATOR_NAMESPACE):
        for verb, resource in (
            ("create", "pods"),
            ("delete", "pods"),
            ("update", "configmaps"),
            ("get", "configmaps"),
        ):
            assert can_i(kubectl, user, verb, resource, "-n", ns) == "no", (verb, resource, ns)
    for verb, resource in (
        ("list", "pods"),
        ("watch", "deeplabtrainings.deeplab.io"),
        ("list", "configmaps"),
    ):
        assert can_i(kubectl, user, verb, resource, "--all-namespaces") == "no", (verb, resource)
    assert can_i(kubectl, user, "list", "customresourcedefinitions.apiextensions.k8s.io") == "no"

    # exactly the cluster-wide account's rights in a watched namespace; nothing beyond any account's
    # elsewhere, and only the Lease in the operator's namespace
    for ns in install.watched:
        assert permissions(kubectl, user, ns) == permissions(kubectl, SA_USER, ns)
    assert permissions(kubectl, user, install.unwatched) == permissions(kubectl, NOBODY, install.unwatched)
    lease_rights = permissions(kubectl, user, OPERATOR_NAMESPACE) - permissions(
        kubectl, NOBODY, OPERATOR_NAMESPACE
    )
    assert lease_rights == EXPECTED_OPERATOR_NAMESPACE

    # and the API server itself says 403, not just can-i
    core = client.CoreV1Api(kube.api_client(str(control_plane.kubeconfig), as_user=user))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}  # fmt: skip
    for ns in (install.unwatched, "kube-system"):
        with pytest.raises(client.ApiException) as refused:
            core.create_namespaced_pod(ns, pod, _preload_content=False)
        assert refused.value.status == 403, refused.value
    with pytest.raises(client.ApiException) as refused:
        core.list_pod_for_all_namespaces(_preload_content=False)
    assert refused.value.status == 403
    # allowed where it watches (server-side dry run: nothing is created)
    core.create_namespaced_pod(install.watched[0], pod, dry_run="All", _preload_content=False)


def test_the_cluster_wide_install_still_acts_everywhere(install, kubectl):
    """The base install is unchanged by the overlay's existence: its account still reaches any namespace."""
    for ns in (install.unwatched, *install.watched):
        assert can_i(kubectl, SA_USER, "create", "pods", "-n", ns) == "yes"
        assert can_i(kubectl, SA_USER, "update", "configmaps", "-n", ns) == "yes"
    assert can_i(kubectl, SA_USER, "watch", "deeplabtrainings.deeplab.io", "--all-namespaces") == "yes"
