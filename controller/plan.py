"""plan(training, observed children, now) -> actions + new status. Pure: every decision lives here.

Level-triggered: the plan looks only at what exists now (the training's status is the one memory),
so running it twice, or after a controller restart, decides the same thing. The caller writes the
status first (with the training's resourceVersion as a precondition), then applies the actions:
a crash between the two leaves a status that the next plan completes, never a transition applied
twice.

Attempts: every stage runs in attempts; an attempt is one set of pods with its own rank table.
A failed, evicted or deleted pod ends the attempt: all its pods are deleted and a new attempt
starts, resuming from the stage's newest checkpoint (the job does that by itself in train_dir).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from controller import faults, names, placement, policy, progress, ranktable, resources
from controller.api import (
    FINISHED,
    AvoidedNode,
    Condition,
    DeepLabTrainingStatus,
    FailureAction,
    Gang,
    Launcher,
    Phase,
    Progress,
    StageStatus,
    Training,
)

# The job's configuration/data error (job.recipe.EXIT_BAD_INPUT; the controller image does not import
# the job, tests/unit/test_resources.py keeps the two equal): retrying cannot help.
EXIT_BAD_INPUT = faults.EXIT_BAD_INPUT
COND_RUNNING = "Running"
COND_SUSPENDED = "Suspended"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_PODS_PENDING = "PodsPending"
COND_PLACEMENT = "PlacementValid"  # NPU workers: every server on its own node, chips within one ring
REASON_NAME_CONFLICT = "NameConflict"  # a child's name is taken by an object this training does not own
REASON_POLICY = "PolicyViolation"  # the spec asks for more than the admin allows (controller/policy.py)
REASON_WAITING_DEVICES = "WaitingForDeviceAllocation"  # a worker runs without the device plugin's annotation
REASON_HUNG = "Hung"  # no progress line from rank 0 for progressTimeoutSeconds while every worker runs
SERVICE_WAIT_SECONDS = (
    2.0  # re-check for the Service's ClusterIP (the Service informer usually wakes us first)
)
# Container waiting reasons that will not clear by themselves (kubelet's names): reported at once.
WAITING_PROBLEMS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
CAUSE_MAX = 400


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodInfo:
    """What the plan needs from one child pod."""

    name: str
    uid: str
    stage: str
    attempt: str
    role: str
    rank: int | None
    phase: str
    pod_ip: str | None
    host_ip: str | None
    deleting: bool
    annotation: str | None  # the device plugin's allocation (either key MindX reads)
    exit_code: int | None
    finished_at: str
    reason: str
    message: str
    pending_reason: str = ""  # why a Pending pod does not run: Unschedulable, ImagePullBackOff, ...
    pending_message: str = ""
    node: str = ""  # spec.nodeName
    disruption: str = ""  # eviction, preemption, node loss or a foreign delete (controller/faults.py)

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> PodInfo:
        meta, status = obj["metadata"], obj.get("status") or {}
        labels = meta.get("labels") or {}
        terminated: dict[str, Any] = {}
        for container in status.get("containerStatuses") or []:
            if container.get("name") in (resources.CONTAINER, resources.LEGACY_CONTAINER):
                terminated = (container.get("state") or {}).get("terminated") or {}
        rank = labels.get(names.LABEL_RANK)
        pending = _pending_problem(status)
        deleting = bool(meta.get("deletionTimestamp"))
        exit_code = terminated.get("exitCode")
        return cls(
            name=meta["name"],
            uid=meta.get("uid", ""),
            stage=labels.get(names.LABEL_STAGE, ""),
            attempt=labels.get(names.LABEL_ATTEMPT, ""),
            role=labels.get(names.LABEL_ROLE, ""),
            rank=int(rank) if rank and rank.isdigit() else None,
            phase=status.get("phase", "Pending"),
            pod_ip=status.get("podIP"),
            host_ip=status.get("hostIP"),
            deleting=deleting,
            annotation=ranktable.allocation_annotation(meta.get("annotations") or {}),
            exit_code=exit_code,
            finished_at=terminated.get("finishedAt") or "",
            # Text a pod's status carries ends up in our status and events: bounded and cleaned here,
            # except the termination message, which is still to be parsed (progress cleans its uses).
            reason=progress.clean_text(terminated.get("reason") or status.get("reason"), progress.REASON_MAX),
            message=progress.tail(terminated.get("message") or status.get("message")),
            pending_reason=progress.clean_text(pending.get("pending_reason"), progress.REASON_MAX),
            pending_message=progress.clean_text(pending.get("pending_message"), progress.DETAIL_MAX),
            node=str((obj.get("spec") or {}).get("nodeName") or ""),
            disruption=progress.clean_text(
                faults.disruption(status, deleting, exit_code), progress.REASON_MAX
            ),
        )

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass
class Observed:
    """The training's children as read just before planning."""

    pods: list[dict[str, Any]] = field(default_factory=list)
    configmap: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    podgroup: dict[str, Any] | None = None
    logs: list[str] | None = None  # rank 0's log tail, None when not read this time
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # nodes of failed pods, by name


