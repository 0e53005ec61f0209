"""The operator against a real control plane: pod creation time, rank-table latency, API requests, memory.

    python -m bench.operator_speed [--sizes 8 64 512] [--trainings 1000] [--quick]
    python -m bench.operator_speed --ranktable-only
    python -m bench.operator_speed --sizes 4096 --template-kib 0 100 --trainings 0 --timeout 1800

The controller runs as its own process (``python -m controller``, under its ServiceAccount's RBAC by
impersonation), exactly as deployed, so its RSS is its own. API requests are counted by the
kube-apiserver itself: the plane is started with an audit log (Metadata level), and every request
whose impersonated user is the controller's ServiceAccount is attributed to it by verb and resource.
This benchmark plays kubelet and the Ascend device plugin (annotation, then host IP + pod IP +
Running per pod), like tests/cluster/kubelet.py.

With ``--template-kib``, each size runs once per template size (env values and annotations filling the
CRD's own limits), each with a fresh controller whose RSS is sampled every 0.2 s from its start to the
complete rank table: the memory a large template costs the controller, next to a template-less peer.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import manifests
from bench.common import REPO, emit, log, median, peak_rss_mib, rss_mib, timed

SA_USER = "system:serviceaccount:deeplab-system:deeplab-operator"
MERGE = "application/merge-patch+json"
READ_VERBS = {"get", "list"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
ETCD_QUOTA_BYTES = 8 * 2**30  # etcd's default 2 GiB fills with a few revisions of 4,096 pods of 100 KiB
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


# -- rank table, pure ------------------------------------------------------------------------------------
def ranktable_figures(servers: int = 512, per_server: int = 8, repeats: int = 7) -> dict[str, Any]:
    """controller.ranktable.build + configmap_data for servers x per_server ranks: time and bytes."""
    from controller import ranktable

    workers = []
    for index in range(servers * per_server):
        host, local = index // per_server, index % per_server
        host_ip = f"172.16.{host // 250}.{host % 250 + 1}"
        device = {"device_id": str(local), "device_ip": f"192.168.{local}.{host % 250 + 1}"}
        annotation = json.dumps({"pod_name": f"w{index}", "server_id": host_ip, "devices": [device]})
        workers.append(
            ranktable.Worker(f"big-s16-a1-w{index}", index, f"10.{host}.0.{local}", host_ip, annotation)
        )
    times, data = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        table, ranks = ranktable.build(workers)
        data = ranktable.configmap_data("attempt", table, ranks)
        times.append(time.perf_counter() - start)
    sizes = {key: len(value.encode()) for key, value in data.items()}
    return {
        "ranks": len(workers),
        "servers": servers,
        "build_s": median(times),
        "bytes": sum(sizes.values()),
        "bytes_by_key": sizes,
        "configmap_limit_bytes": 1024 * 1024,
    }


# -- a large pod template, within the CRD's limits ------------------------------------------------------
def template_limits() -> dict[str, int]:
    """The bounds the API server enforces on ``spec.template``'s env and annotations, read from the CRD
    the benchmark applies (manifests/crd.yaml, generated from controller/api.py), at run time."""
    import yaml

    crd = yaml.safe_load((REPO / "manifests" / "crd.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    fields = spec["properties"]["template"]["properties"]
    env, annotations = fields["env"], fields["annotations"]
    return {
        "env_items": env["maxItems"],
        "env_value_chars": env["items"]["properties"]["value"]["maxLength"],
        "annotation_items": annotations["maxProperties"],
        "annotation_value_chars": annotations["additionalProperties"]["maxLength"],
    }


def padding_template(kib: int) -> dict[str, Any]:
    """``spec.template`` with ``kib`` KiB of values, alternating annotations and env variables, each value
    as long as the CRD allows; the most the CRD allows if that is less (logged). Checked against the
    controller's own model, so the API server accepts it."""
    from controller import api

    limits = template_limits()
    env: list[dict[str, str]] = []
    annotations: dict[str, str] = {}
    left = kib * 1024
    while left > 0:
        env_room = len(env) < limits["env_items"]
        annotation_room = len(annotations) < limits["annotation_items"]
        if annotation_room and (len(annotations) <= len(env) or not env_room):
            value = "a" * min(limits["annotation_value_chars"], left)
            annotations[f"bench.example.com/pad-{len(annotations):02d}"] = value
        elif env_room:
            value = "e" * min(limits["env_value_chars"], left)
            env.append({"name": f"BENCH_PAD_{len(env):02d}", "value": value})
        else:
            log(f"template: {kib} KiB exceeds the CRD's limits {limits}; using the most it allows")
            break
        left -= len(value)
    template = {key: value for key, value in (("env", env), ("annotations", annotations)) if value}
    api.PodTemplatePatch.model_validate(template)
    return template


