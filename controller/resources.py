"""(training, stage, attempt) -> the pod, Service, ConfigMap and PodGroup manifests. Pure.

Manifests are plain dicts in the API's JSON shape: they go to the API server unchanged and tests
compare them without a client library in between.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from controller import names, placement, ranktable
from controller.api import (
    API_VERSION,
    DEFAULT_TERMINATION_GRACE_SECONDS,
    KIND,
    Gang,
    Launcher,
    Stage,
    Training,
    VolumeSource,
)

DATA_MOUNT = "/data"
CHECKPOINTS_MOUNT = "/checkpoints"
INIT_MOUNT = "/init"
PRETRAINED_MOUNT = "/pretrained"
TERMINATION_LOG = "/dev/termination-log"
# MindX's ascend-operator and its device/env tooling look only at the container named "ascend"
# (mind-cluster ascend-operator api/v1 DefaultContainerName); pods of earlier versions named it "worker".
CONTAINER = "ascend"
LEGACY_CONTAINER = "worker"
SCHEDULER_PORT_NAME = "ascendjob-port"  # MindX's DefaultPortName
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
# MindX's ascend-operator numbers a job's pods with this annotation; its rank-table generator reads it
# (rank_id = rankIndex x devices per pod + index in the pod's device list).
RANK_INDEX_ANNOTATION = "hccl/rankIndex"
# Kueue's plain-pod integration (sigs.k8s.io/kueue pkg/controller/jobs/pod): a group of pods is one
# Workload, admitted (its scheduling gates removed) only when the whole group fits the queue's quota.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
NON_ROOT_UID = 1000  # the CPU worker image's user (images/worker-cpu.Dockerfile)


def owner_reference(t: Training) -> dict[str, Any]:
    # controller=true: the garbage collector deletes children with the training, and a child maps
    # back to exactly one training. blockOwnerDeletion keeps foreground deletion honest.
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": t.name,
        "uid": t.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(t: Training, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": t.namespace, "labels": labels, "ownerReferences": [owner_reference(t)]}


def base_labels(t: Training) -> dict[str, str]:
    return {names.LABEL_TRAINING: names.training_label(t.name), names.LABEL_MANAGED_BY: names.MANAGED_BY}


def pod_labels(t: Training, stage: str, attempt: int, role: str, rank: int | None) -> dict[str, str]:
    """Ours, plus the ones MindX components select Atlas pods by (mind-cluster docs/en/scheduling/api/
    k8s.md; ascend-operator labels.go): ``framework``, ``ring-controller.atlas`` on NPU pods, and the
    ascend-operator's ``job-name``/``replica-type``/``replica-index``."""
    labels = {
        **base_labels(t),
        names.LABEL_STAGE: stage,
        names.LABEL_ATTEMPT: str(attempt),
        names.LABEL_ROLE: role,
        "framework": "mindspore",
        "job-name": names.training_label(t.name),
        "replica-type": role,
    }
    if rank is not None:
        labels[names.LABEL_RANK] = str(rank)
        labels["replica-index"] = str(rank)
    if t.spec.npu_resource and role == names.ROLE_WORKER:
        labels["ring-controller.atlas"] = "ascend-910"
    return labels


# -- the train command line ------------------------------------------------------------------------
def data_path(path: str) -> str:
    return path if path.startswith("/") else posixpath.join(DATA_MOUNT, path)


def train_dir(t: Training, stage: str) -> str:
    return posixpath.join(CHECKPOINTS_MOUNT, t.name, stage)


def init_stage(t: Training, index: int) -> str | None:
    """The stage whose final checkpoint initialises stage ``index`` (None: the pretrained backbone)."""
    stage = t.spec.stages[index]
    if stage.init_from:
        return stage.init_from
    return t.spec.stages[index - 1].name if index > 0 else None


def device_target(t: Training) -> str:
    resource = t.spec.npu_resource.lower()
    if not resource:
        return "CPU"
    return "GPU" if "gpu" in resource else "Ascend"


def _number(value: float) -> str:
    return format(value, "g")


