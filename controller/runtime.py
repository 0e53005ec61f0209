"""The running controller: informers feed a work queue, workers plan and apply, one leader at a time.

Informers only *trigger* reconciles (an event names a training); each reconcile then reads the
training and its children live, so a reconcile never acts on a stale cache right after its own
writes. Informers run on every replica (a standby is warm and ready); workers only on the leader.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from controller import api, health, kube, names
from controller.informer import Informer
from controller.leader import LeaderElector
from controller.plan import Create, Event, name_conflict, plan, rank0_pod
from controller.policy import Policy
from controller.workqueue import WorkQueue

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)
FINISHED_OR_SUSPENDED = {api.Phase.SUCCEEDED.value, api.Phase.FAILED.value, api.Phase.SUSPENDED.value}


@dataclass
class Options:
    namespaces: tuple[str, ...] = ()  # empty: every namespace (a namespaced install lists its own)
    workers: int = 2
    resync_seconds: float = 300.0
    log_interval: float = 30.0  # how often rank 0's log tail is read while Running
    watch_timeout: int = 60
    leader_elect: bool = True
    lease_namespace: str = "deeplab-system"
    lease_name: str = "deeplab-operator"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = ""
    policy: Policy = field(default_factory=Policy)  # the admin's limits on what a training may ask
    health_addr: str | None = ":8081"  # health.parse_address: host:port, [::]:port; "0" or None: no server


class Metrics:
    """A registry per controller (tests run several in one process)."""

    def __init__(self, controller: Controller):
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "deeplab_reconcile_total", "Reconciles by result", ["result"], registry=self.registry
        )
        self.errors = Counter("deeplab_reconcile_errors_total", "Failed reconciles", registry=self.registry)
        self.latency = Histogram(
            "deeplab_reconcile_duration_seconds", "Reconcile latency", registry=self.registry
        )
        self.writes = Counter(
            "deeplab_api_writes_total",
            "Writes to the API server",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.leader = Gauge("deeplab_leader", "1 while this replica holds the Lease", registry=self.registry)
        self.registry.register(_PhaseCollector(controller))


class _PhaseCollector:
    def __init__(self, controller: Controller):
        self.controller = controller

    def collect(self):
        family = GaugeMetricFamily("deeplab_trainings", "Trainings by phase", labels=["phase"])
        counts = dict.fromkeys([p.value for p in api.Phase], 0)
        for obj in self.controller.trainings_snapshot():
            phase = (obj.get("status") or {}).get("phase") or api.Phase.PENDING.value
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


def _batches(actions: list) -> list[list]:
    """Consecutive pod creates form one batch (they are independent and idempotent); every other
    action is a batch of its own, so the plan's order holds between different kinds of action."""
    batches: list[list] = []
    for action in actions:
        if _is_pod_create(action) and batches and _is_pod_create(batches[-1][-1]):
            batches[-1].append(action)
        else:
            batches.append([action])
    return batches


def _is_pod_create(action) -> bool:
    return isinstance(action, Create) and action.manifest["kind"] == "Pod"


class NotLeading(RuntimeError):
    """A write by a replica whose Lease may have expired (paused, cut off): never sent."""


class NamespaceGone(RuntimeError):
    """Creates refused because the training's namespace is being deleted: it goes with the namespace."""