def template_figures(template: dict[str, Any] | None) -> dict[str, Any]:
    template = template or {}
    return {
        "template_bytes": len(json.dumps(template)) if template else 0,
        "env_entries": len(template.get("env", [])),
        "annotation_entries": len(template.get("annotations", {})),
        "limits": template_limits(),
    }


def build_figures(workers: int, kib: int) -> dict[str, Any]:
    """tracemalloc peak of one attempt's desired pods (no cluster): built once and stamped per rank
    (``resources.desired_pods``), built for every rank (the loop before issue #15), and built for every
    rank with ``copy.deepcopy`` of the template's env per pod (what that loop's ``_env`` did)."""
    import tracemalloc

    from controller import api, names, resources

    body = training_manifest("big", "bench", workers, template=padding_template(kib) if kib else None)
    body["metadata"]["uid"] = "00000000-0000-4000-8000-000000000000"
    t = api.Training.from_obj(body)
    stage = t.spec.stages[0].name
    extra = [var.wire() for var in (t.spec.template.env or [])] if t.spec.template else []

    def per_rank(deep: bool) -> dict[str, Any]:
        pods = {}
        for rank in range(workers):
            name = names.worker_name(t.name, t.uid, stage, 1, rank)
            pod = resources._pod(t, 0, 1, name, names.ROLE_WORKER, rank, resources.PodContext())
            if deep and extra:
                container = pod["spec"]["containers"][0]
                container["env"] = container["env"][: -len(extra)] + copy.deepcopy(extra)
            pods[name] = pod
        return pods

    variants = {
        "stamped": lambda: resources.desired_pods(t, 0, 1),
        "per_rank": lambda: per_rank(False),
        "per_rank_deepcopy_env": lambda: per_rank(True),
    }
    out: dict[str, Any] = {"workers": workers, "template_kib": kib}
    for key, build in variants.items():
        seconds = timed(build)  # untraced: tracemalloc slows allocation down several times
        tracemalloc.start()
        pods = build()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(pods) == workers
        del pods
        out[key] = {"peak_mib": peak / 2**20, "seconds": seconds}
    # Strings are immutable: deepcopy and model_dump share them, so no variant copies the template's bytes.
    out["json_mib"] = len(json.dumps(resources.desired_pods(t, 0, 1))) / 2**20
    return out


# -- control plane with an audit log ------------------------------------------------------------------------
def start_plane(workdir: Path):
    """envtest.ControlPlane whose kube-apiserver also writes an audit log (bench-only subclass)."""
    from envtest.binaries import ensure_binaries
    from envtest.plane import ControlPlane

    audit_log = workdir / "audit.log"

    class AuditedPlane(ControlPlane):
        def _spawn(self, name: str, args: list[str]) -> None:
            if name == "etcd":
                args = [*args, f"--quota-backend-bytes={ETCD_QUOTA_BYTES}"]
            if name == "kube-apiserver":
                policy = self.workdir / "audit-policy.yaml"
                policy.write_text(AUDIT_POLICY)
                args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}"]
            super()._spawn(name, args)

    plane = AuditedPlane(workdir / "plane", ensure_binaries())
    plane.start()
    return plane, audit_log


