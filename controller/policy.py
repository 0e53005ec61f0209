"""What a tenant may ask of the operator beyond what the CRD schema checks: the admin's knobs. Pure.

Whoever may create DeepLabTrainings in a namespace gets pods created there by the operator's
ServiceAccount. The pods' fields that could reach beyond the tenant's own namespace are therefore
off unless the cluster admin turns them on with controller flags:

- hostPath volumes (any node directory: another tenant's checkpoints, the node's own files) are
  refused unless their path lies under a prefix the admin allows (``--allowed-host-path-prefixes``);
- environment variables from Secrets (``valueFrom.secretKeyRef``) are refused unless allowed
  (``--allow-secret-env``): a worker could print the secret into its termination message or logs,
  which the operator copies into the training's status and events;
- environment variables the operator itself sets (rank, attempt, rank-table and MindSpore cluster
  variables) cannot be overridden, so a pod cannot claim another rank or another attempt's table.

A training that asks for more fails with reason ``PolicyViolation`` before anything is created.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from controller.api import DeepLabTrainingSpec

# Set by controller/resources.py on every pod; a user's value would silently replace the operator's
# (the kubelet keeps the last of two variables with one name).
RESERVED_ENV_PREFIXES = ("DEEPLAB_", "MS_", "RANK_", "HCCL_")
RESERVED_ENV = frozenset({"POD_NAME", "POD_NAMESPACE", "POD_IP", "DEVICE_ID", "RANK_ID", "RANK_SIZE"})


@dataclass(frozen=True)
class Policy:
    """The admin's choices (controller flags); the defaults allow only what pod creation in the
    training's own namespace allows anyway."""

    host_path_prefixes: tuple[str, ...] = ()
    allow_secret_env: bool = False


def _under(path: str, prefix: str) -> bool:
    """Component-wise: ``/data`` allows ``/data/voc`` but not ``/data2`` or ``/data/../etc``."""
    prefix = posixpath.normpath(prefix)
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _host_path_problem(path: str, policy: Policy) -> str | None:
    if not policy.host_path_prefixes:
        return "hostPath volumes are not allowed (the admin enables them with --allowed-host-path-prefixes)"
    if not path.startswith("/") or ".." in path.split("/"):
        return f"hostPath {path!r} must be an absolute path without '..'"
    if not any(_under(posixpath.normpath(path), prefix) for prefix in policy.host_path_prefixes):
        allowed = ", ".join(policy.host_path_prefixes)
        return f"hostPath {path!r} is outside the allowed prefixes ({allowed})"
    return None


def _env_problem(var: dict[str, Any], policy: Policy) -> str | None:
    name = str(var.get("name", ""))
    if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
        return f"{name} is set by the operator and cannot be overridden"
    if "secretKeyRef" in (var.get("valueFrom") or {}) and not policy.allow_secret_env:
        return (
            f"{name} reads a Secret (valueFrom.secretKeyRef), which the admin has not allowed "
            "(--allow-secret-env)"
        )
    return None


def violations(spec: DeepLabTrainingSpec, policy: Policy) -> list[str]:
    """Every field of ``spec`` the policy refuses, as ``field: why``; empty when the spec is allowed."""
    wire = spec.wire()
    found = []
    for volume, source in (wire.get("volumes") or {}).items():
        host = source.get("hostPath")
        if host is not None and (problem := _host_path_problem(str(host.get("path", "")), policy)):
            found.append(f"spec.volumes.{volume}.hostPath: {problem}")
    for index, var in enumerate((wire.get("template") or {}).get("env") or []):
        if problem := _env_problem(var, policy):
            found.append(f"spec.template.env[{index}]: {problem}")
    return found
