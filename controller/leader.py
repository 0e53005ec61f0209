"""Lease-based leader election (coordination.k8s.io/v1), client-go's algorithm in small.

Two replicas run; only the Lease holder reconciles. A candidate takes the Lease only when its record
has not changed for a whole ``leaseDurationSeconds`` *as observed on the candidate's own clock*, so
clock skew between nodes cannot hand the Lease over early. Every write carries the resourceVersion
it read: of two candidates racing for an expired Lease, one gets 409 and stays a candidate.
A leader that cannot renew within ``renew_deadline`` steps down (the process then exits, as
client-go's do) rather than risk two leaders.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.kube import sent

log = logging.getLogger(__name__)


class LeaseNamespaceMissing(RuntimeError):
    """The Lease's namespace does not exist: a configuration error, not a reason to keep campaigning."""


def _micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api_client_,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ):
        self.api = client.CoordinationV1Api(api_client_)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = (
            lease_duration,
            renew_deadline,
            retry_period,
        )
        self.is_leader = threading.Event()
        self._renewed_at = 0.0  # monotonic time the last successful acquire or renew was *sent*
        self.fatal = ""  # set when campaigning cannot succeed; the process exits with it as one line
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    # -- one attempt ---------------------------------------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        try:
            lease = json.loads(
                self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False).data
            )
        except ApiException as error:
            if error.status != 404:
                raise
            return self._create()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        held_by_other = holder and holder != self.identity
        if held_by_other and time.monotonic() < self._observed_at + duration:
            return False
        now = _micro_time()
        new_spec = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "renewTime": now,
        }
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            sent(self.api.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False))
        except ApiException as error:
            if error.status == 409:
                return False  # someone else wrote first
            raise
        return True

    def _create(self) -> bool:
        now = _micro_time()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            sent(self.api.create_namespaced_lease(self.namespace, body, _preload_content=False))
        except ApiException as error:
            if error.status == 409:
                return False
            if error.status == 404:  # a create answers 404 only for a missing namespace
                raise LeaseNamespaceMissing(
                    f"leader election: namespace {self.namespace!r} for Lease {self.name!r} does not exist "
                    "(install manifests/ first, pass --lease-namespace, or run without --leader-elect)"
                ) from None
            raise
        return True

    # -- the loop ----------------------------------------------------------------------------------
    def run(
        self, stop: threading.Event, on_started: Callable[[], None], on_stopped: Callable[[], None]
    ) -> None:
        """Campaign until leader, then renew until ``stop`` or a lost Lease (which calls ``on_stopped``).

        A missing Lease namespace ends the campaign at once: ``fatal`` says why, ``on_stopped`` is called.
        """
        while not stop.is_set():
            try:
                if self._attempt():
                    break
            except LeaseNamespaceMissing as error:
                self.fatal = str(error)
                log.error("%s", error)
                on_stopped()
                return
            stop.wait(self.retry_period)
        if stop.is_set():
            return
        log.info("leader election: %s acquired lease %s/%s", self.identity, self.namespace, self.name)
        self.is_leader.set()
        on_started()
        while not stop.wait(self.retry_period):
            if not self._attempt() and time.monotonic() - self._renewed_at > self.renew_deadline:
                log.error("leader election: %s lost lease %s/%s", self.identity, self.namespace, self.name)
                self.is_leader.clear()
                on_stopped()
                return

    def leading(self) -> bool:
        """May this replica write now? Only within ``renew_deadline`` of its last successful renew.

        The renew loop notices a lost Lease at its next tick; a replica that was paused (SIGSTOP, a long
        GC, a frozen VM) past the Lease's expiry wakes with reconciles in flight, and another replica
        may lead by then. Every write asks this first (controller/runtime.py), so none of them lands.
        """
        return self.is_leader.is_set() and time.monotonic() - self._renewed_at < self.renew_deadline

    def _attempt(self) -> bool:
        """One acquire or renew. A success counts from before the request went out, not from its reply:
        a replica paused between sending a renew and reading the 200 (SIGSTOP, a frozen VM) wakes up to a
        renewal as old as the pause, and another replica may hold the Lease by then (seen in
        tests/cluster/test_lost_lease.py: stamped at the reply, the fence let the woken replica write)."""
        sent = time.monotonic()
        try:
            renewed = self.try_acquire_or_renew()
        except LeaseNamespaceMissing:
            raise
        except ApiException as error:  # one line, not the response's headers and body
            log.warning(
                "leader election: %s %s on Lease %s/%s", error.status, error.reason, self.namespace, self.name
            )
            return False
        except Exception as error:  # the API server may be briefly away; keep campaigning
            log.warning("leader election: %s", error)
            return False
        if renewed:
            self._renewed_at = sent
        return renewed

    def release(self) -> None:
        """Graceful shutdown: hand the Lease over at once instead of after leaseDurationSeconds."""
        if not self.is_leader.is_set():
            return
        self.is_leader.clear()
        try:
            lease = json.loads(
                self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False).data
            )
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_time())
            sent(self.api.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False))
        except Exception as error:
            log.warning("leader election: release failed: %s", error)