def train_args(t: Training, index: int) -> list[str]:
    """The job's `train` flags (recipe names) for stage ``index``; booleans are bare flags.

    Every flag emitted here is in ``api.OPERATOR_FLAGS``, which the CRD refuses in ``extraArgs``
    (tests/unit/test_crd.py checks the two agree): a stage's extra flags cannot redirect its output.
    """
    s: Stage = t.spec.stages[index]
    args = [
        "--data_file", data_path(s.data_file),
        "--train_dir", train_dir(t, s.name),
        "--train_epochs", str(s.epochs),
        "--batch_size", str(s.batch_size),
        "--crop_size", str(s.crop_size),
        "--base_lr", _number(s.base_lr),
        "--lr_type", s.lr_type.value,
        "--min_scale", _number(s.min_scale),
        "--max_scale", _number(s.max_scale),
        "--ignore_label", str(s.ignore_label),
        "--num_classes", str(s.num_classes),
        "--model", s.model.value,
        "--save_steps", str(s.save_steps),
        "--keep_checkpoint_max", str(s.keep_checkpoint_max),
        "--loss_scale", _number(s.loss_scale),
        "--end_lr", _number(s.end_lr),
        "--seed", str(s.seed),
        "--log_steps", str(s.log_steps),
        "--num_parallel_workers", str(s.num_parallel_workers),
        "--device_target", device_target(t),
        "--result_file", TERMINATION_LOG,
    ]  # fmt: skip
    if s.aspp_rates is not None:  # unset: the job picks the model's own rates
        args += ["--aspp_rates", *(str(rate) for rate in s.aspp_rates)]
    if s.freeze_bn:
        args.append("--freeze_bn")
    if s.recompute:
        args.append("--recompute")
    init = init_stage(t, index)
    if init is not None:
        args += ["--ckpt_pre_trained", posixpath.join(INIT_MOUNT, "final.ckpt")]
    elif t.spec.volumes.pretrained is not None:
        args += ["--ckpt_pre_trained", posixpath.join(PRETRAINED_MOUNT, t.spec.volumes.pretrained.path)]
    # dynamicCluster always has a scheduler pod waiting for the workers, even for a single one.
    if t.spec.workers > 1 or t.spec.launcher == Launcher.DYNAMIC_CLUSTER:
        args.append("--is_distributed")
    if s.evaluate is not None:
        args += ["--eval_data_root", data_path(s.evaluate.data_root)]
        args += ["--eval_data_lst", data_path(s.evaluate.data_list)]
        for scale in s.evaluate.scales:
            args += ["--eval_scales", _number(scale)]
        if s.evaluate.flip:
            args.append("--eval_flip")
    return [*args, *s.extra_args]


def command(t: Training, index: int) -> list[str]:
    return ["python", "-m", "job", "launch", "--", "train", *train_args(t, index)]


# -- volumes --------------------------------------------------------------------------------------
def _volume(name: str, source: VolumeSource, read_only: bool) -> dict[str, Any]:
    if source.persistent_volume_claim is not None:
        claim = source.persistent_volume_claim
        read_only = read_only or bool(claim.read_only)
        return {"name": name, "persistentVolumeClaim": {"claimName": claim.claim_name, "readOnly": read_only}}
    if source.host_path is not None:
        host = {"path": source.host_path.path}
        if source.host_path.type:
            host["type"] = source.host_path.type
        return {"name": name, "hostPath": host}
    empty = source.empty_dir.wire() if source.empty_dir is not None else {}
    return {"name": name, "emptyDir": empty}


