"""Why an attempt ended, and what that means for the next one. Pure.

Three kinds of ending are told apart, because they call for different answers:

* a **disruption**: the pod was evicted, preempted or lost with its node (Kubernetes marks it with the
  ``DisruptionTarget`` condition), or deleted by someone else. The training did nothing wrong: the
  attempt restarts without using up ``backoffLimit`` (its own cap is ``failurePolicy.maxDisruptions``),
  as a Job's ``podFailurePolicy`` with ``onPodConditions: DisruptionTarget`` + ``Ignore`` does.
* a **device fault**: an NPU or HCCL error. Retrying on the same node tends to fail the same way, so
  the next attempts avoid that node for a while (MindX's fault-scheduling does the same by isolating
  the faulty node).
* any other **failure**, counted against ``backoffLimit`` unless ``failurePolicy.rules`` say otherwise.
"""

from __future__ import annotations

import json
import re
from typing import Any

from controller.api import FailureAction, FailurePolicy

DISRUPTION_TARGET = "DisruptionTarget"  # pod condition set by eviction, preemption, taint manager, PodGC
EXIT_BAD_INPUT = 2  # job.recipe.EXIT_BAD_INPUT: a configuration or data error, retrying cannot help
EXIT_SIGTERM = 143  # 128 + SIGTERM: the job saved and stopped because it was asked to
EXIT_SIGKILL = 137  # 128 + SIGKILL: the kubelet's kill once the grace period ran out (or the OOM killer)

# What an NPU or HCCL failure leaves in the worker's termination message (its log tail): HCCL's own
# name, and CANN's error codes of the collective library (EI: HCCL, EJ: HCCP, the RoCE transport) and
# of the runtime/driver (EE, EL, EH), e.g. "EI0006: Getting socket times out" or "EL0004: Failed to
# allocate memory". Operator errors of a model (EZ, E8...) are not device faults.
DEVICE_FAULT = re.compile(
    r"\bHCCL\b|\bE[IJELH]\d{4}\b|device (?:is )?(?:lost|unhealthy|fault)|"
    r"ACL_ERROR_RT_\w+|heartbeat lost",
    re.IGNORECASE,
)

# The Ascend device plugin reports unhealthy chips on the node object, per resource name
# (component/ascend-device-plugin: e.g. "huawei.com/Ascend910-Unhealthy": "Ascend910-3").
UNHEALTHY_SUFFIXES = ("-Unhealthy", "-NetworkUnhealthy")
DEVICE_INFO_PREFIX = "mindx-dl-deviceinfo-"  # + node name, in kube-system (the device plugin's report)
DEVICE_INFO_KEY = "DeviceInfoCfg"


def disruption(status: dict[str, Any], deleting: bool, exit_code: int | None) -> str:
    """The disruption that ended this pod, or "" when it failed on its own.

    A pod carrying ``DisruptionTarget=True`` was evicted, preempted or lost with its node; a pod being
    deleted that had not finished was removed by someone else (the controller only deletes pods of
    attempts it has already ended). Either way the job's exit code is the 143 of the SIGTERM, the 137 of
    the kill when saving outlasted the grace period (seen on a loaded node), or none; a deleted pod the
    OOM killer ended is still a failure.
    """
    for condition in status.get("conditions") or []:
        if condition.get("type") == DISRUPTION_TARGET and condition.get("status") == "True":
            return condition.get("reason") or DISRUPTION_TARGET
    if status.get("reason") == "Evicted":  # node-pressure eviction by a kubelet older than the condition
        return "Evicted"
    if deleting and exit_code in (None, EXIT_SIGTERM, EXIT_SIGKILL) and not _oom_killed(status):
        return "Deleted"
    return ""


def _oom_killed(status: dict[str, Any]) -> bool:
    return any(
        ((container.get("state") or {}).get("terminated") or {}).get("reason") == "OOMKilled"
        for container in status.get("containerStatuses") or []
    )


def device_fault(message: str | None) -> str:
    """The NPU/HCCL error quoted in a worker's termination message, or ""."""
    found = DEVICE_FAULT.search(message or "")
    return found.group(0) if found else ""


def device_list(data: dict[str, str]) -> dict[str, str]:
    """``DeviceInfo.DeviceList`` of a device-info ConfigMap's data, string values only; {} if unreadable."""
    try:
        listed = json.loads(data.get(DEVICE_INFO_KEY) or "{}")["DeviceInfo"]["DeviceList"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return {}
    if not isinstance(listed, dict):
        return {}
    return {str(k): v for k, v in listed.items() if isinstance(v, str)}


def unhealthy_npus(node: dict[str, Any] | None) -> str:
    """The device plugin's list of unhealthy NPUs on a node (any resource), or ""."""
    annotations = ((node or {}).get("metadata") or {}).get("annotations") or {}
    found = [
        f"{key}={value}"
        for key, value in sorted(annotations.items())
        if key.startswith("huawei.com/") and key.endswith(UNHEALTHY_SUFFIXES) and value.strip()
    ]
    return ", ".join(found)


def action_for(policy: FailurePolicy, exit_code: int | None) -> tuple[FailureAction, str]:
    """(action, reason): the first matching rule of ``failurePolicy.rules`` (reason PodFailurePolicy,
    as a Job's podFailurePolicy), then the built-in rule: exit 2 is a configuration or data error
    (ConfigurationError), any other failure restarts the attempt."""
    if exit_code:
        for rule in policy.rules:
            listed = exit_code in rule.on_exit_codes.values
            if listed == (rule.on_exit_codes.operator.value == "In"):
                return rule.action, "PodFailurePolicy"
    if exit_code == EXIT_BAD_INPUT:
        return FailureAction.FAIL_TRAINING, "ConfigurationError"
    return FailureAction.RESTART_ATTEMPT, ""
