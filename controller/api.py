"""The DeepLabTraining API (`deeplab.io/v1alpha1`): the one source of truth for spec and status.

The CRD's OpenAPI schema is generated from these models (``controller.crd``); the controller parses
the objects it reads with the same models, so what the API server validates and what the controller
understands can never drift apart. Field names are camelCase on the wire (aliases) and snake_case in
Python; attribute docstrings become the schema's descriptions (``kubectl explain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "deeplab.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DeepLabTraining"
PLURAL = "deeplabtrainings"
SINGULAR = "deeplabtraining"
SHORT_NAMES = ["dlt"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# An extended resource: a DNS-subdomain prefix, '/', a qualified name (what the kubelet's device plugins
# register, e.g. huawei.com/Ascend910). Native resources (cpu, memory) have no prefix.
EXTENDED_RESOURCE = DNS_SUBDOMAIN[:-1] + r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# resource.Quantity's own syntax (k8s.io/apimachinery), e.g. 500m, 8Gi, 1e3.
_DECIMAL = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY = rf"^(\+|-)?{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_DECIMAL}))?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
DEFAULT_NPU_RESOURCE = "huawei.com/Ascend910"
MAX_STAGES = 16
MAX_WORKERS = 4096
# Worker pods' terminationGracePeriodSeconds: on SIGTERM the job finishes its step and saves a checkpoint.
DEFAULT_TERMINATION_GRACE_SECONDS = 60
MAX_TERMINATION_GRACE_SECONDS = 3600

# Bounds of the free-form parts of the spec: a manifest can never make the controller build huge pods
# (every attempt's pods carry the template; desired pods are built on every reconcile).
QUALIFIED_NAME_MAX = 317  # a label/annotation key: 253-character DNS prefix + '/' + 63-character name
LABEL_VALUE_MAX = 63
ANNOTATION_VALUE_MAX = 4096
MAX_MAP_ENTRIES = 32  # nodeSelector, labels, annotations
MAX_RESOURCE_NAMES = 16  # per limits / requests
QUANTITY_MAX = 64
MAX_ENV = 64
ENV_NAME_MAX = 128
ENV_VALUE_MAX = 4096
MAX_TOLERATIONS = 32
MAX_EXTRA_ARGS = 64
EXTRA_ARG_MAX = 1024
PATH_MAX = 1024
SEED_MAX = 2**32 - 1  # MindSpore's dataset seed is a uint32

# The `train` flags the operator sets itself (controller/resources.py `train_args`; a unit test keeps the
# two equal). extraArgs may not repeat one, not even abbreviated (argparse accepts unique prefixes) or
# as `--flag=value`: `--train_dir` would point a stage at another training's checkpoints.
OPERATOR_FLAGS = (
    "--data_file", "--train_dir", "--train_epochs", "--batch_size", "--crop_size", "--base_lr",
    "--lr_type", "--end_lr", "--min_scale", "--max_scale", "--ignore_label", "--num_classes", "--model",
    "--aspp_rates", "--freeze_bn", "--recompute", "--save_steps", "--keep_checkpoint_max", "--loss_scale",
    "--seed", "--log_steps", "--num_parallel_workers", "--device_target", "--result_file",
    "--ckpt_pre_trained", "--is_distributed", "--eval_data_root", "--eval_data_lst", "--eval_scales",
    "--eval_flip",
)  # fmt: skip


def _cel(*rules: tuple[str, ...] | dict[str, str]) -> dict[str, Any]:
    """CEL rules evaluated by the API server itself: a bad manifest is refused at `kubectl apply`.

    Each rule is ``(rule, message)`` or ``(rule, message, fieldPath)``: the field path makes the API
    server name the offending field (``spec.workers: Invalid value: ...``) instead of the object. A dict
    is used as it is (e.g. with a ``messageExpression`` naming the offending value). The server refuses a
    CRD whose rules may cost too much, so every list or string a rule iterates has a maxItems/maxLength.
    """
    out = []
    for entry in rules:
        if isinstance(entry, dict):
            out.append(entry)
            continue
        rule, message, *path = entry
        item = {"rule": rule, "message": message}
        if path:
            item["fieldPath"] = path[0]
        out.append(item)
    return {"x-kubernetes-validations": out}


def _exactly_one(*fields: str) -> dict[str, Any]:
    """A one-of: exactly one of ``fields`` set (what the API's own volume and env sources require)."""
    present = ", ".join(f"has(self.{name})" for name in fields)
    return _cel((f"[{present}].filter(x, x).size() == 1", f"exactly one of {', '.join(fields)} must be set"))


def _quantity_text(value: Any) -> Any:
    """YAML's ``cpu: 1`` arrives as a number; the pod API wants the quantity's string form."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


# resource.Quantity as the API server's own types declare it: an integer or a string in quantity syntax.
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    StringConstraints(max_length=QUANTITY_MAX, pattern=QUANTITY),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "maxLength": QUANTITY_MAX, "pattern": QUANTITY}),
]
QualifiedName = Annotated[str, StringConstraints(min_length=1, max_length=QUALIFIED_NAME_MAX)]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE)]
AnnotationValue = Annotated[str, StringConstraints(max_length=ANNOTATION_VALUE_MAX)]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=PATH_MAX)]


class Model(BaseModel):
    # extra="ignore": the API server prunes unknown fields anyway; a newer CRD must not break an
    # older controller that reads it.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )

    def wire(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optionals (what the API server stores)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# -- spec ----------------------------------------------------------------------------------------
class Launcher(str, Enum):
    RANK_TABLE = "rankTable"
    DYNAMIC_CLUSTER = "dynamicCluster"


class PullPolicy(str, Enum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class ModelName(str, Enum):
    S16 = "deeplab_v3_s16"
    S8 = "deeplab_v3_s8"


class LRType(str, Enum):
    COS = "cos"
    POLY = "poly"
    EXP = "exp"


class Gang(str, Enum):
    VOLCANO = "volcano"
    KUEUE = "kueue"


class RankTableVersion(str, Enum):
    V1_0 = "1.0"  # Atlas 800 (Ascend 910)
    V1_2 = "1.2"  # Atlas A3 super pods: adds super_pod_list and super_device_id


class FailureAction(str, Enum):
    FAIL_TRAINING = "FailTraining"
    RESTART_ATTEMPT = "RestartAttempt"
    IGNORE = "Ignore"


class ExitCodeOperator(str, Enum):
    IN = "In"
    NOT_IN = "NotIn"


class OnExitCodes(Model):
    operator: ExitCodeOperator = ExitCodeOperator.IN
    """In: the rule matches these exit codes; NotIn: every other non-zero exit code."""
    values: list[Annotated[int, Field(ge=1, le=255)]] = Field(min_length=1, max_length=255)
    """Non-zero container exit codes (1-255)."""


class FailureRule(Model):
    action: FailureAction
    """FailTraining: fail at once. RestartAttempt: a new attempt, counted against backoffLimit.
    Ignore: a new attempt, counted as a disruption (maxDisruptions), not against backoffLimit."""
    on_exit_codes: OnExitCodes
    """The exit code of the worker whose failure ended the attempt (the first to fail)."""


class FailurePolicy(Model):
    """How failed attempts count (like a Job's podFailurePolicy and JobSet's failurePolicy)."""

    rules: list[FailureRule] = Field(default=[], max_length=20)
    """Checked in order, the first match decides; then the built-in rule: exit 2 (a configuration or
    data error) fails the training, any other failure restarts the attempt against backoffLimit."""
    max_disruptions: int = Field(default=10, ge=0, le=1000)
    """Attempts per stage ended by disruptions (eviction, preemption, node loss: the pod's
    DisruptionTarget condition, a pod deleted by someone else, or an Ignore rule) before the training
    fails with DisruptionLimitExceeded. Disruptions do not use up backoffLimit."""
    avoid_faulty_node_seconds: int = Field(default=3600, ge=0, le=2**31 - 1)
    """After a worker fails with an NPU or HCCL error, or on a node whose device plugin reports an
    unhealthy NPU, the next attempts keep off that node for this long (node affinity); 0 disables."""


class PVCSource(Model):
    claim_name: str = Field(min_length=1, max_length=253)
    """Name of a PersistentVolumeClaim in the training's namespace."""
    read_only: bool | None = None
    """Mount the claim read-only (the data and pretrained volumes are always mounted read-only)."""


class HostPathSource(Model):
    path: str = Field(min_length=1, max_length=4096)
    """Directory on the node (single-node or pre-synchronised clusters only; the controller refuses it
    unless the admin allows its prefix)."""
    type: str | None = Field(default=None, max_length=64)
    """hostPath type, e.g. Directory or DirectoryOrCreate."""


class EmptyDirSource(Model):
    medium: str | None = Field(default=None, max_length=16)
    """Storage medium: empty (the node's disk) or Memory (tmpfs)."""
    size_limit: Quantity | None = None
    """Size limit as a quantity, e.g. 10Gi (default: none)."""


class VolumeSource(Model):
    """Exactly one of persistentVolumeClaim, hostPath, emptyDir."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("persistentVolumeClaim", "hostPath", "emptyDir"))

    persistent_volume_claim: PVCSource | None = None
    """A PersistentVolumeClaim of the training's namespace."""
    host_path: HostPathSource | None = None
    """A directory on the node (off unless the admin allows its prefix)."""
    empty_dir: EmptyDirSource | None = None
    """A scratch directory that lives as long as the pod (tests only: nothing survives an attempt)."""


class PretrainedSource(VolumeSource):
    """Where the backbone checkpoint lives: a volume plus the file's path inside it."""

    model_config = ConfigDict(json_schema_extra=VolumeSource.model_config["json_schema_extra"])

    path: FilePath
    """The checkpoint file, relative to the volume's root (mounted at /pretrained)."""


class Volumes(Model):
    data: VolumeSource
    """The datasets (MindRecord files and lists), mounted read-only at /data."""
    checkpoints: VolumeSource
    """Shared by every worker and stage (e.g. a ReadWriteMany PVC), mounted at /checkpoints."""
    pretrained: PretrainedSource | None = None
    """The backbone checkpoint the first stage starts from (optional: random initialisation)."""


class Evaluate(Model):
    data_root: str = Field(default="/data", max_length=PATH_MAX)
    """Root the list's relative paths are resolved against (relative roots resolve under /data)."""
    data_list: FilePath
    """List file of `image label` pairs (relative paths resolve under /data)."""
    scales: list[Annotated[float, Field(gt=0)]] = Field(default=[1.0], min_length=1, max_length=8)
    """Evaluation scales, factors of the image size (multi-scale inference sums the probabilities)."""
    flip: bool = False
    """Add horizontally flipped inference."""


def operator_flag_spellings() -> dict[str, str]:
    """Every spelling argparse takes for an operator flag -> the flag: the flag itself and each
    abbreviation that no other operator flag shares (a shared one is ambiguous: argparse refuses it)."""
    spellings = {}
    for flag in OPERATOR_FLAGS:
        for end in range(3, len(flag) + 1):
            prefix = flag[:end]
            if prefix == flag or sum(other.startswith(prefix) for other in OPERATOR_FLAGS) == 1:
                spellings[prefix] = flag
    return spellings


def _extra_arg_rule() -> dict[str, str]:
    """Refuse an item that sets an operator flag: exactly, abbreviated, or as `--flag=value`.

    One map lookup per item: the API server refuses a CRD whose rules may cost too much, and this rule
    runs for up to MAX_STAGES x MAX_EXTRA_ARGS items of EXTRA_ARG_MAX characters."""
    spellings = operator_flag_spellings()
    table = "{" + ", ".join(f"'{key}': '{flag}'" for key, flag in spellings.items()) + "}"
    given = "self.split('=')[0]"
    return {
        "rule": f"!self.startsWith('--') || !({given} in {table})",
        "messageExpression": (
            f"'extraArgs must not set ' + {given} + ({given}.size() == {table}[{given}].size() ? '' : "
            f"' (an abbreviation of ' + {table}[{given}] + ')') + ': the operator sets it'"
        ),
        "message": "extraArgs must not set a flag the operator sets",
    }


ExtraArg = Annotated[
    str, StringConstraints(max_length=EXTRA_ARG_MAX), Field(json_schema_extra=_cel(_extra_arg_rule()))
]


class Stage(Model):
    """One training run: its own model, data and hyper-parameters, started from an earlier stage's
    final checkpoint. Defaults and limits are the job's own (`deeplab-job train --help`)."""

    name: str = Field(min_length=1, max_length=40, pattern=DNS_LABEL)
    """DNS label naming the stage (also the checkpoint directory: /checkpoints/<training>/<name>)."""
    model: ModelName = ModelName.S16
    """Network: deeplab_v3_s16 (output stride 16) or deeplab_v3_s8 (output stride 8)."""
    data_file: FilePath
    """Training MindRecord file, the first shard (relative paths resolve under /data)."""
    epochs: int = Field(ge=1, le=100000)
    """Epochs to train (passes over the training set)."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Images per device (per worker) per step."""
    base_lr: float = Field(default=0.015, alias="baseLR", gt=0)
    """Base learning rate (the schedule starts here)."""
    lr_type: LRType = LRType.COS
    """Learning-rate schedule, per step: cos, poly (power 0.9, down to endLR) or exp."""
    end_lr: float = Field(default=0.0, alias="endLR", ge=0)
    """Final learning rate of the poly schedule."""
    min_scale: float = Field(default=0.5, gt=0)
    """Smallest random scale factor of the training augmentation."""
    max_scale: float = Field(default=2.0, gt=0)
    """Largest random scale factor of the training augmentation."""
    crop_size: int = Field(default=513, ge=1, le=8192)
    """Training crop (and evaluation pad) size, in pixels."""
    num_classes: int = Field(default=21, ge=1, le=10000)
    """Number of classes, background included (21 for PASCAL VOC)."""
    ignore_label: int = Field(default=255, ge=0, le=255)
    """Label value ignored by the loss and mIoU (labels are 8-bit PNGs)."""
    aspp_rates: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        default=None, min_length=3, max_length=3
    )
    """The three ASPP atrous rates (default: 6, 12, 18 at both output strides, as in the model zoo
    network behind the seed's table; the paper uses 12, 24, 36 at output stride 8)."""
    freeze_bn: bool = False
    """Batch norm uses and keeps its moving statistics (small per-device batches)."""
    recompute: bool = False
    """Recompute the ResNet blocks' activations in the backward pass: ~22 % less activation memory per
    image for more compute (README "Memory"); for a larger per-device batch."""
    loss_scale: float = Field(default=3072.0, ge=1)
    """Fixed loss scale (MindSpore refuses less than 1)."""
    save_steps: int = Field(default=1500, ge=1)
    """Save a checkpoint every N steps (a restarted attempt loses at most this many)."""
    keep_checkpoint_max: int = Field(default=5, ge=1, le=1000)
    """Step checkpoints kept in the stage's directory."""
    log_steps: int = Field(default=10, ge=1, le=1000000)
    """One progress line (status.progress) every N steps."""
    seed: int = Field(default=1, ge=0, le=SEED_MAX)
    """Random seed, the same on every worker (identical initial weights)."""
    num_parallel_workers: int = Field(default=2, ge=1, le=64)
    """Data pipeline worker threads per worker pod."""
    extra_args: list[ExtraArg] = Field(default=[], max_length=MAX_EXTRA_ARGS)
    """Extra `train` flags, appended verbatim; they may not repeat a flag the operator sets."""
    init_from: str | None = Field(default=None, max_length=40, pattern=DNS_LABEL)
    """An earlier stage whose final checkpoint initialises this one (default: the previous stage;
    the first stage starts from the pretrained backbone)."""
    evaluate: Evaluate | None = None
    """Evaluate the stage's final checkpoint and record its mIoU."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.minScale <= self.maxScale", "minScale must not exceed maxScale", ".minScale")
        )
    )


class ResourceRequirements(Model):
    limits: dict[QualifiedName, Quantity] | None = Field(default=None, max_length=MAX_RESOURCE_NAMES)
    """Resource name -> quantity, e.g. memory: 8Gi (the NPU limit is added by the operator)."""
    requests: dict[QualifiedName, Quantity] | None = Field(default=None, max_length=MAX_RESOURCE_NAMES)
    """Resource name -> quantity, e.g. cpu: 4 (the NPU request is added by the operator)."""


class ObjectFieldSelector(Model):
    field_path: str = Field(min_length=1, max_length=256)
    """A field of the pod, e.g. metadata.name or status.hostIP."""
    api_version: str | None = Field(default=None, max_length=64)
    """Version of the schema fieldPath is written in (default: v1)."""


class KeySelector(Model):
    name: str = Field(min_length=1, max_length=253)
    """The ConfigMap or Secret, in the training's namespace."""
    key: str = Field(min_length=1, max_length=253)
    """The key to read."""
    optional: bool | None = None
    """Start the pod even if the object or key is missing."""