def _pending_problem(status: dict[str, Any]) -> dict[str, str]:
    """The scheduler's PodScheduled=False (no node fits, a missing PersistentVolumeClaim...) or a
    container stuck waiting (image pull, bad config): what keeps a Pending pod from running."""
    if status.get("phase", "Pending") != "Pending":
        return {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return {
                "pending_reason": condition.get("reason") or "Unschedulable",
                "pending_message": condition.get("message") or "",
            }
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_PROBLEMS:
            return {"pending_reason": waiting["reason"], "pending_message": waiting.get("message") or ""}
    return {}


@dataclass(frozen=True)
class Ending:
    """An attempt's end that no single failed pod explains: a pod gone without a trace, a hang."""

    why: str
    reason: str = "AttemptFailed"  # the event's reason
    disruption: str = ""  # non-empty: not the training's fault (controller/faults.py)


# -- outputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Create:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    kind: str  # "Pod"
    name: str
    uid: str  # precondition: never delete a newer object that reuses the name


@dataclass(frozen=True)
class ReplaceConfigMap:
    manifest: dict[str, Any]
    resource_version: str  # precondition: the table is written once per attempt


@dataclass(frozen=True)
class DeleteTraining:
    """ttlSecondsAfterFinished: the garbage collector removes the children."""


Action = Create | Delete | ReplaceConfigMap | DeleteTraining


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    status_changed: bool = False


# -- helpers --------------------------------------------------------------------------------------
def timestamp(now: datetime) -> str:
    """metav1.Time: RFC 3339, seconds, UTC."""
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def describe_failure(pod: PodInfo) -> str:
    who = f"pod {pod.name}" + (f" (worker {pod.rank})" if pod.rank is not None else f" ({pod.role})")
    if pod.exit_code is not None:
        detail = progress.last_line(pod.message)
        text = f"{who} exited with code {pod.exit_code} ({pod.reason or 'Error'})" + (
            f": {detail}" if detail else ""
        )
    elif pod.phase == "Failed":
        detail = progress.clean_text(pod.message, progress.MESSAGE_MAX)
        text = f"{who} failed: {pod.reason or 'unknown reason'}" + (f": {detail}" if detail else "")
    else:
        text = f"{who} was deleted"
    return progress.clean_text(text, progress.DETAIL_MAX)  # goes to status, condition and event


def rank0_pod(t: Training, configmap: dict[str, Any] | None) -> str | None:
    """The pod whose progress lines and result count: rank 0 of the current attempt."""
    st = t.status
    if st.stage_index is None or st.attempt is None or st.stage_index >= len(t.spec.stages):
        return None
    stage = t.spec.stages[st.stage_index].name
    if t.spec.launcher == Launcher.RANK_TABLE and configmap is not None:
        attempt, completed, ranks = ranktable.read_configmap(configmap.get("data"))
        if attempt == st.attempt_id and completed:
            return next((pod for pod, rank in ranks.items() if rank == 0), None)
    return names.worker_name(t.name, t.uid, stage, st.attempt, 0)


class _Planner:
    def __init__(self, t: Training, obs: Observed, now: datetime, rules: policy.Policy):
        self.t, self.obs, self.now, self.ts, self.rules = t, obs, now, timestamp(now), rules
        self._desired: tuple[tuple[Any, ...], dict[str, dict[str, Any]]] | None = None
        self.device_wait = ""  # why the rank table waits for the device plugin, if it does
        self.st: DeepLabTrainingStatus = t.status.model_copy(deep=True)
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.requeue: list[float] = []
        self.pods = [PodInfo.from_obj(p) for p in obs.pods]
        self.deleted: set[str] = set()

    # -- small utilities --------------------------------------------------------------------------
    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    @property
    def stage(self):
        return self.t.spec.stages[self.st.stage_index]

    @property
    def record(self) -> StageStatus:
        return self.st.stages[self.st.stage_index]

    def stage_text(self) -> str:
        return f"{self.st.stage_index + 1}/{len(self.t.spec.stages)} {self.stage.name}"

    def delete(self, pod: PodInfo) -> None:
        if not pod.deleting and pod.name not in self.deleted:
            self.deleted.add(pod.name)
            self.actions.append(Delete("Pod", pod.name, pod.uid))

    @property
    def dynamic(self) -> bool:
        return self.t.spec.launcher == Launcher.DYNAMIC_CLUSTER

    def pod_context(self) -> resources.PodContext | None:
        """Run-time facts the pods carry; None while a dynamicCluster Service has no ClusterIP yet."""
        sched_ip = resources.cluster_ip(self.obs.service) if self.dynamic else None
        if self.dynamic and sched_ip is None:
            return None
        avoid = tuple(
            n.name for n in self.st.avoided_nodes or [] if (parse_time(n.until) or self.now) > self.now
        )
        return resources.PodContext(sched_ip=sched_ip, avoid_nodes=avoid)

    def desired(self) -> dict[str, dict[str, Any]]:
        """The current attempt's pods, built once per reconcile (a 4,096-worker attempt is expensive);
        empty while they cannot be built yet (no scheduler address)."""
        ctx = self.pod_context()
        if ctx is None:
            return {}
        key = (self.st.stage_index, self.st.attempt, ctx)
        if self._desired is None or self._desired[0] != key:
            self._desired = (key, resources.desired_pods(self.t, self.st.stage_index, self.st.attempt, ctx))
        return self._desired[1]

    def current_pods(self) -> list[PodInfo]:
        return [
            p
            for p in self.pods
            if p.stage == self.stage.name and p.attempt == str(self.st.attempt) and p.name not in self.deleted
        ]

    def set_condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        """metav1.Condition semantics: lastTransitionTime moves only when status flips."""
        conditions = self.st.conditions or []
        value = "True" if status else "False"
        old = next((c for c in conditions if c.type == type_), None)
        when = old.last_transition_time if old is not None and old.status == value else self.ts
        new = Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=when,
            observed_generation=self.t.generation,
        )
        self.st.conditions = [c for c in conditions if c.type != type_] + [new]
        self.st.conditions.sort(key=lambda c: c.type)

    def start_attempt(self, index: int, attempt: int) -> None:
        self.st.stage_index, self.st.attempt = index, attempt
        self.st.attempt_id = names.attempt_id(self.t.uid, self.stage.name, attempt)
        self.st.stage = self.stage_text()
        record = self.record
        record.attempts += 1
        record.phase = Phase.PENDING
        record.start_time = record.start_time or self.ts
        self.st.attempt_start_time = self.ts
        self.st.phase = Phase.PENDING

    # -- the decision -----------------------------------------------------------------------------
    def run(self) -> Plan:
        if self.t.deleting:
            return self.finish()  # the garbage collector takes it from here
        new = self.st.phase is None
        if new:
            self.initialise()
        if self.st.phase in FINISHED:
            self.finished()
            return self.finish()
        if self.refused_by_policy():
            return self.finish()
        if new:
            spec = self.t.spec
            where = f"stage {self.stage_text()}, attempt 1"
            self.event("Started", f"{len(spec.stages)} stage(s) on {spec.workers} worker(s); {where}")
        if self.deadline_passed():
            return self.finish()
        if self.t.spec.suspend:
            self.suspend()
            return self.finish()
        if self.st.phase == Phase.SUSPENDED:
            self.resume()
        if self.st.attempt_start_time is None:  # a status written before the field existed
            self.st.attempt_start_time = self.ts
        self.delete_stale()
        if self.name_taken():
            return self.finish()
        self.step()
        return self.finish()

    def initialise(self) -> None:
        spec = self.t.spec
        self.st.stages = [StageStatus(name=s.name) for s in spec.stages]
        self.st.start_time = self.ts
        self.start_attempt(0, 1)

    def refused_by_policy(self) -> bool:
        """The admin's policy, checked on every reconcile of an unfinished training (an admin who
        tightens it stops trainings that no longer comply)."""
        found = policy.violations(self.t.spec, self.rules)
        if not found:
            return False
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        self.fail(REASON_POLICY, found[0] + more)
        return True

    def name_taken(self) -> bool:
        """A child's name held by an object this training did not create (another operator's rank
        table, a user's Service): never adopt, overwrite or delete it; stop and say which."""
        children = (("ConfigMap", self.obs.configmap), ("PodGroup", self.obs.podgroup))
        if self.dynamic:  # only dynamicCluster trainings have a Service
            children += (("Service", self.obs.service),)
        for kind, obj in children:
            if obj is not None and not resources.owned_by(obj, self.t.uid):
                self.conflict(kind, obj["metadata"]["name"], resources.describe_owner(obj))
                return True
        return False

    def conflict(self, kind: str, name: str, owner: str) -> None:
        self.fail(
            REASON_NAME_CONFLICT,
            f"{kind} {name} already exists and is not owned by this training ({owner}); "
            "nothing was changed: delete or rename that object, or use another training name",
        )

    def finished(self) -> None:
        """Free the NPUs of anything still running. A failed training keeps its finished pods for
        `kubectl logs`; a succeeded one keeps none (stage success cleans up). Level-triggered: a
        controller that died between the status write and the deletions completes them here."""
        for pod in self.pods:
            if self.st.phase == Phase.SUCCEEDED or not pod.finished:
                self.delete(pod)
        ttl = self.t.spec.ttl_seconds_after_finished
        done = parse_time(self.st.completion_time)
        if ttl is not None and done is not None:
            remaining = (done + timedelta(seconds=ttl) - self.now).total_seconds()
            if remaining <= 0:
                self.actions.append(DeleteTraining())
            else:
                self.requeue.append(remaining)

    def deadline_passed(self) -> bool:
        limit = self.t.spec.active_deadline_seconds
        started = parse_time(self.st.start_time)
        if limit is None or started is None or self.st.phase == Phase.SUSPENDED or self.t.spec.suspend:
            return False
        remaining = (started + timedelta(seconds=limit) - self.now).total_seconds()
        if remaining > 0:
            self.requeue.append(remaining)
            return False
        self.fail("DeadlineExceeded", f"the training was active longer than activeDeadlineSeconds ({limit}s)")
        return True

    def fail(self, reason: str, message: str) -> None:
        # messages may quote the tenant's spec or a pod: one clean, bounded line, like events
        message = progress.clean_text(message, progress.DETAIL_MAX)
        self.st.phase = Phase.FAILED
        self.st.completion_time = self.ts
        self.st.reason, self.st.message = reason, message
        self.record.phase = Phase.FAILED
        self.record.completion_time = self.ts
        self.record.message = message
        self.set_condition(COND_RUNNING, False, reason, message)
        self.set_condition(COND_FAILED, True, reason, message)
        self.event(reason, f"stage {self.stage_text()}: {message}", warning=True)
        self.finished()

    def suspend(self) -> None:
        for pod in self.pods:
            self.delete(pod)
        if self.st.phase != Phase.SUSPENDED:
            self.st.phase = Phase.SUSPENDED
            self.record.phase = Phase.SUSPENDED
            self.set_condition(COND_RUNNING, False, "Suspended", "spec.suspend is true")
            self.set_condition(COND_SUSPENDED, True, "Suspended", "spec.suspend is true")
            self.event("Suspended", f"stage {self.stage_text()}: pods deleted; progress is kept")

    def resume(self) -> None:
        """A new attempt: the old pods are gone, so is their rank table. Not a failure."""
        self.st.start_time = self.ts  # like a Job: activeDeadlineSeconds counts from the resume
        self.start_attempt(self.st.stage_index, self.st.attempt + 1)
        self.set_condition(COND_SUSPENDED, False, "Resumed", "spec.suspend is false")
        self.event("Resumed", f"stage {self.stage_text()}: attempt {self.st.attempt} resumes from checkpoint")

    def delete_stale(self) -> None:
        """Pods of other stages or attempts (and any pod without our labels) have no business running."""
        current = {p.name for p in self.current_pods()}
        for pod in self.pods:
            if pod.name not in current:
                self.delete(pod)

    def step(self) -> None:
        """One stage attempt: detect the end (failure or success), else converge its children."""
        pods = self.current_pods()
        desired = self.desired()
        launched = self.launched(pods)
        workers = [p for p in pods if p.role == names.ROLE_WORKER]
        # success first: once every worker succeeded, a scheduler pod's exit status is irrelevant
        if len(workers) == resources.worker_pods(self.t) and all(p.phase == "Succeeded" for p in workers):
            self.stage_succeeded(workers, pods)
            return
        failure = self.failure(pods, launched) or self.hang(pods) or self.misplaced(pods, launched)
        if failure is not None:
            self.attempt_failed(failure, pods)
            return
        if self.pending_timed_out(pods):
            return
        self.converge(pods, desired, launched)

    def launched(self, pods: list[PodInfo]) -> bool:
        """Has training begun? Before, a missing pod is simply created; after, it is a lost rank."""
        if self.t.spec.launcher == Launcher.RANK_TABLE:
            attempt, completed, _ = self.table()
            return attempt == self.st.attempt_id and completed
        return any(p.phase != "Pending" for p in pods)

    def table(self) -> tuple[str | None, bool, dict[str, int]]:
        cm = self.obs.configmap
        return ranktable.read_configmap(cm.get("data") if cm else None)

    def failure(self, pods: list[PodInfo], launched: bool) -> PodInfo | Ending | None:
        failed = [p for p in pods if p.phase == "Failed" or (p.deleting and not p.finished)]
        if failed:
            # the root cause: a permanent error first, then a disruption (its SIGTERM stops the other
            # ranks too), then the rank that died first
            failed.sort(
                key=lambda p: (
                    p.exit_code != EXIT_BAD_INPUT,
                    not p.disruption,
                    p.finished_at or "~",
                    p.rank or 0,
                )
            )
            return failed[0]
        if launched:
            present = {p.name for p in pods}
            index, attempt = self.st.stage_index, self.st.attempt
            missing = [name for name in resources.pod_names(self.t, index, attempt) if name not in present]
            if missing:
                why = f"pod {missing[0]} disappeared after the attempt started (deleted or evicted)"
                return Ending(why, disruption="Disappeared")
        return None

    def hang(self, pods: list[PodInfo]) -> Ending | None:
        """progressTimeoutSeconds: every worker runs, rank 0's log is readable, and it printed no new
        progress line for that long (HCCL blocked after a peer died, a hung data loader). Judged only
        from a log read now, so a controller that cannot read logs never calls a training hung."""
        limit = self.t.spec.progress_timeout_seconds
        if not limit or self.obs.logs is None or self.attempt_phase(pods) != Phase.RUNNING:
            return None
        running = next((c for c in self.st.conditions or [] if c.type == COND_RUNNING), None)
        if running is None or running.status != "True":
            return None
        marks = [parse_time(running.last_transition_time)]
        last = self.st.progress
        if last is not None:
            marks.append(parse_time(last.update_time))
        since = max(m for m in marks if m is not None)
        latest = progress.last_progress(self.obs.logs)
        if latest is not None and (
            last is None or last.model_copy(update={"update_time": None}) != Progress(**latest)
        ):
            return None  # a new line: update_progress records it
        remaining = (since + timedelta(seconds=limit) - self.now).total_seconds()
        if remaining > 0:
            self.requeue.append(remaining)
            return None
        seen = "no progress line yet"
        if last is not None:
            seen = f"last progress: step {last.step}/{last.steps}, loss {last.loss}, at {last.update_time}"
        why = (
            f"rank 0 printed no progress for {limit}s (progressTimeoutSeconds) while every worker ran; {seen}"
        )
        return Ending(why, reason=REASON_HUNG)

    def attempt_failed(self, failure: PodInfo | Ending, pods: list[PodInfo]) -> None:
        """Classify the end (controller/faults.py), count it under its cap, then start a new attempt."""
        action, rule = FailureAction.RESTART_ATTEMPT, ""
        if isinstance(failure, PodInfo):
            ending = Ending(describe_failure(failure), disruption=failure.disruption)
            if not failure.disruption:
                action, rule = faults.action_for(self.t.spec.failure_policy, failure.exit_code)
        else:
            ending = failure
        record = self.record
        record.message = ending.why
        if ending.disruption or action == FailureAction.IGNORE:
            disrupted = self.disrupted(ending)
            if disrupted is None:
                return
            ending = disrupted
        elif action == FailureAction.FAIL_TRAINING:
            record.failures += 1
            detail = "a configuration or data error" if rule == "ConfigurationError" else "failurePolicy rule"
            self.fail(rule, f"{ending.why} ({detail}: not retried)")
            return
        else:
            record.failures += 1
            limit = self.t.spec.backoff_limit
            if record.failures > limit:
                message = f"{record.failures} failed attempt(s) (backoffLimit {limit}); {ending.why}"
                self.fail("BackoffLimitExceeded", message)
                return
            if isinstance(failure, PodInfo):
                self.avoid_faulty_node(failure)
        for pod in pods:
            self.delete(pod)
        text = self.stage_text()
        self.event(ending.reason, f"stage {text}, attempt {self.st.attempt}: {ending.why}", warning=True)
        self.start_attempt(self.st.stage_index, self.st.attempt + 1)
        self.st.progress, self.st.epoch = None, None
        self.event("Restarting", f"stage {text}: attempt {self.st.attempt} resumes from the last checkpoint")
        self.converge([], self.desired(), False)

    def disrupted(self, ending: Ending) -> Ending | None:
        """Count a disruption under failurePolicy.maxDisruptions, not backoffLimit: the ending to
        report, or None when the cap is exceeded and the training failed."""
        record = self.record
        record.disruptions += 1
        cap = self.t.spec.failure_policy.max_disruptions
        if record.disruptions > cap:
            count = f"{record.disruptions} disrupted attempt(s) (failurePolicy.maxDisruptions {cap})"
            message = f"{count}; {ending.why}"
            self.fail("DisruptionLimitExceeded", message)
            return None
        kind = ending.disruption or "failurePolicy rule Ignore"
        return Ending(f"{ending.why} (disruption: {kind}; backoffLimit not used)", "Disrupted", kind)

    def avoid_faulty_node(self, pod: PodInfo) -> None:
        """An NPU/HCCL error, or a node whose device plugin reports an unhealthy NPU: the next attempts
        keep off that node for failurePolicy.avoidFaultyNodeSeconds (node affinity, see resources)."""
        seconds = self.t.spec.failure_policy.avoid_faulty_node_seconds
        if not seconds or not pod.node:
            return
        fault = faults.device_fault(pod.message)
        unhealthy = faults.unhealthy_npus(self.obs.nodes.get(pod.node))
        if not fault and not unhealthy:
            return
        cause = f"NPU/HCCL error {fault!r}" if fault else f"device plugin reports {unhealthy}"
        cause = progress.clean_text(cause, progress.REASON_MAX)
        until = timestamp(self.now + timedelta(seconds=seconds))
        kept = [
            n
            for n in self.st.avoided_nodes or []
            if n.name != pod.node and (parse_time(n.until) or self.now) > self.now
        ]
        self.st.avoided_nodes = [*kept, AvoidedNode(name=pod.node, until=until, reason=cause)]
        self.event(
            "NodeAvoided",
            f"stage {self.stage_text()}: node {pod.node} is avoided until {until} after pod {pod.name} "
            f"failed there ({cause})",
            warning=True,
        )

    def stage_succeeded(self, workers: list[PodInfo], pods: list[PodInfo]) -> None:
        _, _, ranks = self.table()
        by_index = min(workers, key=lambda p: p.rank or 0)
        rank0 = next((p for p in workers if ranks.get(p.name) == 0), by_index)
        outcome = progress.result(rank0.message) or {}
        record = self.record
        record.phase = Phase.SUCCEEDED
        record.completion_time = self.ts
        record.checkpoint = outcome.get("checkpoint")
        record.loss = outcome.get("loss")
        record.miou = outcome.get("miou")
        record.message = None
        if record.miou is not None:
            self.st.miou = record.miou
        for pod in pods:
            self.delete(pod)
        detail = f"checkpoint {record.checkpoint}"
        if record.miou is not None:
            detail += f", mIoU {record.miou:.4f}"
        text = self.stage_text()
        self.event("StageSucceeded", f"stage {text} succeeded in attempt {self.st.attempt}: {detail}")
        if self.st.stage_index + 1 == len(self.t.spec.stages):
            self.st.phase = Phase.SUCCEEDED
            self.st.completion_time = self.ts
            self.st.reason, self.st.message = "Succeeded", f"all {len(self.t.spec.stages)} stage(s) succeeded"
            self.set_condition(COND_RUNNING, False, "Succeeded", self.st.message)
            self.set_condition(COND_SUCCEEDED, True, "Succeeded", self.st.message)
            self.event("Succeeded", self.st.message)
            self.finished()
            return
        self.start_attempt(self.st.stage_index + 1, 1)
        self.st.progress, self.st.epoch = None, None
        self.event("StageStarted", f"stage {self.stage_text()} starts from {record.name}'s final checkpoint")
        self.converge([], self.desired(), False)

    # -- converging one attempt -------------------------------------------------------------------
    def converge(self, pods: list[PodInfo], desired: dict[str, dict], launched: bool) -> None:
        t = self.t
        if self.dynamic:
            self.converge_service()
        if t.spec.gang == Gang.VOLCANO and self.obs.podgroup is None:
            self.actions.append(Create(resources.podgroup(t)))
        if t.spec.launcher == Launcher.RANK_TABLE:
            self.converge_table(pods)
        if not launched:
            present = {p.name for p in pods}
            missing = [m for name, m in desired.items() if name not in present]
            if missing and self.dynamic and self.earlier_scheduler_running():
                self.requeue.append(SERVICE_WAIT_SECONDS)
            else:
                self.actions += [Create(m) for m in missing]
        self.update_phase(pods)
        self.update_progress()

    def earlier_scheduler_running(self) -> bool:
        """dynamicCluster: a scheduler pod of an earlier attempt still runs. It ignores SIGTERM until its
        workers have left (up to the grace period), and the training's Service selects every scheduler
        pod of the training, so a new worker could register with it and fail ("Repeated registration
        node ... another scheduler process with port ... still running", seen on a real node): the
        next attempt's pods are created once it is gone."""
        current = {p.name for p in self.current_pods()}
        return any(
            p.role == names.ROLE_SCHEDULER and p.name not in current and not p.finished for p in self.pods
        )

    def converge_service(self) -> None:
        """The scheduler's ClusterIP Service exists before any pod: its IP is the workers' MS_SCHED_HOST.
        A headless Service of an earlier version has no IP to give: it is replaced."""
        svc = self.obs.service
        if svc is None:
            self.actions.append(Create(resources.service(self.t)))
            self.requeue.append(SERVICE_WAIT_SECONDS)
        elif resources.cluster_ip(svc) is None:
            meta = svc["metadata"]
            self.actions.append(Delete("Service", meta["name"], meta.get("uid", "")))
            self.requeue.append(SERVICE_WAIT_SECONDS)

    def converge_table(self, pods: list[PodInfo]) -> None:
        """`initializing` for a new attempt, then the complete table exactly once."""
        attempt, completed, _ = self.table()
        cm = self.obs.configmap
        if attempt != self.st.attempt_id:
            stamp = int(self.now.timestamp())
            data = ranktable.configmap_data(self.st.attempt_id, ranktable.INITIALIZING, {}, stamp)
            self.write_table(data, cm)
            return
        if completed:
            return
        workers = [
            ranktable.Worker(p.name, p.rank or 0, p.pod_ip, p.host_ip, p.annotation)
            for p in pods
            if p.role == names.ROLE_WORKER and not p.deleting
        ]
        if not ranktable.ready(workers, resources.worker_pods(self.t)):
            return
        layout = self.layout()
        found = ranktable.allocations(workers, layout)
        if isinstance(found, str):
            self.device_wait = found  # reported through PodsPending (update_pending)
            return
        table, ranks = ranktable.build(workers, layout)
        if resources.placed_by_server(self.t):
            self.set_condition(COND_PLACEMENT, True, "Placed", "every server on its own node, as one group")
        stamp = int(self.now.timestamp())
        self.write_table(ranktable.configmap_data(self.st.attempt_id, table, ranks, stamp), cm)
        self.event(
            "RankTableReady",
            f"stage {self.stage_text()}, attempt {self.st.attempt}: "
            f"{self.t.spec.workers} rank(s) in {table['server_count']} pod(s)",
        )

    def layout(self) -> ranktable.Layout:
        return ranktable.Layout(
            npus_per_pod=self.t.spec.npus_per_pod,
            devices_required=bool(self.t.spec.npu_resource),
            version=self.t.spec.rank_table_version.value,
        )

    def misplaced(self, pods: list[PodInfo], launched: bool) -> Ending | None:
        """Before the table is written: do the workers sit as Atlas servers need (controller/placement.py)?
        A scheduler that ignored the affinity, or chips across two HCCS rings, would give HCCL a table it
        refuses on every rank: restart the attempt instead, saying which rule broke and where pods are."""
        if launched or self.t.spec.launcher != Launcher.RANK_TABLE or not resources.placed_by_server(self.t):
            return None
        current = [p for p in pods if p.role == names.ROLE_WORKER and not p.deleting]
        workers = [ranktable.Worker(p.name, p.rank or 0, p.pod_ip, p.host_ip, p.annotation) for p in current]
        if not ranktable.ready(workers, resources.worker_pods(self.t)):
            return None
        found = ranktable.allocations(workers, self.layout())
        if isinstance(found, str):
            return None  # still waiting for the device plugin
        landed = [
            placement.Landed(p.name, p.rank or 0, p.node or p.host_ip or "", found[p.name].device_ids())
            for p in current
        ]
        spec = self.t.spec
        why = placement.problems(landed, spec.npus_per_pod, spec.npus_per_server, bool(spec.npu_resource))
        if not why:
            return None
        self.set_condition(COND_PLACEMENT, False, "PlacementRejected", why)
        return Ending(f"invalid placement: {why}", reason="PlacementRejected")

    def write_table(self, data: dict[str, str], cm: dict[str, Any] | None) -> None:
        manifest = resources.configmap(self.t, data)
        if cm is None:
            self.actions.append(Create(manifest))
        else:
            self.actions.append(ReplaceConfigMap(manifest, cm["metadata"].get("resourceVersion", "")))

    def attempt_phase(self, pods: list[PodInfo]) -> Phase:
        workers = [p for p in pods if p.role == names.ROLE_WORKER]
        complete = len(workers) == resources.worker_pods(self.t)
        if complete and all(p.phase in ("Running", "Succeeded") for p in workers) and self.launched(pods):
            return Phase.RUNNING
        if complete and all(p.pod_ip for p in workers):
            return Phase.INITIALIZING
        return Phase.PENDING

    # -- pods that do not start ----------------------------------------------------------------------
    def pending_cause(self, pods: list[PodInfo]) -> tuple[str, str]:
        """(reason, text) of the first pod (by rank) that cannot run, else ("Waiting", "")."""
        stuck = sorted(
            (p for p in pods if p.pending_reason and not p.deleting),
            key=lambda p: (p.rank is None, p.rank or 0, p.name),
        )
        if not stuck and self.device_wait:
            return REASON_WAITING_DEVICES, progress.clean_text(self.device_wait, CAUSE_MAX)
        if not stuck:
            return "Waiting", ""
        pod = stuck[0]
        who = f"pod {pod.name}" + (f" (worker {pod.rank})" if pod.rank is not None else f" ({pod.role})")
        text = f"{who}: {pod.pending_reason}" + (f": {pod.pending_message}" if pod.pending_message else "")
        reason = progress.clean_text(pod.pending_reason, progress.REASON_MAX)  # also a condition's reason
        return reason, progress.clean_text(text, CAUSE_MAX)

    def pending_timed_out(self, pods: list[PodInfo]) -> bool:
        """pendingTimeoutSeconds: an attempt whose pods do not all run in time fails the training (the
        placed pods of a half-scheduled attempt would otherwise hold NPUs idle indefinitely)."""
        limit = self.t.spec.pending_timeout_seconds
        started = parse_time(self.st.attempt_start_time)
        if not limit or started is None or self.attempt_phase(pods) == Phase.RUNNING:
            return False
        remaining = (started + timedelta(seconds=limit) - self.now).total_seconds()
        if remaining > 0:
            self.requeue.append(remaining)
            return False
        _, cause = self.pending_cause(pods)
        waiting = sum(1 for p in pods if p.phase == "Pending") + max(
            0, resources.pod_count(self.t) - len(pods)
        )
        self.fail(
            "PendingTimeout",
            f"attempt {self.st.attempt}: {waiting} pod(s) not running after pendingTimeoutSeconds ({limit}s)"
            + (f"; {cause}" if cause else ""),
        )
        return True

    def update_pending(self, pods: list[PodInfo], phase: Phase) -> None:
        """The PodsPending condition: True while the attempt waits for pods, with the cause when one is
        known; a Warning event each time a new cause appears (not on every resync)."""
        text = f"stage {self.stage_text()}, attempt {self.st.attempt}"
        if phase == Phase.RUNNING:
            self.set_condition(COND_PODS_PENDING, False, "PodsRunning", f"{text}: all pods running")
            return
        expected = resources.pod_count(self.t)
        running = sum(1 for p in pods if p.phase in ("Running", "Succeeded"))
        reason, cause = self.pending_cause(pods)
        message = f"{cause}; " if cause else ""
        message += f"{text}: {expected - running} of {expected} pod(s) not running"
        old = next((c for c in self.st.conditions or [] if c.type == COND_PODS_PENDING), None)
        reported = old is not None and old.status == "True" and old.reason == reason
        # a new cause gets an event; waiting for the device plugin is one cause, whichever pod it names
        same = reason == REASON_WAITING_DEVICES or (reported and old.message.startswith(cause))
        if cause and not (reported and same):
            self.event(reason, message, warning=True)
        self.set_condition(COND_PODS_PENDING, True, reason, message)

    def update_phase(self, pods: list[PodInfo]) -> None:
        phase = self.attempt_phase(pods)
        self.update_pending(pods, phase)
        if phase == Phase.RUNNING and self.st.phase != Phase.RUNNING:
            text = self.stage_text()
            self.event("Running", f"stage {text}, attempt {self.st.attempt}: all workers running")
        self.st.phase = phase
        self.record.phase = Phase.RUNNING if phase == Phase.RUNNING else Phase.PENDING
        text = f"stage {self.stage_text()}, attempt {self.st.attempt}"
        self.set_condition(COND_RUNNING, phase == Phase.RUNNING, phase.value, text)
        self.st.reason, self.st.message = None, None

    def update_progress(self) -> None:
        if self.obs.logs is None:
            return
        latest = progress.last_progress(self.obs.logs)
        if latest is None:
            return
        new = Progress(**latest)
        old = self.st.progress
        if old is not None and old.model_copy(update={"update_time": None}) == new:
            return  # unchanged: no status write
        new.update_time = self.ts
        self.st.progress = new
        if new.epoch is not None and new.epochs is not None:
            self.st.epoch = f"{new.epoch}/{new.epochs}"

    def finish(self) -> Plan:
        self.st.observed_generation = self.t.generation
        old = self.t.status.wire()
        new = self.st.wire()
        return Plan(
            status=new,
            actions=self.actions,
            events=self.events,
            requeue_after=min(self.requeue) if self.requeue else None,
            status_changed=new != old,
        )


def plan(t: Training, obs: Observed, now: datetime, rules: policy.Policy | None = None) -> Plan:
    """Decide: what to create/delete/write for the training, and its status afterwards."""
    return _Planner(t, obs, now, rules or policy.Policy()).run()


def name_conflict(t: Training, obs: Observed, now: datetime, kind: str, name: str, owner: str) -> Plan:
    """A create refused because the name is taken by an object that is not this training's (it
    appeared between the read and the write): the training stops as if the read had seen it."""
    planner = _Planner(t, obs, now, policy.Policy())
    if planner.st.phase is None:
        planner.initialise()
    if planner.st.phase not in FINISHED:
        planner.conflict(kind, name, owner)
    return planner.finish()


def dumps(p: Plan) -> str:
    """A readable rendering for logs and test failures."""
    return json.dumps({"status": p.status, "actions": [repr(a) for a in p.actions]}, indent=1, default=str)