def kubectl(plane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


class AuditLog:
    """The controller's requests, read from the API server's audit log (complete requests only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def requests(self, namespace: str | None, since: float, until: float) -> Counter:
        counts: Counter = Counter()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete" or event.get("verb") == "watch":
                    continue
                if (event.get("impersonatedUser") or {}).get("username") != SA_USER:
                    continue
                ref = event.get("objectRef") or {}
                if namespace is not None and ref.get("namespace") != namespace:
                    continue
                received = _epoch(event["requestReceivedTimestamp"])
                if since <= received <= until:
                    resource = ref.get("resource", "?") + (
                        f"/{ref['subresource']}" if ref.get("subresource") else ""
                    )
                    counts[f"{event['verb']} {resource}"] += 1
        return counts


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def split(counts: Counter) -> tuple[int, int]:
    reads = sum(v for k, v in counts.items() if k.split()[0] in READ_VERBS)
    writes = sum(v for k, v in counts.items() if k.split()[0] in WRITE_VERBS)
    return reads, writes


# -- the controller process ---------------------------------------------------------------------------------
class ControllerProcess:
    """``python -m controller`` as deployed; stopped by PID (SIGTERM: it releases its Lease)."""

    def __init__(
        self, plane, workdir: Path, resync: float, log_interval: float, module: str = "controller"
    ) -> None:
        from envtest.plane import free_port

        self.port = free_port()
        self.log = open(workdir / f"controller-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable, "-m", module, "--kubeconfig", str(plane.kubeconfig), "--as", SA_USER,
            "--health-addr", f"127.0.0.1:{self.port}", "--resync-seconds", str(resync),
            "--log-interval", str(log_interval), "--retry-period", "1", "--log-level", "WARNING",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def wait_leader(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if "deeplab_leader 1.0" in self.metrics():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("controller did not become leader")

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class RssSampler:
    """A process's RSS every ``interval`` seconds, from a thread: (epoch, MiB) samples."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.time(), rss_mib(self.pid)))
            except OSError:  # the process is gone
                return
            if self.stop.wait(self.interval):
                return

    def peak(self, until: float = float("inf"), since: float = 0.0) -> float:
        return max((rss for at, rss in self.samples if since <= at <= until), default=float("nan"))

    def at(self, moment: float) -> float:
        """The last sample taken at or before ``moment``."""
        return ([rss for at, rss in self.samples if at <= moment] or [float("nan")])[-1]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# -- watching, as a client would ---------------------------------------------------------------
class Watcher:
    """Records when each object of a kind first appeared and when a predicate first held (client side)."""

    def __init__(self, list_call, namespace: str, predicate=None) -> None:
        self.list_call, self.namespace = list_call, namespace
        self.predicate = predicate or (lambda obj: False)
        self.added: dict[str, float] = {}
        self.matched: dict[str, float] = {}
        self.stop = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from urllib3.exceptions import HTTPError

        while not self.stop.is_set():
            try:
                self._watch()
            except HTTPError:  # the plane stopped under a closing watcher, or a dropped watch: rewatch
                self.stop.wait(0.5)

    def _watch(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        response = self.list_call(
            self.namespace, watch=True, timeout_seconds=30, _preload_content=False, resource_version="0"
        )
        self.started.set()
        for line in iter_resp_lines(response):
            if self.stop.is_set():
                break
            if not line:
                continue
            event = json.loads(line)
            now = time.time()
            obj = event.get("object") or {}
            name = (obj.get("metadata") or {}).get("name")
            if name is None or event.get("type") == "BOOKMARK":
                continue
            self.added.setdefault(name, now)
            if name not in self.matched and self.predicate(obj):
                self.matched[name] = now
        response.release_conn()

    def close(self) -> None:
        self.stop.set()


def table_complete(obj: dict[str, Any]) -> bool:
    try:
        return json.loads((obj.get("data") or {}).get("hccl.json", "{}")).get("status") == "completed"
    except ValueError:
        return False


def wait_until(what: str, check, timeout: float, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def training_manifest(
    name: str, namespace: str, workers: int, suspend: bool = False, template: dict[str, Any] | None = None
) -> dict[str, Any]:
    volumes = {
        "data": {"persistentVolumeClaim": {"claimName": "voc-data"}},
        "checkpoints": {"persistentVolumeClaim": {"claimName": "ckpt"}},
    }
    stage = {"name": "s16", "dataFile": "vocaug.mindrecord0", "epochs": 2}
    extra = {"template": template} if template else {}
    return manifests.training(
        name, namespace, workers, volumes, stage, npusPerServer=min(8, workers), suspend=suspend, **extra
    )


def play_kubelet(core, namespace: str, pods: list[str], per_server: int = 8) -> float:
    """Binding and device-plugin annotation for every pod, then host IP + pod IP + Running.

    Returns the time the last IP was written."""
    from controller.ranktable import DEVICE_ANNOTATION

    def host_of(index: int) -> str:
        return f"172.16.{index // per_server // 250}.{index // per_server % 250 + 1}"

    def annotate(index: int) -> None:
        """The scheduler's binding (spec.nodeName: placement groups workers by node), then the plugin's
        device annotation."""
        host, local = host_of(index), index % per_server
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pods[index]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": f"node-{host}"}}  # fmt: skip
        _drain(core.create_namespaced_pod_binding(pods[index], namespace, binding, _preload_content=False))
        value = {"pod_name": pods[index], "server_id": host, "devices": [
            {"device_id": str(local), "device_ip": f"192.168.{local}.{host.rsplit('.', 1)[1]}"}]}  # fmt: skip
        body = {"metadata": {"annotations": {DEVICE_ANNOTATION: json.dumps(value)}}}
        _drain(
            core.patch_namespaced_pod(
                pods[index], namespace, body, _content_type=MERGE, _preload_content=False
            )
        )

    def place(index: int) -> float:
        status = {
            "hostIP": host_of(index),
            "podIP": f"10.244.{index // 250}.{index % 250 + 1}",
            "phase": "Running",
        }
        _drain(
            core.patch_namespaced_pod_status(
                pods[index], namespace, {"status": status}, _content_type=MERGE, _preload_content=False
            )
        )
        return time.time()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(annotate, range(len(pods))))
        return max(pool.map(place, range(len(pods))))


def worker_index(pod: str) -> int:
    """``...-w12`` -> 12: the worker's index decides its server (index // npusPerServer)."""
    return int(pod.rsplit("-w", 1)[1])


def _drain(response) -> None:
    """Read a raw response to its end, so its connection is reused (a pod is ~100 KiB with a big template)."""
    response.read()
    response.release_conn()


def attempt(
    plane, admin, audit: AuditLog, workers: int, timeout: float, template: dict[str, Any] | None = None,
    suffix: str = "",
) -> dict[str, Any]:  # fmt: skip
    """One training of ``workers`` pods: apply -> all pods -> IPs -> table -> Running, timed and counted."""
    from kubernetes import client

    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    namespace, name = f"bench-{workers}{suffix}", f"w{workers}"
    kubectl(plane, "create", "namespace", namespace)
    wait_until("default ServiceAccount", lambda: _exists(core, namespace), 30, 0.2)
    pods = Watcher(core.list_namespaced_pod, namespace)
    maps = Watcher(core.list_namespaced_config_map, namespace, table_complete)
    pods.started.wait(10)
    maps.started.wait(10)
    try:
        applied = time.time()
        manifest = training_manifest(name, namespace, workers, template=template)
        kubectl(plane, "apply", "-f", "-", stdin=json.dumps(manifest))
        all_pods = wait_until(f"{workers} pods", lambda: len(pods.added) >= workers, timeout)
        last_ip = play_kubelet(core, namespace, sorted(pods.added, key=worker_index))
        cm = f"rings-config-{name}"
        try:
            wait_until("complete rank table", lambda: cm in maps.matched, timeout)
        except TimeoutError as error:  # say why: the training's conditions
            conditions = _conditions(custom, namespace, name)
            raise TimeoutError(f"{error}; {name}'s conditions: {conditions}") from None
        table = maps.matched[cm]
        running = wait_until("Running", lambda: _phase(custom, namespace, name) == "Running", timeout, 0.2)
    finally:
        pods.close()
        maps.close()
    time.sleep(2.0)  # let the reconciles triggered by the last events finish before counting
    counts = audit.requests(namespace, applied - 1, time.time())
    reads, writes = split(counts)
    return {
        "workers": workers,
        "namespace": namespace,
        "name": name,
        "pods_s": all_pods - applied,
        "kubelet_s": last_ip - all_pods,
        "table_after_last_ip_s": table - last_ip,
        "apply_to_table_s": table - applied,
        "applied_epoch": applied,
        "table_epoch": table,
        "running_after_last_ip_s": running - last_ip,
        "reads": reads,
        "writes": writes,
        "requests": dict(sorted(counts.items())),
    }


def _exists(core, namespace: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        core.read_namespaced_service_account("default", namespace, _preload_content=False)
        return True
    except ApiException:
        return False


def _phase(custom, namespace: str, name: str) -> str | None:
    response = custom.get_namespaced_custom_object(
        "deeplab.io", "v1alpha1", namespace, "deeplabtrainings", name, _preload_content=False
    )
    return (json.loads(response.data).get("status") or {}).get("phase")


def _conditions(custom, namespace: str, name: str) -> list[str]:
    response = custom.get_namespaced_custom_object(
        "deeplab.io", "v1alpha1", namespace, "deeplabtrainings", name, _preload_content=False
    )
    conditions = (json.loads(response.data).get("status") or {}).get("conditions") or []
    return [f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}" for c in conditions]


def template_attempt(
    plane, admin, audit: AuditLog, workdir: Path, workers: int, kib: int, timeout: float,
    module: str = "controller",
) -> dict[str, Any]:  # fmt: skip
    """One ``workers`` training with a ``kib`` KiB template, under a fresh controller (the Deployment's
    resync) whose RSS is sampled from its start to the complete rank table and on to Running. Its
    namespace is deleted afterwards, so the next attempt's controller does not list these pods."""
    template = padding_template(kib) if kib else None
    controller = ControllerProcess(plane, workdir, resync=300.0, log_interval=30.0, module=module)
    sampler = RssSampler(controller.proc.pid)
    namespace = f"bench-{workers}-t{kib}"
    try:
        controller.wait_leader()
        leader_rss = controller.rss_mib()
        result = attempt(plane, admin, audit, workers, timeout, template=template, suffix=f"-t{kib}")
        sampler.close()
        result.update(
            template_kib=kib,
            **template_figures(template),
            rss_leader_mib=leader_rss,
            rss_peak_to_table_mib=sampler.peak(result["table_epoch"]),
            rss_peak_by_phase_mib=_phase_peaks(sampler, result),
            rss_at_table_mib=sampler.at(result["table_epoch"]),
            rss_peak_mib=sampler.peak(),
            rss_final_mib=sampler.samples[-1][1],
            rss_hwm_mib=peak_rss_mib(controller.proc.pid),  # the kernel's own peak, between samples too
            rss_samples=len(sampler.samples),
            limit_mib=deployment_memory_limit_mib(),
        )
    finally:
        sampler.close()
        controller.stop()
    if kib:
        result["unpaged_list"] = unpaged_list_peak(plane, namespace)
    kubectl(plane, "delete", "namespace", namespace, "--wait=true", "--timeout=900s")
    return result


def _phase_peaks(sampler: RssSampler, result: dict[str, Any]) -> dict[str, float]:
    """Peak RSS while the controller creates the pods, while the kubelet reports them, and until the table."""
    all_pods = result["applied_epoch"] + result["pods_s"]
    last_ip = all_pods + result["kubelet_s"]
    return {
        "create_pods": sampler.peak(all_pods, result["applied_epoch"]),
        "kubelet": sampler.peak(last_ip, all_pods),
        "last_ip_to_table": sampler.peak(result["table_epoch"], last_ip),
    }


def deployment_memory_limit_mib() -> float:
    """The controller container's memory limit in manifests/deployment.yaml (e.g. 256Mi), in MiB."""
    import yaml

    for doc in yaml.safe_load_all((REPO / "manifests" / "deployment.yaml").read_text()):
        if doc and doc.get("kind") == "Deployment":
            limit = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
            return float(limit[:-2]) * units[limit[-2:]]
    raise ValueError("no Deployment in manifests/deployment.yaml")


UNPAGED_LIST = """
import json, sys
from bench.common import peak_rss_mib
from controller import kube, names
from kubernetes import client
core = client.CoreV1Api(kube.api_client(sys.argv[1]))
before = peak_rss_mib()
response = core.list_namespaced_pod(sys.argv[2], label_selector=names.LABEL_TRAINING, _preload_content=False)
data = response.data
pods = json.loads(data)["items"]
print(json.dumps({"pods": len(pods), "bytes": len(data), "before_mib": before, "peak_mib": peak_rss_mib()}))
"""


def unpaged_list_peak(plane, namespace: str) -> dict[str, Any]:
    """What reading the attempt's pods cost before issue #15: one unpaged list, every pod decoded whole
    (the old ``owned_pods``), in a process of its own so that its peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, "-c", UNPAGED_LIST, str(plane.kubeconfig), namespace],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def resync_writes(audit: AuditLog, namespaces: list[str], resync: float) -> dict[str, Any]:
    """Requests by the controller while nothing changes: two resync periods over Running trainings."""
    start = time.time()
    time.sleep(2 * resync + 1.0)
    counts: Counter = Counter()
    for namespace in namespaces:
        counts += audit.requests(namespace, start, time.time())
    reads, writes = split(counts)
    return {
        "window_s": 2 * resync + 1.0,
        "resyncs": 2,
        "reads": reads,
        "writes": writes,
        "requests": dict(counts),
    }


def memory_scale(plane, admin, workdir: Path, total: int, steps: int = 4) -> dict[str, Any]:
    """A fresh controller's RSS at 0 .. ``total`` trainings (suspended: no pods), each step reconciled."""
    from kubernetes import client

    custom = client.CustomObjectsApi(admin)
    namespace = "bench-memory"
    kubectl(plane, "create", "namespace", namespace)
    controller = ControllerProcess(plane, workdir, resync=300.0, log_interval=300.0)
    points = []
    try:
        controller.wait_leader()
        time.sleep(2.0)
        points.append((0, controller.rss_mib()))
        created = 0
        for step in range(1, steps + 1):
            target = total * step // steps

            def create(index: int) -> None:
                body = training_manifest(f"m{index:05d}", namespace, 1, suspend=True)
                custom.create_namespaced_custom_object(
                    "deeplab.io", "v1alpha1", namespace, "deeplabtrainings", body, _preload_content=False
                )

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(create, range(created, target)))
            created = target
            wait_until(
                f"{target} trainings reconciled",
                lambda t=target: _suspended(custom, namespace) >= t,
                600,
                1.0,
            )
            points.append((target, controller.rss_mib()))
            log(f"memory: {target} trainings -> controller RSS {points[-1][1]:.0f} MiB")
    finally:
        controller.stop()
    per_training_kib = (points[-1][1] - points[0][1]) * 1024 / max(total, 1)
    return {"points": points, "per_training_kib": per_training_kib, "rss_mib_at_total": points[-1][1]}


def _suspended(custom, namespace: str) -> int:
    response = custom.list_namespaced_custom_object(
        "deeplab.io", "v1alpha1", namespace, "deeplabtrainings", _preload_content=False
    )
    items = json.loads(response.data)["items"]
    return sum(1 for item in items if (item.get("status") or {}).get("phase") == "Suspended")


def template_section(
    args: argparse.Namespace, plane, admin, audit: AuditLog, workdir: Path
) -> dict[str, Any]:
    """Every size once per template size, each under a fresh controller (peers in the same run), and the
    cost of building the desired pods without a cluster."""
    builds = [build_figures(n, kib) for n in args.sizes for kib in args.template_kib]
    attempts = []
    for workers in args.sizes:
        for kib in args.template_kib:
            item = template_attempt(
                plane, admin, audit, workdir, workers, kib, args.timeout, args.controller_module
            )
            attempts.append(item)
            shown = {k: v for k, v in item.items() if k not in ("requests", "limits")}
            log(f"operator {workers} workers, {kib} KiB template: {json.dumps(shown)}")
    return {"builds": builds, "template_attempts": attempts}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from controller import kube

    result: dict[str, Any] = {"ranktable": ranktable_figures()}
    log(f"rank table: {result['ranktable']['build_s'] * 1000:.1f} ms, {result['ranktable']['bytes']} bytes")
    if args.ranktable_only:
        return result
    with tempfile.TemporaryDirectory(prefix="deeplab-bench-") as tmp:
        workdir = Path(tmp)
        plane, audit_path = start_plane(workdir)
        controller = None
        try:
            kubectl(plane, "apply", "-k", str(REPO / "manifests"))
            kubectl(
                plane,
                "wait",
                "--for=condition=Established",
                "crd/deeplabtrainings.deeplab.io",
                "--timeout=60s",
            )
            admin = kube.api_client(str(plane.kubeconfig))
            audit = AuditLog(audit_path)
            if args.template_kib:
                return result | template_section(args, plane, admin, audit, workdir)
            controller = ControllerProcess(plane, workdir, args.resync, 30.0, args.controller_module)
            controller.wait_leader()
            attempts = []
            for workers in args.sizes:
                attempts.append(attempt(plane, admin, audit, workers, timeout=args.timeout))
                log(
                    f"operator {workers} workers: "
                    + json.dumps({k: v for k, v in attempts[-1].items() if k != "requests"})
                )
            result["attempts"] = attempts
            result["resync"] = resync_writes(audit, [a["namespace"] for a in attempts], args.resync)
            log(f"resync: {result['resync']}")
            result["controller_rss_mib_after_attempts"] = controller.rss_mib()
            controller.stop()
            controller = None
            if args.trainings:
                result["memory"] = memory_scale(plane, admin, workdir, args.trainings)
        finally:
            if controller is not None:
                controller.stop()
            plane.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--trainings", type=int, default=1000, help="for the memory figure (0: skip)")
    parser.add_argument("--resync", type=float, default=5.0, help="controller --resync-seconds")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--ranktable-only", action="store_true")
    parser.add_argument("--controller-module", default="controller", help="e.g. bench.controller_parallel")
    parser.add_argument(
        "--template-kib",
        type=int,
        nargs="+",
        default=[],
        help="run each size once per template size (KiB of env values and annotations), each under a fresh "
        "controller whose RSS is sampled; replaces the attempts, resync and memory figures",
    )
    parser.add_argument("--quick", action="store_true", help="8 and 64 workers, 200 trainings")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.trainings = [8, 64], 200
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    emit(run(args))


if __name__ == "__main__":
    main()