def volumes_and_mounts(t: Training, index: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = t.spec.volumes
    volumes = [_volume("data", spec.data, True), _volume("checkpoints", spec.checkpoints, False)]
    mounts = [
        {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True},
        {"name": "checkpoints", "mountPath": CHECKPOINTS_MOUNT},
    ]
    init = init_stage(t, index)
    if init is not None:
        # The earlier stage's directory, read-only: a stage can never damage what it starts from.
        mounts.append(
            {"name": "checkpoints", "mountPath": INIT_MOUNT, "subPath": f"{t.name}/{init}", "readOnly": True}
        )
    elif spec.pretrained is not None:
        volumes.append(_volume("pretrained", spec.pretrained, True))
        mounts.append({"name": "pretrained", "mountPath": PRETRAINED_MOUNT, "readOnly": True})
    if t.spec.launcher == Launcher.RANK_TABLE:
        volumes.append({"name": "rank-table", "configMap": {"name": names.configmap_name(t.name)}})
        mounts.append({"name": "rank-table", "mountPath": ranktable.MOUNT_PATH, "readOnly": True})
    return volumes, mounts


# -- pods -----------------------------------------------------------------------------------------
def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _scheduler_env(t: Training, role: str, rank: int | None, sched_ip: str | None) -> list[dict[str, Any]]:
    """MindSpore's dynamic cluster, with the variables MindX's ascend-operator sets (FACTS 5).

    MS_SCHED_HOST is an IP, as MindSpore documents it: the scheduler pod listens on its own pod IP
    (downward API) and the workers reach it through the training's Service, by its ClusterIP, so no
    worker depends on cluster DNS resolving a name in time."""
    if role == names.ROLE_SCHEDULER:
        host = _field_env("MS_SCHED_HOST", "status.podIP")
    else:
        if not sched_ip:
            raise ValueError("dynamicCluster worker pods need the scheduler Service's ClusterIP")
        host = {"name": "MS_SCHED_HOST", "value": sched_ip}
    env = [
        {"name": "MS_ROLE", "value": "MS_SCHED" if role == names.ROLE_SCHEDULER else "MS_WORKER"},
        host,
        {"name": "MS_SCHED_PORT", "value": str(t.spec.scheduler_port)},
        {"name": "MS_WORKER_NUM", "value": str(t.spec.workers)},
        {"name": "MS_SERVER_NUM", "value": "0"},
    ]
    if rank is not None:
        env += [
            {"name": "MS_NODE_RANK", "value": str(rank)},
            {"name": "MS_LOCAL_WORKER", "value": str(t.spec.npus_per_pod)},
        ]
        if t.spec.npus_per_pod == 1:  # one process: it is the node itself (more are numbered by the launcher)
            env.append({"name": "MS_NODE_ID", "value": str(rank)})
    return env


def _env(
    t: Training, index: int, attempt: int, role: str, rank: int | None, sched_ip: str | None
) -> list[dict[str, Any]]:
    stage = t.spec.stages[index].name
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_IP", "status.podIP"),
        {"name": "DEEPLAB_TRAINING", "value": t.name},
        {"name": "DEEPLAB_STAGE", "value": stage},
        {"name": "DEEPLAB_ATTEMPT", "value": names.attempt_id(t.uid, stage, attempt)},
        {"name": "DEEPLAB_LAUNCHER", "value": t.spec.launcher.value},
    ]
    if rank is not None:
        env.append({"name": "DEEPLAB_WORKER_INDEX", "value": str(rank)})
    volcano = t.spec.gang == Gang.VOLCANO or t.spec.scheduler_name == "volcano"
    if role == names.ROLE_WORKER and t.spec.npu_resource and volcano:
        # Volcano's Ascend plugin writes the chips it chose into this annotation before the container
        # starts; MindX hands them to the Ascend Docker Runtime this way (ascend-operator env.go
        # setAscendVisibleDevicesEnv). Without Volcano the device plugin sets the variable itself.
        env.append(_field_env("ASCEND_VISIBLE_DEVICES", f"metadata.annotations['{t.spec.npu_resource}']"))
    if t.spec.launcher == Launcher.RANK_TABLE:
        env += [
            {"name": "DEEPLAB_RANK_TABLE", "value": f"{ranktable.MOUNT_PATH}/{ranktable.TABLE_KEY}"},
            {"name": "DEEPLAB_RANKS", "value": f"{ranktable.MOUNT_PATH}/{ranktable.RANKS_KEY}"},
        ]
    else:
        env += _scheduler_env(t, role, rank, sched_ip)
    template = t.spec.template
    return env + ([var.wire() for var in template.env] if template and template.env else [])


def _resources(t: Training, role: str) -> dict[str, Any]:
    template = t.spec.template
    # Quantities are strings on the wire (api.Quantity turns YAML's `cpu: 1` into "1").
    resources = template.resources.wire() if template and template.resources else {}
    if role == names.ROLE_WORKER and t.spec.npu_resource:
        # Extended resources must have requests == limits; npusPerPod NPUs per worker pod.
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})[t.spec.npu_resource] = str(t.spec.npus_per_pod)
    return resources