class Controller:
    def __init__(self, api_client_, options: Options | None = None):
        self.options = options or Options()
        self.identity = self.options.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        # the replica's name in every request's User-Agent: the API server's audit log tells replicas apart
        api_client_.user_agent = f"deeplab-operator/{self.identity}"
        self.metrics = Metrics(self)
        self.kube = kube.Kube(api_client_, on_write=self._before_write)
        self.queue = WorkQueue()
        self.stop_event = threading.Event()
        self.lost_lease = threading.Event()
        self._trainings: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last_log_read: dict[Key, float] = {}
        self._threads: list[threading.Thread] = []
        self._server: health.HealthServer | None = None
        self.elector = LeaderElector(
            api_client_,
            self.options.lease_namespace,
            self.options.lease_name,
            self.identity,
            self.options.lease_duration,
            self.options.renew_deadline,
            self.options.retry_period,
        )
        self.informers = self._informers(api_client_)
        # each worker's batch of creates, every watch, each worker's own request and the Lease's
        workers = self.options.workers
        kube.size_pool(api_client_, workers * kube.CONNECTIONS + len(self.informers) + workers + 1)

    # -- informers ---------------------------------------------------------------------------------
    def _informers(self, api_client_) -> list[Informer]:
        """Trainings, pods and services: watched cluster-wide, or one informer per kind and namespace
        when the controller watches a list of namespaces (a namespaced install has Roles there only,
        and no cluster-wide list/watch right to use; see overlays/namespaced)."""
        custom, core = client.CustomObjectsApi(api_client_), client.CoreV1Api(api_client_)
        timeout, stop = self.options.watch_timeout, self.stop_event
        selector = {"label_selector": names.LABEL_TRAINING}
        informers = []
        for ns in self.options.namespaces or (None,):
            if ns:
                list_trainings = _bind(
                    custom.list_namespaced_custom_object, api.GROUP, api.VERSION, ns, api.PLURAL
                )
                children = [_bind(core.list_namespaced_pod, ns), _bind(core.list_namespaced_service, ns)]
            else:
                list_trainings = _bind(custom.list_cluster_custom_object, api.GROUP, api.VERSION, api.PLURAL)
                children = [core.list_pod_for_all_namespaces, core.list_service_for_all_namespaces]
            where = f"@{ns}" if ns else ""
            informers.append(Informer(f"trainings{where}", list_trainings, self._on_training, stop, timeout))
            for kind, call in zip(("pods", "services"), children, strict=True):
                informers.append(Informer(kind + where, call, self._on_child, stop, timeout, **selector))
        return informers

    def _on_training(self, kind: str, obj: dict[str, Any]) -> None:
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        with self._lock:
            if kind == "DELETED":
                self._trainings.pop(key, None)
                self._last_log_read.pop(key, None)
            else:
                self._trainings[key] = obj
        if kind != "DELETED":
            self.queue.add(key)

    def _on_child(self, kind: str, obj: dict[str, Any]) -> None:
        key = kube.owner_key(obj)
        if key is not None:
            self.queue.add(key)

    def trainings_snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._trainings.values())

    def _before_write(self, verb: str, resource: str) -> None:
        """Every write goes through here: fenced when leader election is on and the Lease may be gone."""
        if self.options.leader_elect and not self.elector.leading():
            raise NotLeading(f"{verb} {resource} refused: {self.identity} no longer holds the Lease")
        self.metrics.writes.labels(verb, resource).inc()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.options.health_addr is not None:
            self._serve_health(self.options.health_addr)
        for informer in self.informers:
            informer.start()
        self._spawn("resync", self._resync_loop)
        if self.options.leader_elect:
            self._spawn("leader", lambda: self.elector.run(self.stop_event, self._start_workers, self._lost))
        else:
            self._start_workers()

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_workers(self) -> None:
        self.metrics.leader.set(1)
        for index in range(self.options.workers):
            self._spawn(f"worker-{index}", self._worker_loop)
        for key in self._keys():  # everything the informers listed while we were a standby
            self.queue.add(key)

    def _lost(self) -> None:
        """Lost the Lease: stop working at once; the process exits and the Deployment restarts it. The
        threads are stopped before ``lost_lease`` lets main return: an interpreter that exits under a
        request in flight can abort (SIGABRT seen in tests/cluster/test_lost_lease.py)."""
        self.metrics.leader.set(0)
        self.stop()
        self.lost_lease.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: finish the reconcile in flight, close the watches, hand over the Lease."""
        self.stop_event.set()
        self.queue.shutdown()
        if self._server is not None:
            self._server.shutdown()  # serve_forever returns; its thread can be joined below
            self._server.server_close()
            self._server = None
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)
        for informer in self.informers:
            informer.join(timeout)
        self.elector.release()
        self.metrics.leader.set(0)

    def ready(self) -> bool:
        return all(informer.synced.is_set() for informer in self.informers)

    def healthy(self) -> bool:
        return not self.stop_event.is_set() and all(informer.alive() for informer in self.informers)

    # -- work --------------------------------------------------------------------------------------
    def _keys(self) -> list[Key]:
        with self._lock:
            return list(self._trainings)

    def _resync_loop(self) -> None:
        """Periodic resync: re-plan every training even without events (timers, missed events)."""
        while not self.stop_event.wait(self.options.resync_seconds):
            for key in self._keys():
                self.queue.add(key)

    def _worker_loop(self) -> None:
        while not self.stop_event.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                self._process(key)
            finally:
                self.queue.done(key)

    def _process(self, key: Key) -> None:
        started = time.monotonic()
        try:
            requeue = self.reconcile(key)
        except NotLeading as error:
            log.warning("reconcile %s/%s: %s", *key, error)
            self.metrics.reconciles.labels("fenced").inc()
            # Kept, not dropped: a leader only late to renew (nobody took over) renews and carries on,
            # its timers (deadline, TTL, progress) intact; one that lost the Lease is stopping, and its
            # shut-down queue refuses the key.
            self.queue.add_after(key, self.options.retry_period)
        except NamespaceGone as error:
            log.debug("reconcile %s/%s: %s", *key, error)
            self.queue.forget(key)
        except kube.Conflict as error:
            log.info("reconcile %s/%s: %s; retrying", *key, error)
            self.metrics.reconciles.labels("conflict").inc()
            self.queue.add_after(key, 0.1)
        except Exception:
            log.exception("reconcile %s/%s failed", *key)
            self.metrics.reconciles.labels("error").inc()
            self.metrics.errors.inc()
            self.queue.retry(key)
        else:
            self.metrics.reconciles.labels("success").inc()
            self.queue.forget(key)
            if requeue is not None:
                self.queue.add_after(key, requeue)
        finally:
            self.metrics.latency.observe(time.monotonic() - started)

    def reconcile(self, key: Key) -> float | None:
        """Read, plan, write status, apply actions, emit events; returns the requeue delay."""
        namespace, name = key
        obj = self.kube.get_training(namespace, name)
        if obj is None:
            return None
        training = api.Training.from_obj(obj)
        now = datetime.now(timezone.utc)
        running = training.status.phase == api.Phase.RUNNING
        want_logs = running and self._log_due(key)
        observed = self.kube.observe(training, (lambda cm: rank0_pod(training, cm)) if want_logs else None)
        result = plan(training, observed, now, self.options.policy)
        self._write(obj, training, result)
        try:
            for batch in _batches(result.actions):
                self._apply_batch(key, training, batch)
        except kube.NameTaken as taken:
            self._stop_on_name_conflict(key, taken)
            return None
        delays = [d for d in (result.requeue_after,) if d is not None]
        # Active trainings are looked at again every log_interval: progress lines, and children
        # without an informer (the rank-table ConfigMap: no list/watch on ConfigMaps, see rbac.yaml).
        if result.status.get("phase") not in FINISHED_OR_SUSPENDED:
            delays.append(self.options.log_interval)
        return min(delays) if delays else None

    def _write(self, obj: dict[str, Any], training: api.Training, result) -> None:
        if result.status_changed:
            # status first: a crash after it leaves a status the next plan completes
            self.kube.replace_status(obj, result.status)
        for event in result.events:
            self.kube.event(training, event, self.identity)

    def _stop_on_name_conflict(self, key: Key, taken: kube.NameTaken) -> None:
        """A create met an object of the same name that is not ours: stop the training (the plan
        decides how), free what this attempt already created, and touch nothing else."""
        obj = self.kube.get_training(*key)
        if obj is None:
            return
        training = api.Training.from_obj(obj)
        observed = self.kube.observe(training)
        now = datetime.now(timezone.utc)
        result = name_conflict(training, observed, now, taken.kind, taken.name, taken.owner)
        self._write(obj, training, result)
        for batch in _batches(result.actions):
            self._apply_batch(key, training, batch)

    def _apply_batch(self, key: Key, training: api.Training, batch: list) -> None:
        """Apply actions in order; a batch of pod creates goes out concurrently (a 512-worker attempt
        is 512 round trips: one at a time they took ~10 s here, 16 at a time ~6 s, see bench/)."""

        def apply(action) -> tuple[Any, ApiException] | None:
            try:
                self.kube.apply(training, action)
            except ApiException as error:
                return action, error
            return None

        if len(batch) == 1:
            outcomes = [apply(batch[0])]
        else:
            with ThreadPoolExecutor(kube.CONNECTIONS) as pool:
                outcomes = list(pool.map(apply, batch))
        failures = [outcome for outcome in outcomes if outcome is not None]
        if failures and all(kube.namespace_terminating(error) for _, error in failures):
            raise NamespaceGone(f"namespace {key[0]} is being deleted")
        if failures:
            action, error = failures[0]  # one event for the batch, not one per refused pod
            self._report_failed_action(key, training, action, error)
            raise error

    def _report_failed_action(self, key: Key, training: api.Training, action, error: ApiException) -> None:
        """A refused create/delete (quota, admission, a missing Volcano CRD) is told on the training once
        per failure streak; the queue keeps retrying with backoff."""
        if self.queue.failures(key) > 0:
            return
        what = type(action).__name__
        manifest = getattr(action, "manifest", None)
        if manifest is not None:
            what += f" {manifest['kind']} {manifest['metadata']['name']}"
        elif hasattr(action, "name"):
            what += f" {action.kind} {action.name}"
        detail = _status_message(error)
        self.kube.event(training, Event("Warning", "ActionFailed", f"{what}: {detail}"), self.identity)

    def _log_due(self, key: Key) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last_log_read.get(key)
            if last is not None and now - last < self.options.log_interval * 0.9:
                return False
            self._last_log_read[key] = now
            return True

    # -- health and metrics --------------------------------------------------------------------------
    def _serve_health(self, addr: str) -> None:
        """/healthz and /readyz for the kubelet's probes, /metrics for Prometheus, on one port
        (controller/health.py bounds what a client can hold); `0` serves nothing."""
        self._server = health.serve(
            addr,
            {
                "/healthz": lambda: _probe(self.healthy(), b"unhealthy"),
                "/readyz": lambda: _probe(self.ready(), b"informers not synced"),
                "/metrics": lambda: (200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST),
            },
        )

    @property
    def health_port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None


def _probe(ok: bool, failure: bytes) -> health.Reply:
    return (200, b"ok", "text/plain") if ok else (503, failure, "text/plain")


def _status_message(error: ApiException) -> str:
    """The API server's own message (a Status object's `message`), else the HTTP reason."""
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"


def _bind(call, *args):
    """Pre-bind positional arguments (namespace, group...) so every list call looks alike."""

    def bound(**kwargs):
        return call(*args, **kwargs)

    return bound