class ResourceFieldSelector(Model):
    container_name: str | None = Field(default=None, max_length=63)
    """The container (default: the worker)."""
    resource: str = Field(min_length=1, max_length=QUALIFIED_NAME_MAX)
    """e.g. limits.cpu or requests.memory."""
    divisor: Quantity | None = None
    """Output unit (default: 1)."""


class EnvVarSource(Model):
    """Exactly one of fieldRef, configMapKeyRef, secretKeyRef, resourceFieldRef."""

    model_config = ConfigDict(
        json_schema_extra=_exactly_one("fieldRef", "configMapKeyRef", "secretKeyRef", "resourceFieldRef")
    )

    field_ref: ObjectFieldSelector | None = None
    """A field of the pod."""
    config_map_key_ref: KeySelector | None = None
    """A key of a ConfigMap."""
    secret_key_ref: KeySelector | None = None
    """A key of a Secret (refused by the controller unless the admin allows it)."""
    resource_field_ref: ResourceFieldSelector | None = None
    """A resource limit or request of the container."""


class EnvVar(Model):
    """An environment variable of the worker container: a value or a reference (valueFrom), not both."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.valueFrom) || !has(self.value) || self.value == ''",
                "set value or valueFrom, not both",
            )
        )
    )

    name: str = Field(min_length=1, max_length=ENV_NAME_MAX, pattern=ENV_NAME)
    """Variable name (letters, digits, '_', '-', '.'; not starting with a digit)."""
    value: str | None = Field(default=None, max_length=ENV_VALUE_MAX)
    """The value."""
    value_from: EnvVarSource | None = None
    """Where the value comes from instead."""


class TolerationOperator(str, Enum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(str, Enum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(Model):
    """Lets the worker pods run on nodes with a matching taint."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
                ".value",
            )
        )
    )

    key: str | None = Field(default=None, max_length=QUALIFIED_NAME_MAX)
    """Taint key (empty with operator Exists: every taint)."""
    operator: TolerationOperator | None = None
    """Exists or Equal (default: Equal)."""
    value: str | None = Field(default=None, max_length=LABEL_VALUE_MAX)
    """Taint value (operator Equal)."""
    effect: TaintEffect | None = None
    """NoSchedule, PreferNoSchedule or NoExecute (default: every effect)."""
    toleration_seconds: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """NoExecute only: seconds the pod stays after the taint appears (default: forever)."""