def security_context(t: Training, role: str) -> dict[str, Any]:
    """The container's hardening: no privilege escalation, no capabilities, the runtime's default
    seccomp profile, and a non-root user for every pod except NPU workers. On stock Atlas hosts the
    Ascend driver creates /dev/davinci* and the driver's shared files root-owned, so a worker that
    requests ``npuResource`` keeps the image's root user, still without capabilities; the CPU image
    and the MindSpore scheduler pod need neither. ``npuResource`` is a domain-qualified extended
    resource (the CRD refuses ``cpu``), so no spec value turns this off for an ordinary pod.
    """
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if not runs_as_root(t, role):
        context["runAsNonRoot"] = True
        # An image whose USER is root (the Ascend image) still starts, as an unprivileged uid.
        context["runAsUser"] = NON_ROOT_UID
        context["runAsGroup"] = NON_ROOT_UID
    return context


def runs_as_root(t: Training, role: str) -> bool:
    """NPU workers keep the image's root user (see ``security_context``); every other pod is uid 1000."""
    return role == names.ROLE_WORKER and bool(t.spec.npu_resource)


def pod_security_context(t: Training, role: str) -> dict[str, Any] | None:
    """The pod's: volumes the kubelet can hand over become writable for the non-root user.

    With ``fsGroup`` the kubelet gives a PVC (or emptyDir) the group NON_ROOT_UID, group-writable, so
    the CPU worker can write checkpoints to a fresh volume whose root directory belongs to root, as
    provisioned volumes do. ``OnRootMismatch``: only when the volume's root is not so already, not a
    recursive walk of a large checkpoint volume at every start. The kubelet never changes hostPath
    volumes (the cpu-smoke sample's data Job hands those over); NPU workers run as root and need none.
    """
    if runs_as_root(t, role):
        return None
    return {"fsGroup": NON_ROOT_UID, "fsGroupChangePolicy": "OnRootMismatch"}


@dataclass(frozen=True)
class PodContext:
    """What an attempt's pods need besides the spec: facts the controller learned at run time."""

    sched_ip: str | None = None  # dynamicCluster: the scheduler Service's ClusterIP
    avoid_nodes: tuple[str, ...] = ()  # nodes with a recent NPU/HCCL fault (status.avoidedNodes)


def _avoid(nodes: tuple[str, ...]) -> dict[str, Any]:
    """Required node affinity off the faulty nodes, by name (``matchFields``: no label needed)."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": sorted(nodes)}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def placed_by_server(t: Training) -> bool:
    """NPU workers are placed as Atlas servers need (controller/placement.py); CPU workers anywhere."""
    return bool(t.spec.npu_resource)


def worker_affinity(t: Training, stage: str, attempt: int) -> dict[str, Any]:
    """The (anti-)affinity every worker pod of the attempt carries (controller/placement.py)."""
    selector = {
        names.LABEL_TRAINING: names.training_label(t.name),
        names.LABEL_STAGE: stage,
        names.LABEL_ATTEMPT: str(attempt),
        names.LABEL_ROLE: names.ROLE_WORKER,
    }
    per_server = t.spec.npus_per_server
    servers = max(1, t.spec.workers // per_server)
    return placement.affinity(selector, servers, max(1, per_server // t.spec.npus_per_pod))


def termination_grace(t: Training) -> int:
    """Seconds a pod gets between SIGTERM and SIGKILL (``template.terminationGracePeriodSeconds``).

    Workers use them to save a checkpoint; the dynamicCluster scheduler ignores SIGTERM and serves until
    its workers have left, so it gets the same: killed earlier, it would take the saving workers down."""
    template = t.spec.template
    return template.termination_grace_period_seconds if template else DEFAULT_TERMINATION_GRACE_SECONDS


def kueue_group(t: Training, stage: str, attempt: int) -> str:
    """The attempt's Kueue pod group: a new group (and Workload) for every attempt."""
    return names.fit(f"{t.name}-{stage}", f"-{names.child_tag(t.uid, stage)}-a{attempt}")


