"""Hardening, read from the generated manifests: worker pods and the controller's Deployment."""

from __future__ import annotations

from pathlib import Path

import yaml
from sim import stage, training_obj

from controller import __main__ as main_module
from controller import resources
from controller.api import Training
from controller.policy import Policy

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
CTX = resources.PodContext(sched_ip="10.96.0.10")


def pods_of(**spec) -> list[dict]:
    obj = training_obj(stages=[stage("one"), stage("two")], **spec)
    t = Training.from_obj(obj)
    return [*resources.desired_pods(t, 0, 1, CTX).values(), *resources.desired_pods(t, 1, 1, CTX).values()]


def test_worker_pods_have_no_token_no_escalation_no_capabilities():
    for spec in ({}, {"npuResource": "", "launcher": "dynamicCluster"}):
        for pod in pods_of(**spec):
            assert pod["spec"]["automountServiceAccountToken"] is False
            assert "serviceAccountName" not in pod["spec"] and "hostNetwork" not in pod["spec"]
            assert "hostPID" not in pod["spec"] and "hostIPC" not in pod["spec"]
            context = pod["spec"]["containers"][0]["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_pod_but_npu_workers_runs_as_non_root():
    """Ascend hosts create /dev/davinci* root-owned: NPU workers keep the image's root user. Every
    other pod (CPU workers, the MindSpore scheduler even of an NPU training) runs as uid 1000."""

    def context(pod):
        return pod["spec"]["containers"][0]["securityContext"]

    def role(pod):
        return pod["metadata"]["labels"]["deeplab.io/role"]

    assert all("runAsNonRoot" not in context(p) for p in pods_of())
    npu_dynamic = pods_of(launcher="dynamicCluster")
    schedulers = [p for p in npu_dynamic if role(p) == "scheduler"]
    assert schedulers and all(context(p)["runAsNonRoot"] is True for p in schedulers)
    assert all("runAsNonRoot" not in context(p) for p in npu_dynamic if role(p) == "worker")
    cpu = pods_of(npuResource="", launcher="dynamicCluster")
    assert all(context(p)["runAsNonRoot"] is True and context(p)["runAsUser"] == 1000 for p in cpu)


def test_data_pretrained_and_earlier_checkpoints_are_mounted_read_only():
    first, *_, last = pods_of()
    for pod, read_only in (
        (first, {"/data", "/pretrained", resources.ranktable.MOUNT_PATH}),
        (last, {"/data", "/init", resources.ranktable.MOUNT_PATH}),
    ):
        mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert {path for path, m in mounts.items() if m.get("readOnly")} == read_only
        assert set(mounts) == read_only | {"/checkpoints"}, "only the stage's own checkpoints are writable"
        claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
        data = next(v for v in claims if v["name"] == "data")
        assert data["persistentVolumeClaim"]["readOnly"] is True
    pretrained = next(v for v in first["spec"]["volumes"] if v["name"] == "pretrained")
    assert pretrained["persistentVolumeClaim"]["readOnly"] is True


def test_env_from_the_template_reaches_pods_but_never_the_command_line():
    secret = {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}
    pod = pods_of(template={"env": [secret, {"name": "PLAIN", "value": "hunter2"}]})[0]
    container = pod["spec"]["containers"][0]
    assert secret in container["env"]
    assert not any("hunter2" in arg for arg in container["command"])


def test_controller_deployment_is_hardened():
    docs = list(yaml.safe_load_all((MANIFESTS / "deployment.yaml").read_text()))
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "deeplab-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork") is not True and pod.get("automountServiceAccountToken") is not False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]} and not context.get("privileged")
        assert all("value" not in e or "TOKEN" not in e["name"].upper() for e in container.get("env", []))
        assert "limits" in container["resources"] and "memory" in container["resources"]["limits"]


def test_the_deployments_policy_flags_parse_to_the_default_policy():
    """The Deployment's command line is the controller's: a typo in a flag would crash-loop the pod."""
    docs = list(yaml.safe_load_all((MANIFESTS / "deployment.yaml").read_text()))
    container = next(d for d in docs if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = container["containers"][0]
    argv = container["command"][container["command"].index("controller") + 1 :] + container.get("args", [])
    parsed = main_module.options(main_module.parse(argv))
    assert parsed.policy == Policy(), "the installed default allows no hostPath and no Secret env"
    allowing = main_module.parse([*argv, "--allowed-host-path-prefixes=/srv/a,/srv/b", "--allow-secret-env"])
    assert main_module.options(allowing).policy == Policy(("/srv/a", "/srv/b"), allow_secret_env=True)