class PodTemplatePatch(Model):
    """What a cluster needs to add to every worker pod."""

    node_selector: dict[QualifiedName, LabelValue] | None = Field(default=None, max_length=MAX_MAP_ENTRIES)
    """Node labels the worker pods must land on."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=MAX_TOLERATIONS)
    """Taints the worker pods tolerate."""
    resources: ResourceRequirements | None = None
    """Merged with the NPU request (e.g. cpu/memory requests and limits)."""
    env: list[EnvVar] | None = Field(default=None, max_length=MAX_ENV)
    """Extra environment variables of the worker container (the operator's own cannot be overridden)."""
    annotations: dict[QualifiedName, AnnotationValue] | None = Field(default=None, max_length=MAX_MAP_ENTRIES)
    """Added to every pod's annotations."""
    labels: dict[QualifiedName, LabelValue] | None = Field(default=None, max_length=MAX_MAP_ENTRIES)
    """Added to every pod's labels (the operator's own labels win)."""
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """PriorityClass of the pods (and of the Volcano PodGroup)."""
    termination_grace_period_seconds: int = Field(
        default=DEFAULT_TERMINATION_GRACE_SECONDS, ge=1, le=MAX_TERMINATION_GRACE_SECONDS
    )
    """The pods' terminationGracePeriodSeconds: how long a deleted, evicted or replaced worker may take to
    finish its step and save a checkpoint (exit 143) before the kubelet's SIGKILL (137). Raise it for slow
    checkpoint storage (NFS, OBS) or loaded nodes. The dynamicCluster scheduler pod gets the same value: it
    serves until its workers have left. At least 1 (0 would kill before any save); at most 3600, because
    until then a rank stuck in a collective keeps its NPUs and delays the next attempt. A change applies
    to pods created afterwards (the next attempt); running pods keep theirs."""


_SPEC_RULES = _cel(
    (
        "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
        "stage names must be unique",
        ".stages",
    ),
    (
        "self.stages.all(i, s, !has(s.initFrom) || self.stages.exists(j, t, j < i && t.name == s.initFrom))",
        "initFrom must name an earlier stage",
        ".stages",
    ),
    (
        "self.npuResource == '' || self.workers <= self.npusPerServer || "
        "self.workers % self.npusPerServer == 0",
        "workers spanning more than one server must fill whole servers (a multiple of npusPerServer)",
        ".workers",
    ),
    (
        "self.workers % self.npusPerPod == 0 && self.npusPerPod <= self.npusPerServer",
        "workers must be a multiple of npusPerPod, and npusPerPod at most npusPerServer",
        ".npusPerPod",
    ),
    (
        "!has(self.gang) || self.gang != 'volcano' || !has(self.schedulerName) || "
        "self.schedulerName == 'volcano'",
        "gang: volcano needs schedulerName volcano (or leave schedulerName unset)",
        ".schedulerName",
    ),
    (
        "!has(self.gang) || self.gang != 'kueue' || has(self.queue)",
        "gang: kueue needs queue, the LocalQueue of the training's namespace",
        ".queue",
    ),
)

_IMMUTABLE = _cel(
    (
        "self.workers == oldSelf.workers && self.launcher == oldSelf.launcher && "
        "self.stages == oldSelf.stages && self.volumes == oldSelf.volumes && "
        "self.npusPerPod == oldSelf.npusPerPod",
        "workers, npusPerPod, launcher, stages and volumes are immutable; create a new training instead",
    )
)


class DeepLabTrainingSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": _SPEC_RULES["x-kubernetes-validations"]
            + _IMMUTABLE["x-kubernetes-validations"]
        }
    )

    image: str = Field(min_length=1, max_length=1024)
    """Worker image (runs `python -m job launch -- train ...`)."""
    image_pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    """When the kubelet pulls the worker image: Always, IfNotPresent or Never."""
    workers: int = Field(ge=1, le=MAX_WORKERS)
    """Ranks (one NPU or CPU training process each): the data-parallel world size."""
    npus_per_pod: Literal[1, 2, 4, 8] = 1
    """Ranks per worker pod: 1 (one pod per NPU) or 2/4/8 (one pod per server holding its NPUs, MindX's
    Atlas 800 layout); the pod's launcher starts one training process per NPU."""
    npus_per_server: Literal[1, 2, 4, 8] = 8
    """NPUs each server gives the training (Atlas 800: 1, 2, 4 or 8, the same on every server). The
    ranks of one server land on one node and different servers on different nodes (pod affinity); with
    2 or 4, their NPUs lie in one HCCS ring (0-3 or 4-7)."""
    npu_resource: str = Field(
        default=DEFAULT_NPU_RESOURCE,
        max_length=QUALIFIED_NAME_MAX,
        json_schema_extra=_cel(
            (
                f"self == '' || (self.matches(r'{EXTENDED_RESOURCE}') && !self.contains('kubernetes.io/') "
                "&& !self.startsWith('requests.'))",
                "npuResource must be empty (CPU workers) or a domain-qualified extended resource name "
                "outside kubernetes.io, e.g. huawei.com/Ascend910",
            )
        ),
    )
    """Extended resource (device plugin name, e.g. huawei.com/Ascend910) requested once per worker;
    empty for CPU workers."""
    launcher: Launcher = Launcher.RANK_TABLE
    """rankTable: HCCL rank table (Ascend). dynamicCluster: MindSpore scheduler + workers (MS_*)."""
    scheduler_port: int = Field(default=8118, ge=1024, le=65535)
    """dynamicCluster only: the MindSpore scheduler's port."""
    volumes: Volumes
    """The data, checkpoint and pretrained-backbone volumes of every worker."""
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)
    """Run in order; each starts from an earlier stage's final checkpoint."""
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Failed attempts allowed per stage before the training fails."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """Fail the training when it has been active (not suspended) for this long."""
    suspend: bool = False
    """Delete the running pods and keep the progress; unsuspending starts a new attempt that resumes."""
    progress_timeout_seconds: int = Field(default=1800, ge=0, le=604800)
    """While every worker runs, fail the attempt with reason Hung (and start a new one) when rank 0
    printed no new progress line for this long, e.g. HCCL blocked after a peer NPU died; 0 disables.
    Needs rank 0's log to be readable (pods/log)."""
    failure_policy: FailurePolicy = FailurePolicy()
    """Exit-code rules, the disruption cap and how long a faulty node is avoided."""
    rank_table_version: RankTableVersion = RankTableVersion.V1_0
    """rankTable launcher: 1.0 (Atlas 800) or 1.2 (Atlas A3 super pods, super-pod fields from the device
    plugin's annotation)."""
    pending_timeout_seconds: int = Field(default=600, ge=0, le=604800)
    """How long an attempt's pods may wait to run (unschedulable, image pull, missing volume) before the
    training fails with reason PendingTimeout, freeing the NPUs its placed pods hold; 0 waits forever.
    The cause is reported at once in the PodsPending condition and an event."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """Delete the training (and everything it created) this long after it finished."""
    scheduler_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """Scheduler of the pods (default: the cluster's default scheduler; volcano with gang)."""
    gang: Gang | None = None
    """All of an attempt's pods are admitted together or not at all. volcano: a Volcano PodGroup
    (schedulerName volcano); kueue: one Kueue pod group per attempt, queued in `queue`."""
    queue: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    """kueue: the LocalQueue (in the training's namespace); volcano: the Volcano queue of the PodGroup."""
    template: PodTemplatePatch | None = None
    """Node selection, tolerations, resources, environment, labels and annotations of every pod."""


# -- status --------------------------------------------------------------------------------------
class Phase(str, Enum):
    PENDING = "Pending"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


FINISHED = (Phase.SUCCEEDED, Phase.FAILED)


class Condition(Model):
    """The standard metav1.Condition shape."""

    type: str = Field(max_length=316)
    """Condition type, e.g. PodsPending."""
    status: str = Field(json_schema_extra={"enum": ["True", "False", "Unknown"]})
    """True, False or Unknown."""
    reason: str = Field(default="", max_length=1024)
    """One CamelCase word: why the condition has this status."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation the condition was computed from."""


class StageStatus(Model):
    name: str
    """The stage's name (spec.stages[].name)."""
    phase: Phase = Phase.PENDING
    """Pending, Initializing, Running, Succeeded, Failed or Suspended."""
    attempts: int = 0
    """Attempts started (a suspension and a failure each start a new one)."""
    failures: int = 0
    """Failed attempts, compared with backoffLimit."""
    disruptions: int = 0
    """Attempts ended by disruptions, compared with failurePolicy.maxDisruptions."""
    start_time: str | None = None
    """When the stage's first attempt started (RFC 3339)."""
    completion_time: str | None = None
    """When the stage finished (RFC 3339)."""
    checkpoint: str | None = None
    """The stage's final checkpoint, as reported by rank 0."""
    loss: float | None = None
    """The stage's final training loss."""
    miou: float | None = None
    """Mean intersection-over-union of the final checkpoint (0-1), when the stage evaluates."""
    message: str | None = None
    """Why the stage failed, or its result in words."""


class Progress(Model):
    """Rank 0's newest JSON progress line."""

    epoch: int | None = None
    """Current epoch."""
    epochs: int | None = None
    """Epochs of the stage."""
    step: int | None = None
    """Global step (steps completed)."""
    steps: int | None = None
    """Total steps of the stage."""
    loss: float | None = None
    """Training loss of the step."""
    lr: float | None = None
    """Learning rate of the step."""
    images_per_second: float | None = None
    """Throughput of all workers together, in images per second."""
    eta_seconds: float | None = None
    """Estimated time until the stage ends, in seconds."""
    update_time: str | None = None
    """When the controller read the line (RFC 3339)."""


class AvoidedNode(Model):
    name: str
    """The node's name."""
    until: str = Field(json_schema_extra={"format": "date-time"})
    """New pods avoid the node until then (RFC 3339)."""
    reason: str = Field(default="", max_length=1024)
    """The fault seen there."""


class DeepLabTrainingStatus(Model):
    phase: Phase | None = None
    """Pending, Initializing, Running, Succeeded, Failed or Suspended."""
    stage: str | None = None
    """Printable position, e.g. `2/3 s8-vocaug`."""
    stage_index: int | None = None
    """Index of the current stage in spec.stages (0-based)."""
    attempt: int | None = None
    """The current stage's attempt number."""
    attempt_id: str | None = None
    """Identifies the current attempt's pods and rank table (DEEPLAB_ATTEMPT)."""
    attempt_start_time: str | None = None
    """When the current attempt started (pendingTimeoutSeconds counts from here)."""
    epoch: str | None = None
    """Printable `epoch/epochs` of the current stage."""
    miou: float | None = None
    """mIoU of the newest evaluated stage."""
    progress: Progress | None = None
    """Rank 0's newest progress line."""
    stages: list[StageStatus] | None = None
    """One entry per stage started so far."""
    start_time: str | None = None
    """When the training started (RFC 3339)."""
    completion_time: str | None = None
    """When the training succeeded or failed (RFC 3339)."""
    reason: str | None = None
    """Why the training is in its phase (one CamelCase word)."""
    message: str | None = None
    """Human-readable details of reason."""
    conditions: list[Condition] | None = None
    """Current conditions (metav1.Condition), one per type."""
    avoided_nodes: list[AvoidedNode] | None = None
    """Nodes new attempts keep off after an NPU/HCCL fault there (failurePolicy.avoidFaultyNodeSeconds)."""
    observed_generation: int | None = None
    """The spec generation the status was computed from."""


class DeepLabTraining(Model):
    """Multi-stage DeepLabV3 training on Ascend NPUs (or CPUs/GPUs through MindSpore's dynamic cluster)."""

    spec: DeepLabTrainingSpec
    """What to train, where, and on how many workers."""
    status: DeepLabTrainingStatus | None = None
    """What the controller observed (written by the controller only)."""


PRINTER_COLUMNS = [
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Epoch", "type": "string", "jsonPath": ".status.epoch"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "mIoU", "type": "number", "jsonPath": ".status.miou"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


# -- a parsed object -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Training:
    """A DeepLabTraining as read from the API server: identity, parsed spec and status."""

    name: str
    namespace: str
    uid: str
    generation: int
    resource_version: str
    spec: DeepLabTrainingSpec
    status: DeepLabTrainingStatus
    deleting: bool = False

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Training:
        meta = obj["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 1)),
            resource_version=meta.get("resourceVersion", ""),
            spec=DeepLabTrainingSpec.model_validate(obj["spec"]),
            status=DeepLabTrainingStatus.model_validate(obj.get("status") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )
