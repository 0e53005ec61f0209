"""The API server's audit log: what tests count writes with, instead of a component's own word.

The plane starts kube-apiserver with ``POLICY``: every write (create, update, patch, delete) is logged
at Metadata level (who, what, when, the response code), Lease writes also with their request body (a
released Lease shows ``holderIdentity: null``), reads not at all. ``writes`` filters the JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
LEASES = ["leases"]
POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Request",
            "verbs": WRITE_VERBS,
            "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
        },
        {"level": "Metadata", "verbs": WRITE_VERBS},
        {"level": "None"},
    ],
}


def write_policy(path: Path) -> Path:
    path.write_text(json.dumps(POLICY, indent=1))
    return path


def apiserver_args(workdir: Path) -> list[str]:
    """kube-apiserver flags: the policy above, JSON lines in ``workdir/audit.log``, written before
    the response is sent (blocking), never rotated during a test session."""
    policy = write_policy(workdir / "audit-policy.json")
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={workdir / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        "--audit-log-maxsize=0",
    ]


def events(path: Path) -> list[dict[str, Any]]:
    """Every complete event in the log (a line being written is skipped)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def _time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))


def acting_user(event: dict[str, Any]) -> str:
    """The user the request acted as: the impersonated one if any (tests impersonate the operator)."""
    return (event.get("impersonatedUser") or event.get("user") or {}).get("username", "")


def writes(
    found: Iterable[dict[str, Any]],
    *,
    user: str | None = None,
    user_agent: str | None = None,
    namespace: str | None = None,
    since: datetime | None = None,
    succeeded: bool = True,
) -> list[dict[str, Any]]:
    """Write events matching every given filter; with ``succeeded`` only those the server carried out."""
    chosen = []
    for event in found:
        ref = event.get("objectRef") or {}
        code = (event.get("responseStatus") or {}).get("code", 0)
        if event.get("verb") not in WRITE_VERBS or event.get("stage") != "ResponseComplete":
            continue
        if user is not None and acting_user(event) != user:
            continue
        if user_agent is not None and user_agent not in event.get("userAgent", ""):
            continue
        if namespace is not None and ref.get("namespace") != namespace:
            continue
        if since is not None and _time(event) < since:
            continue
        if succeeded and not 200 <= code < 300:
            continue
        chosen.append(event)
    return chosen


def describe(found: Iterable[dict[str, Any]]) -> list[str]:
    """One line per event, for assertion messages."""
    return [
        f"{e['stageTimestamp']} {e.get('userAgent', '')[:40]} {e['verb']} "
        f"{(e.get('objectRef') or {}).get('resource')}/{(e.get('objectRef') or {}).get('name')} "
        f"{(e.get('responseStatus') or {}).get('code')}"
        for e in found
    ]


def _holder_written(event: dict[str, Any]) -> tuple[bool, str | None]:
    """(is a Lease write, the holderIdentity it wrote)."""
    if (event.get("objectRef") or {}).get("resource") != "leases":
        return False, None
    spec = (event.get("requestObject") or {}).get("spec") or {}
    return True, spec.get("holderIdentity")


def lease_writes(found: Iterable[dict[str, Any]], agent: str) -> list[tuple[datetime, str | None]]:
    """(when, holderIdentity written) of every Lease write the server carried out for this user agent."""
    result = []
    for event in writes(found, user_agent=agent):
        is_lease, holder = _holder_written(event)
        if is_lease:
            result.append((_time(event), holder))
    return result


def other_writes(
    found: Iterable[dict[str, Any]], agent: str, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Writes other than Lease writes that the server carried out for this user agent."""
    return [
        e
        for e in writes(found, user_agent=agent, since=since)
        if (e.get("objectRef") or {}).get("resource") != "leases"
    ]


def stamp(event: dict[str, Any]) -> datetime:
    return _time(event)
