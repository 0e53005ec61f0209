"""Soak: 20 concurrent trainings, randomly injected pod faults, two leader kills (SIGKILL, a standby
takes over, a new replica joins), a fast-paced fake kubelet; bounded in time.

Afterwards every training is Succeeded or Failed with a reason, every attempt's rank table listed
exactly that attempt's pods, only the leader ever wrote, and no orphaned object remains.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from contextlib import ExitStack

import pytest
from kubelet import (
    MERGE,
    ControllerProcess,
    apply,
    lease_holder,
    result_message,
    terminated_status,
    training_manifest,
    wait_for,
)
from kubernetes import client

from controller import names
from controller.ranktable import DEVICE_ANNOTATION
from envtest import audit

pytestmark = pytest.mark.cluster
LEASE = "soak-test"  # the replicas' own Lease

TRAININGS = 20
DEADLINE = 180.0  # seconds for all of them to finish; typically a third of that
SEED = 20260701


def _env(pod: dict, name: str) -> str | None:
    for item in pod["spec"]["containers"][0].get("env", []):
        if item["name"] == name:
            return item.get("value")
    return None


class FakeCluster:
    """Plays scheduler + kubelet + device plugin + launcher for every pod of the namespace."""

    def __init__(self, admin, namespace: str, rng: random.Random):
        self.core = client.CoreV1Api(admin)
        self.ns, self.rng = namespace, rng
        self.faults: Counter[str] = Counter()
        self.faults_per_training: Counter[str] = Counter()
        self.attempt_pods: dict[str, set[str]] = {}  # attempt id -> worker pods ever seen
        self.tables: dict[str, set[str]] = {}  # attempt id -> pods listed in its completed table
        self.started: dict[str, float] = {}  # attempt id -> when all its pods ran with a valid table
        self.done: set[str] = set()
        self.violations: list[str] = []

    def _pods(self) -> list[dict]:
        return json.loads(self.core.list_namespaced_pod(self.ns, _preload_content=False).data)["items"]

    def _tables(self) -> dict[str, dict]:
        items = json.loads(self.core.list_namespaced_config_map(self.ns, _preload_content=False).data)[
            "items"
        ]
        return {cm["metadata"]["name"]: cm for cm in items}

    def _status(self, pod: str, status: dict) -> None:
        try:
            self.core.patch_namespaced_pod_status(pod, self.ns, {"status": status}, _content_type=MERGE)
        except client.ApiException as error:
            if error.status != 404:  # the controller deleted it meanwhile: fine
                raise

    def _place(self, pod: dict, slot: int) -> None:
        name = pod["metadata"]["name"]
        training = int(pod["metadata"]["labels"][names.LABEL_TRAINING].rsplit("-", 1)[1])
        rank = int(pod["metadata"]["labels"].get(names.LABEL_RANK, "0"))
        host = f"172.20.{training}.{1 + rank // 2}"
        if pod["metadata"]["labels"][names.LABEL_ROLE] == names.ROLE_WORKER:
            note = {
                "pod_name": name,
                "server_id": host,
                "devices": [{"device_id": str(rank % 2), "device_ip": f"192.168.{training}.{rank}"}],
            }
            try:
                self.core.patch_namespaced_pod(
                    name,
                    self.ns,
                    {"metadata": {"annotations": {DEVICE_ANNOTATION: json.dumps(note)}}},
                    _content_type=MERGE,
                )
            except client.ApiException as error:
                if error.status != 404:
                    raise
                return
        self._status(name, {"hostIP": host, "podIP": f"10.200.{training}.{slot}", "phase": "Running"})

    def _terminate(self, pod: str, code: int, message: str = "", reason: str | None = None) -> None:
        self._status(pod, terminated_status(code, message, reason))

    def _fault(self, training: str, pod: str, kind: str) -> None:
        self.faults[kind] += 1
        self.faults_per_training[training] += 1
        if kind == "exit1":
            self._terminate(pod, 1, "Traceback\nRuntimeError: HCCL timeout")
        elif kind == "oom":
            self._terminate(pod, 137, "", reason="OOMKilled")
        elif kind == "config":
            self._terminate(pod, 2, "error: --data_file: no such file")
        elif kind == "evict":
            self._status(pod, {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"})
        else:
            try:
                self.core.delete_namespaced_pod(pod, self.ns, _preload_content=False)
            except client.ApiException as error:
                if error.status != 404:
                    raise

    def tick(self) -> None:
        pods = [p for p in self._pods() if not p["metadata"].get("deletionTimestamp")]
        tables = self._tables()
        groups: dict[str, list[dict]] = {}
        active_attempts: dict[str, set[str]] = {}
        for pod in pods:
            attempt = _env(pod, "DEEPLAB_ATTEMPT") or ""
            training = pod["metadata"]["labels"][names.LABEL_TRAINING]
            if pod["status"].get("phase") in ("Pending", "Running"):
                active_attempts.setdefault(training, set()).add(attempt)
            groups.setdefault(attempt, []).append(pod)
            if pod["metadata"]["labels"][names.LABEL_ROLE] == names.ROLE_WORKER:
                self.attempt_pods.setdefault(attempt, set()).add(pod["metadata"]["name"])
        for training, attempts in active_attempts.items():
            if len(attempts) > 1:
                self.violations.append(f"{training}: pods of attempts {sorted(attempts)} active at once")

        for attempt, members in groups.items():
            if attempt in self.done:
                continue
            training = members[0]["metadata"]["labels"][names.LABEL_TRAINING]
            for slot, pod in enumerate(members):
                if not pod["status"].get("podIP"):
                    if self.rng.random() < 0.04 and self.faults_per_training[training] < 3:
                        self._fault(training, pod["metadata"]["name"], "evict")  # lost before the table
                        self.done.add(attempt)
                        break
                    self._place(pod, 10 + slot)
            if attempt in self.done or any(not p["status"].get("podIP") for p in members):
                continue
            workers = [p for p in members if p["metadata"]["labels"][names.LABEL_ROLE] == names.ROLE_WORKER]
            expected = int(_env(members[0], "SOAK_EXPECTED_WORKERS") or len(workers))
            if len(workers) < expected:
                continue
            if _env(members[0], "DEEPLAB_LAUNCHER") == "rankTable":
                cm = tables.get(names.configmap_name(members[0]["metadata"]["labels"][names.LABEL_TRAINING]))
                if cm is None:
                    continue
                ranks = json.loads(cm["data"].get("ranks.json", "{}"))
                table = json.loads(cm["data"].get("hccl.json", "{}"))
                if ranks.get("attempt") != attempt or table.get("status") != "completed":
                    continue  # the launcher keeps waiting for its own attempt's complete table
                listed = set(ranks["ranks"])
                self.tables.setdefault(attempt, listed)
                if listed != {p["metadata"]["name"] for p in workers}:
                    self.violations.append(
                        f"{attempt}: table {sorted(listed)} != pods {sorted(self.attempt_pods[attempt])}"
                    )
            now = time.monotonic()
            started = self.started.setdefault(attempt, now)
            if now - started < 0.3:
                continue  # "training"
            self.done.add(attempt)
            victim = self.rng.choice(workers)["metadata"]["name"]
            if self.faults_per_training[training] < 3 and self.rng.random() < 0.45:
                kind = self.rng.choice(
                    [
                        "exit1",
                        "oom",
                        "evict",
                        "delete",
                        "exit1",
                        "config" if self.rng.random() < 0.15 else "delete",
                    ]
                )
                if len(workers) > 1 and self.rng.random() < 0.5:  # during the final result write
                    rank0 = next(p for p in workers if p["metadata"]["name"] != victim)["metadata"]["name"]
                    self._terminate(rank0, 0, result_message(f"/checkpoints/{training}/s/final.ckpt"))
                self._fault(training, victim, kind)
                continue
            for pod in workers:
                rank = pod["metadata"]["labels"][names.LABEL_RANK]
                self._terminate(
                    pod["metadata"]["name"],
                    0,
                    result_message(f"/checkpoints/{training}/s/final.ckpt", 0.5) if rank == "0" else "",
                )


def test_soak_twenty_trainings_with_faults_and_leader_kills(
    control_plane, operator_installed, admin, kubelet, kubectl, tmp_path, request
):
    rng = random.Random(SEED)
    ns = kubelet.ns
    started = time.monotonic()
    restarts, takeovers = 0, []
    with ExitStack() as stack:
        replicas: dict[str, ControllerProcess] = {}

        def spawn(identity: str) -> None:
            replicas[identity] = ControllerProcess(identity, control_plane.kubeconfig, tmp_path, lease=LEASE)
            stack.callback(replicas[identity].stop)

        spawn("soak-a")
        spawn("soak-b")
        # process start to a held Lease: up to 39 s at load average 15 (see test_controller_restart.py)
        wait_for("a leader", lambda: lease_holder(admin, name=LEASE) in replicas, timeout=90)

        specs = {}
        for index in range(TRAININGS):
            name = f"soak-{index:02d}"
            workers = rng.choice([1, 2])
            dynamic = index % 5 == 4
            spec = {
                "workers": workers,
                "backoffLimit": 2,
                "stages": [{"name": "s", "dataFile": "d.mindrecord0", "epochs": 1, "saveSteps": 10}],
                "template": {"env": [{"name": "SOAK_EXPECTED_WORKERS", "value": str(workers)}]},
            }
            if dynamic:
                spec.update(launcher="dynamicCluster", npuResource="")
            specs[name] = spec
            apply(kubectl, training_manifest(name, ns, **spec))

        cluster = FakeCluster(admin, ns, rng)

        def finished() -> dict[str, dict]:
            items = json.loads(kubectl("get", "dlt", "-n", ns, "-o", "json").stdout)["items"]
            return {
                t["metadata"]["name"]: t
                for t in items
                if (t.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            }

        done: dict[str, dict] = {}
        last_poll = 0.0
        while len(done) < TRAININGS:
            assert time.monotonic() - started < DEADLINE, f"only {len(done)}/{TRAININGS} finished in time"
            cluster.tick()
            if time.monotonic() - last_poll > 1.0:
                done, last_poll = finished(), time.monotonic()
                # kill the leader twice: once a quarter of the trainings finished, again at 60 %
                if restarts < 2 and len(done) >= (TRAININGS // 4 if restarts == 0 else TRAININGS * 3 // 5):
                    leader = lease_holder(admin, name=LEASE)
                    replicas[leader].kill()
                    killed = time.monotonic()
                    restarts += 1
                    spawn(f"soak-{chr(ord('c') + restarts - 1)}")  # the Deployment's replacement
                    while lease_holder(admin, name=LEASE) in ("", leader):
                        cluster.tick()  # the world keeps changing during the failover
                        assert time.monotonic() - killed < 15, "no takeover"
                    takeovers.append(time.monotonic() - killed)
                    replacement = replicas[f"soak-{chr(ord('c') + restarts - 1)}"]
                    while replacement.get("/readyz") != "ok":  # a warm standby before the next kill
                        cluster.tick()
                        assert time.monotonic() - killed < 90, "the replacement never became ready"
            time.sleep(0.1)
        wall = time.monotonic() - started

        # -- every training ended, with a reason --------------------------------------------------
        outcomes = Counter()
        for name, obj in done.items():
            status = obj["status"]
            assert status["phase"] in ("Succeeded", "Failed") and status.get("reason"), (name, status)
            outcomes[f"{status['phase']}:{status['reason']}"] += 1
            stage = status["stages"][0]
            assert stage["attempts"] >= stage["failures"] >= 0
            if status["phase"] == "Succeeded":
                assert stage["checkpoint"] == f"/checkpoints/{name}/s/final.ckpt"
        assert set(outcomes) <= {
            "Succeeded:Succeeded",
            "Failed:BackoffLimitExceeded",
            "Failed:ConfigurationError",
        }
        assert outcomes["Succeeded:Succeeded"] >= TRAININGS // 2

        # -- rank tables matched their attempt exactly; one attempt active at a time --------------------
        assert not cluster.violations, cluster.violations[:5]
        for attempt, listed in cluster.tables.items():
            assert listed == cluster.attempt_pods[attempt], attempt
        assert len(cluster.tables) >= 16, "most trainings use rank tables"

        # -- only the leader writes (the API server's audit log: no write by a replica before it held the
        # Lease); takeovers within the lease duration (5 s) plus renew deadline (4 s) and a retry -------
        found = audit.events(control_plane.audit_log)
        for identity in replicas:
            agent = f"deeplab-operator/{identity}"
            led = [when for when, holder in audit.lease_writes(found, agent) if holder == identity]
            early = [e for e in audit.other_writes(found, agent) if not led or audit.stamp(e) < led[0]]
            assert early == [], (identity, audit.describe(early)[:5])
        assert restarts == 2
        assert all(t < 5 + 4 + 1 for t in takeovers), takeovers

        # -- no orphans: nothing runs, every child belongs to a live training --------------------------
        uids = {t["metadata"]["uid"] for t in done.values()}
        leftovers = []
        for kind in ("pods", "services", "configmaps"):
            items = json.loads(kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]
            for item in items:
                if item["metadata"]["name"] == "kube-root-ca.crt":
                    continue
                owners = [
                    r["uid"] for r in item["metadata"].get("ownerReferences", []) if r.get("controller")
                ]
                if owners != [o for o in owners if o in uids] or not owners:
                    leftovers.append(f"{kind}/{item['metadata']['name']}")
                if kind == "pods" and item["status"].get("phase") in ("Pending", "Running"):
                    leftovers.append(f"running pod {item['metadata']['name']}")
        assert not leftovers, leftovers
        for name, obj in done.items():
            if obj["status"]["phase"] == "Succeeded":
                wait_for(f"{name}: pods removed", lambda n=name: not kubelet.pods(n), timeout=10)
        assert kubectl("delete", "dlt", "--all", "-n", ns, "--wait=false").returncode == 0

        def remaining():
            return [
                kind
                for kind in ("pods", "services", "configmaps")
                if kubectl("get", kind, "-n", ns, "-l", names.LABEL_TRAINING, "-o", "name").stdout.strip()
            ]

        wait_for("the garbage collector removes every child", lambda: not remaining(), timeout=60)

    figures = (
        f"soak: {TRAININGS} trainings ({dict(outcomes)}), {sum(cluster.faults.values())} faults injected "
        f"({dict(cluster.faults)}), {len(cluster.tables)} rank tables checked, {restarts} leader kills "
        f"(takeover {', '.join(f'{t:.1f}s' for t in takeovers)}), wall time {wall:.1f}s"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + figures)
    assert sum(cluster.faults.values()) >= 10, figures