def _pod(
    t: Training, index: int, attempt: int, name: str, role: str, rank: int | None, ctx: PodContext
) -> dict[str, Any]:
    stage = t.spec.stages[index].name
    template = t.spec.template
    labels = {**(template.labels or {} if template else {}), **pod_labels(t, stage, attempt, role, rank)}
    meta = _metadata(t, name, labels)
    annotations = dict(template.annotations or {}) if template else {}
    if t.spec.gang == Gang.VOLCANO:
        annotations[VOLCANO_GROUP_ANNOTATION] = names.podgroup_name(t.name)
    if rank is not None:
        annotations[RANK_INDEX_ANNOTATION] = str(rank)
    if t.spec.gang == Gang.KUEUE:
        # Kueue's plain-pod integration: the attempt's pods are one group, admitted all at once
        meta["labels"][KUEUE_QUEUE_LABEL] = str(t.spec.queue)
        meta["labels"][KUEUE_GROUP_LABEL] = kueue_group(t, stage, attempt)
        annotations[KUEUE_TOTAL_ANNOTATION] = str(pod_count(t))
    if annotations:
        meta["annotations"] = annotations
    volumes, mounts = volumes_and_mounts(t, index)
    container = {
        "name": CONTAINER,
        "image": t.spec.image,
        "imagePullPolicy": t.spec.image_pull_policy.value,
        "command": command(t, index),
        "env": _env(t, index, attempt, role, rank, ctx.sched_ip),
        "resources": _resources(t, role),
        "volumeMounts": mounts,
        # The job writes its result JSON to /dev/termination-log; on a crash the log tail explains.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": security_context(t, role),
    }
    if role == names.ROLE_SCHEDULER:
        container["ports"] = [{"name": SCHEDULER_PORT_NAME, "containerPort": t.spec.scheduler_port}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the controller restarts whole attempts, never single ranks
        "automountServiceAccountToken": False,  # workers never talk to the API server
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace(t),
        "containers": [container],
        "volumes": volumes,
    }
    pod_context = pod_security_context(t, role)
    if pod_context:
        spec["securityContext"] = pod_context
    scheduler = t.spec.scheduler_name or ("volcano" if t.spec.gang == Gang.VOLCANO else None)
    if scheduler:
        spec["schedulerName"] = scheduler
    if template:
        if template.node_selector:
            spec["nodeSelector"] = dict(template.node_selector)
        if template.tolerations:
            spec["tolerations"] = [toleration.wire() for toleration in template.tolerations]
        if template.priority_class_name:
            spec["priorityClassName"] = template.priority_class_name
    affinity = _avoid(ctx.avoid_nodes) if ctx.avoid_nodes else {}
    if role == names.ROLE_WORKER and rank is not None and placed_by_server(t):
        server = placement.server_of(rank, t.spec.npus_per_pod, t.spec.npus_per_server)
        meta["labels"][names.LABEL_SERVER] = str(server)
        affinity.update(worker_affinity(t, stage, attempt))
    if affinity:
        spec["affinity"] = affinity
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


# Environment variables that differ between the worker pods of one attempt (everything else is shared).
RANK_ENV = ("DEEPLAB_WORKER_INDEX", "MS_NODE_ID", "MS_NODE_RANK")


def _stamp(worker: dict[str, Any], name: str, rank: int, server: int | None) -> dict[str, Any]:
    """Rank ``rank``'s pod from rank 0's: new dicts only where the two differ (name, rank and server
    labels, rank variables); the volumes, resources, tolerations, affinity and the user's template are
    shared, never copied. A 4,096-worker attempt with a 100 KiB template then costs 4,096
    small dicts, not 400 MiB of copies (manifests are serialised as they are sent and never mutated)."""
    meta = worker["metadata"]
    labels = {**meta["labels"], names.LABEL_RANK: str(rank), "replica-index": str(rank)}
    if server is not None:
        labels[names.LABEL_SERVER] = str(server)
    annotations = {**meta["annotations"], RANK_INDEX_ANNOTATION: str(rank)}
    container = worker["spec"]["containers"][0]
    env = [{"name": v["name"], "value": str(rank)} if v["name"] in RANK_ENV else v for v in container["env"]]
    spec = {**worker["spec"], "containers": [{**container, "env": env}]}
    meta = {**meta, "name": name, "labels": labels, "annotations": annotations}
    return {**worker, "metadata": meta, "spec": spec}


def worker_pods(t: Training) -> int:
    """Worker pods of one attempt: npusPerPod ranks each."""
    return t.spec.workers // t.spec.npus_per_pod


