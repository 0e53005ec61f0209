"""Least privilege and hardening, checked by the real API server: the ServiceAccount's complete
permission list, Pod Security admission of worker and controller pods, and no secret in the logs."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from kubelet import SA_USER, ControllerProcess, apply, lease_holder, training_manifest, wait_for

from controller import resources
from controller.api import Training

pytestmark = pytest.mark.cluster

NOBODY = "system:serviceaccount:deeplab-system:nobody"  # no bindings: what every account gets anyway

# Exactly what controller/kube.py, runtime.py and leader.py call; nothing else.
EXPECTED_CLUSTER_WIDE = {
    ("deeplabtrainings.deeplab.io", "get"), ("deeplabtrainings.deeplab.io", "list"),
    ("deeplabtrainings.deeplab.io", "watch"), ("deeplabtrainings.deeplab.io", "delete"),
    ("deeplabtrainings.deeplab.io/status", "update"),
    ("pods", "get"), ("pods", "list"), ("pods", "watch"), ("pods", "create"), ("pods", "delete"),
    ("pods/log", "get"),
    ("services", "get"), ("services", "list"), ("services", "watch"), ("services", "create"),
    ("services", "delete"), ("nodes", "get"),
    ("configmaps", "get"), ("configmaps", "create"), ("configmaps", "update"),
    ("events", "create"),
    ("podgroups.scheduling.volcano.sh", "get"), ("podgroups.scheduling.volcano.sh", "create"),
}  # fmt: skip
EXPECTED_OPERATOR_NAMESPACE = {("leases.coordination.k8s.io", v) for v in ("get", "create", "update")}


def permissions(kubectl, user: str, namespace: str) -> set[tuple[str, str]]:
    """`kubectl auth can-i --list` as a set of (resource, verb); non-resource URLs kept as their path."""
    result = kubectl("auth", "can-i", "--list", "-n", namespace, as_user=user)
    assert result.returncode == 0, result.stderr
    found = set()
    for line in result.stdout.splitlines()[1:]:
        parts = line.split()
        verbs = line[line.rindex("[") + 1 : line.rindex("]")].split()
        if line.startswith(" "):  # a non-resource URL row
            found |= {(parts[0], verb) for verb in verbs}
        else:
            names = line.split("[", 3)[2]  # Resource Names column
            assert names.startswith("]"), f"unexpected resourceNames restriction: {line}"
            found |= {(parts[0], verb) for verb in verbs}
    return found


def test_service_account_permissions_are_exactly_what_the_controller_uses(kubectl, operator_installed):
    """The one check of the operator's rights: what the API server grants its ServiceAccount, as a set,
    equals the verbs controller/kube.py, runtime.py and leader.py use. Anything more (secrets, update,
    patch, a wildcard) or less fails here."""
    for namespace, expected in (
        ("default", EXPECTED_CLUSTER_WIDE),
        ("deeplab-system", EXPECTED_CLUSTER_WIDE | EXPECTED_OPERATOR_NAMESPACE),
    ):
        granted = permissions(kubectl, SA_USER, namespace) - permissions(kubectl, NOBODY, namespace)
        assert granted == expected, (
            f"in {namespace}: extra {sorted(granted - expected)}, missing {sorted(expected - granted)}"
        )
    # and the Lease rights stop at the operator's own namespace
    assert not {p for p in permissions(kubectl, SA_USER, "default") if p[0].startswith("leases")}


# -- Pod Security admission ---------------------------------------------------------------------------
def _pss_namespace(kubectl, level: str) -> str:
    name = f"pss-{level}-{uuid.uuid4().hex[:6]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"pod-security.kubernetes.io/enforce": level, "pod-security.kubernetes.io/warn": level},
        },
    }
    assert kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).returncode == 0
    wait_for(
        "its default ServiceAccount", lambda: kubectl("get", "sa", "default", "-n", name).returncode == 0
    )
    return name


def _worker_pod(namespace: str, **spec) -> dict:
    body = training_manifest("pss", namespace, workers=1, **spec)
    body["spec"]["volumes"] = {  # PVCs only: hostPath is outside every Pod Security level but privileged
        "data": {"persistentVolumeClaim": {"claimName": "data"}},
        "checkpoints": {"persistentVolumeClaim": {"claimName": "ckpt"}},
    }
    body["metadata"]["uid"] = "0123456789"
    t = Training.from_obj(body)
    ctx = resources.PodContext(sched_ip="10.96.0.10")
    pod = next(iter(resources.desired_pods(t, 1, 1, ctx).values()))  # stage 2: with the /init mount
    del pod["metadata"]["ownerReferences"]
    return pod


def _dry_run(kubectl, manifest: dict):
    return kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest))


def test_pod_security_admission_accepts_the_pods_we_create(kubectl, operator_installed):
    with ExitStack() as stack:
        restricted = _pss_namespace(kubectl, "restricted")
        stack.callback(kubectl, "delete", "namespace", restricted, "--wait=false")
        baseline = _pss_namespace(kubectl, "baseline")
        stack.callback(kubectl, "delete", "namespace", baseline, "--wait=false")

        # CPU workers (and the MindSpore scheduler pod) meet the strictest level
        cpu = _worker_pod(restricted, npuResource="", launcher="dynamicCluster")
        accepted = _dry_run(kubectl, cpu)
        assert accepted.returncode == 0 and "would violate" not in accepted.stderr, accepted.stderr

        # NPU workers run as root (root-owned /dev/davinci*): baseline, and restricted says exactly why
        npu = _worker_pod(restricted)
        refused = _dry_run(kubectl, npu)
        assert refused.returncode != 0 and "runAsNonRoot" in refused.stderr, refused.stderr
        for violation in ("allowPrivilegeEscalation", "capabilities", "seccompProfile"):
            assert violation not in refused.stderr, refused.stderr
        npu["metadata"]["namespace"] = baseline
        accepted = _dry_run(kubectl, npu)
        assert accepted.returncode == 0 and "would violate" not in accepted.stderr, accepted.stderr

        # the controller's own pod, from manifests/deployment.yaml, meets restricted
        docs = yaml.safe_load_all(
            (Path(__file__).resolve().parents[2] / "manifests/deployment.yaml").read_text()
        )
        deployment = next(d for d in docs if d and d["kind"] == "Deployment")
        template = deployment["spec"]["template"]
        spec = {**template["spec"], "serviceAccountName": "default"}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "controller",
                "namespace": restricted,
                "labels": template["metadata"]["labels"],
            },
            "spec": spec,
        }
        accepted = _dry_run(kubectl, pod)
        assert accepted.returncode == 0 and "would violate" not in accepted.stderr, accepted.stderr


# -- no secrets in the logs -----------------------------------------------------------------------
def _token_kubeconfig(control_plane, kubectl, path: Path) -> str:
    """A kubeconfig that authenticates with a real ServiceAccount token, as in a pod."""
    token = kubectl("create", "token", "deeplab-operator", "-n", "deeplab-system", "--duration=10m")
    assert token.returncode == 0, token.stderr
    config = json.loads(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token.stdout.strip()}}]
    config["contexts"][0]["context"]["user"] = "sa"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return token.stdout.strip()


def test_the_controller_never_logs_tokens_or_sensitive_env_values(
    control_plane, operator_installed, kubectl, kubelet, admin, tmp_path
):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    token = _token_kubeconfig(control_plane, kubectl, tmp_path / "sa.kubeconfig")
    env = [{"name": "API_TOKEN", "value": secret}, {"name": "WANDB_API_KEY", "value": secret[::-1]}]
    with ExitStack() as stack:
        proc = ControllerProcess(
            "logcheck", tmp_path / "sa.kubeconfig", tmp_path, None, lease="logcheck-test"
        )
        stack.callback(proc.stop)
        wait_for(
            "the controller leads",
            lambda: lease_holder(admin, name="logcheck-test") == "logcheck",
            timeout=90,  # process start included: up to 39 s at load average 15 (test_controller_restart.py)
        )
        # one training whose pods are created (the env goes to the API server) ...
        apply(kubectl, training_manifest("envy", kubelet.ns, workers=2, template={"env": env}))
        # ... and one whose pods the API server refuses (the error path logs the API's answer)
        apply(
            kubectl,
            training_manifest(
                "refused",
                kubelet.ns,
                workers=1,
                # valid for the CRD, refused by the pod API (a request above its limit)
                template={
                    "env": env,
                    "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
                },
            ),
        )
        pods = wait_for(
            "pods with the secret env", lambda: len(kubelet.pods("envy")) == 2 and kubelet.pods("envy")
        )
        assert {"name": "API_TOKEN", "value": secret} in pods[0]["spec"]["containers"][0]["env"]
        kubelet.place(pods, ["172.16.4.1", "172.16.4.1"])
        kubelet.terminate(pods[1]["metadata"]["name"], 1, "RuntimeError: HCCL link down")
        wait_for("attempt 2", lambda: kubelet.status("envy").get("attempt") == 2)

        def refused():
            return "ActionFailed" in kubelet.reasons("refused")

        wait_for("the refused pod reported", refused)
        time.sleep(1)
        proc.stop()
    log = proc.log.read_text()
    assert "reconcile" in log and "DEBUG" in log and "failed" in log, "the log covers the error path"
    assert token not in log and token.split(".")[1] not in log, "the ServiceAccount token leaked"
    assert secret not in log and secret[::-1] not in log, "an env value leaked"
    events = kubectl("get", "events", "-n", kubelet.ns, "-o", "json").stdout
    assert secret not in events and secret[::-1] not in events