def pod_count(t: Training) -> int:
    """Pods of one attempt: the workers and, in dynamicCluster mode, the scheduler."""
    return worker_pods(t) + (1 if t.spec.launcher == Launcher.DYNAMIC_CLUSTER else 0)


def desired_pods(
    t: Training, index: int, attempt: int, ctx: PodContext | None = None
) -> dict[str, dict[str, Any]]:
    """Every pod of one stage attempt, by name: the workers and, in dynamicCluster mode, the scheduler.

    The worker manifest is built once per attempt and stamped per rank (see ``_stamp``)."""
    ctx = ctx or PodContext()
    stage = t.spec.stages[index].name
    first = names.worker_name(t.name, t.uid, stage, attempt, 0)
    worker = _pod(t, index, attempt, first, names.ROLE_WORKER, 0, ctx)
    pods = {first: worker}
    for rank in range(1, worker_pods(t)):
        name = names.worker_name(t.name, t.uid, stage, attempt, rank)
        server = None
        if placed_by_server(t):
            server = placement.server_of(rank, t.spec.npus_per_pod, t.spec.npus_per_server)
        pods[name] = _stamp(worker, name, rank, server)
    if t.spec.launcher == Launcher.DYNAMIC_CLUSTER:
        name = names.scheduler_name(t.name, t.uid, stage, attempt)
        pods[name] = _pod(t, index, attempt, name, names.ROLE_SCHEDULER, None, ctx)
    return pods


def pod_names(t: Training, index: int, attempt: int) -> list[str]:
    """The names ``desired_pods`` gives, without building the pods."""
    stage = t.spec.stages[index].name
    found = [names.worker_name(t.name, t.uid, stage, attempt, rank) for rank in range(worker_pods(t))]
    if t.spec.launcher == Launcher.DYNAMIC_CLUSTER:
        found.append(names.scheduler_name(t.name, t.uid, stage, attempt))
    return found


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Is ``obj`` controlled by the training with this uid? The operator only ever changes or deletes
    objects it created for that training (never one that merely has the expected name)."""
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def describe_owner(obj: dict[str, Any]) -> str:
    """Who controls an object, for a NameConflict message: ``Job/x``, or "no owner"."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    return f"{ref.get('kind')}/{ref.get('name')}" if ref else "no owner"


# -- the other children ----------------------------------------------------------------------------
def service(t: Training) -> dict[str, Any]:
    """dynamicCluster: a ClusterIP in front of the current scheduler pod, the MS_SCHED_HOST of the
    workers (an IP that stays the same across attempts, known before any worker is created)."""
    port = t.spec.scheduler_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(t, names.service_name(t.name), base_labels(t)),
        "spec": {
            "type": "ClusterIP",
            "selector": {
                names.LABEL_TRAINING: names.training_label(t.name),
                names.LABEL_ROLE: names.ROLE_SCHEDULER,
            },
            # The scheduler has no readiness probe; workers connect while it starts.
            "publishNotReadyAddresses": True,
            "ports": [{"name": SCHEDULER_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def cluster_ip(svc: dict[str, Any] | None) -> str | None:
    """The Service's virtual IP once the API server allocated it (None for a headless Service)."""
    ip = ((svc or {}).get("spec") or {}).get("clusterIP")
    return ip if ip and ip != "None" else None


def configmap(t: Training, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(t, names.configmap_name(t.name), base_labels(t)),
        "data": data,
    }


def podgroup(t: Training) -> dict[str, Any]:
    """Volcano gang scheduling: no pod of the group is bound until all of them fit. As MindX's
    ascend-operator fills it (pkg/controllers/v1/podgroup.go): minMember, the queue, the resources the
    whole group needs (minResources, so Volcano admits it only when they are free) and the priority."""
    spec: dict[str, Any] = {"minMember": pod_count(t)}
    if t.spec.queue:
        spec["queue"] = t.spec.queue
    if t.spec.npu_resource:
        spec["minResources"] = {t.spec.npu_resource: str(t.spec.workers)}
    template = t.spec.template
    if template and template.priority_class_name:
        spec["priorityClassName"] = template.priority_class_name
    return {
        "apiVersion": "scheduling.volcano.sh/v1beta1",
        "kind": "PodGroup",
        "metadata": _metadata(t, names.podgroup_name(t.name), base_labels(t)),
        "spec": spec,
    }
