"""The thin I/O layer: read a training's children, write its status, apply the plan's actions.

Everything goes through the official client with ``_preload_content=False`` so objects stay plain
JSON dicts (the shape the plan and the manifests use), with no model round trip that could drop
fields. Writes are idempotent: "already exists" and "not found" are the desired outcome of a
create or delete that a previous, interrupted reconcile already made.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.rest import ApiException

from controller import api, faults, informer, names, progress, ranktable, resources
from controller.plan import Action, Create, Delete, DeleteTraining, Event, Observed, ReplaceConfigMap

log = logging.getLogger(__name__)
COMPONENT = "deeplab-operator"
EVENT_MESSAGE_MAX = 1024


class Conflict(Exception):
    """Optimistic concurrency lost (HTTP 409): re-read and plan again."""


class NameTaken(Exception):
    """A create found the name held by an object that is not this training's: never adopted."""

    def __init__(self, kind: str, name: str, owner: str):
        super().__init__(f"{kind} {name} exists, owned by {owner}")
        self.kind, self.name, self.owner = kind, name, owner


def namespace_terminating(error: ApiException) -> bool:
    """A create refused because the namespace is being deleted (403, cause NamespaceTerminating): the
    training goes with it, nothing to retry or report (Kubernetes' Job controller ignores it too)."""
    if error.status != 403:
        return False
    try:
        causes = (json.loads(error.body or "{}").get("details") or {}).get("causes") or []
    except (ValueError, AttributeError):
        return False
    return any(cause.get("reason") == "NamespaceTerminating" for cause in causes)


CONNECTIONS = 16


def api_client(kubeconfig: str | None = None, context: str | None = None, as_user: str | None = None):
    """In-cluster config when running in a pod, else a kubeconfig (``--kubeconfig`` or the default).

    ``as_user`` impersonates (like ``kubectl --as``): tests run the controller under its own
    ServiceAccount's RBAC while holding admin credentials.
    """
    configuration = client.Configuration()
    # One connection per concurrent pod create (runtime.CREATE_CONCURRENCY); urllib3's default is 4.
    configuration.connection_pool_maxsize = CONNECTIONS
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    api_client_ = client.ApiClient(configuration)
    if as_user:
        api_client_.set_default_header("Impersonate-User", as_user)
    return api_client_


def size_pool(api_client_, connections: int) -> None:
    """Let ``connections`` requests share the client's connection pool at once; call before the first.

    urllib3 opens a connection for a request that finds the pool empty and throws it away afterwards when
    the pool is full, so a pool smaller than the concurrency pays a TCP and TLS handshake per overflowing
    request: two workers' batches of creates beside the watches overflow urllib3's default of 4 and
    ``api_client``'s 16.
    """
    if api_client_.configuration.connection_pool_maxsize < connections:
        api_client_.configuration.connection_pool_maxsize = connections
        api_client_.rest_client = rest.RESTClientObject(api_client_.configuration)


def _json(response) -> dict[str, Any]:
    return json.loads(response.data)


def sent(response) -> None:
    """Read a write's reply to its end. With ``_preload_content=False`` urllib3 gives the connection back
    to the pool only then: unread, every create opened a new TLS connection (1,024 handshakes for a
    1,024-worker attempt, the controller's main cost in bench/scheduling_scale.py)."""
    if response is not None:
        response.drain_conn()
        response.release_conn()


def _ignore(status: int, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ApiException as error:
        if error.status == status:
            return None
        raise


class Kube:
    def __init__(self, api_client_, on_write: Callable[[str, str], None] | None = None):
        self.client = api_client_
        self.core = client.CoreV1Api(api_client_)
        self.custom = client.CustomObjectsApi(api_client_)
        self.on_write = on_write or (lambda verb, resource: None)

    # -- trainings -----------------------------------------------------------------------------
    def get_training(self, namespace: str, name: str) -> dict[str, Any] | None:
        response = _ignore(
            404,
            lambda: self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, _preload_content=False
            ),
        )
        return _json(response) if response is not None else None

    def replace_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """PUT /status with the object's resourceVersion: a stale read fails with 409, never overwrites.

        PUT rather than a merge patch: a merge patch cannot remove a field we no longer set.
        """
        body = {**obj, "status": status}
        meta = obj["metadata"]
        self.on_write("update", "deeplabtrainings/status")
        try:
            response = self.custom.replace_namespaced_custom_object_status(
                api.GROUP,
                api.VERSION,
                meta["namespace"],
                api.PLURAL,
                meta["name"],
                body,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status == 409:
                raise Conflict(f"status of {meta['name']}: {error.reason}") from error
            raise
        return _json(response)

    # -- children --------------------------------------------------------------------------------
    def observe(
        self, t: api.Training, with_logs: Callable[[dict | None], str | None] | None = None
    ) -> Observed:
        """Live reads (not a cache): the plan must never act on a pod list older than its own writes."""
        owned = self.owned_pods(t)
        cm_name = names.configmap_name(t.name)
        configmap = self._get(
            lambda: self.core.read_namespaced_config_map(cm_name, t.namespace, _preload_content=False)
        )
        service = None
        if t.spec.launcher == api.Launcher.DYNAMIC_CLUSTER:
            service = self._get(
                lambda: self.core.read_namespaced_service(
                    names.service_name(t.name), t.namespace, _preload_content=False
                )
            )
        podgroup = None
        if t.spec.gang == api.Gang.VOLCANO:
            podgroup = self._get(
                lambda: self.custom.get_namespaced_custom_object(
                    "scheduling.volcano.sh", "v1beta1", t.namespace, "podgroups", names.podgroup_name(t.name),
                    _preload_content=False,
                )
            )  # fmt: skip
        logs = None
        if with_logs is not None:
            pod = with_logs(configmap)
            logs = self.read_log(t.namespace, pod) if pod else None
        # the nodes of failed workers, for fault-aware retry; a finished training retries nothing
        failed_on = set()
        if t.status.phase not in api.FINISHED:
            failed_on = {(p.get("spec") or {}).get("nodeName") for p in owned if _failed(p)}
        nodes = {name: node for name in sorted(n for n in failed_on if n) if (node := self.read_node(name))}
        return Observed(
            pods=owned, configmap=configmap, service=service, podgroup=podgroup, logs=logs, nodes=nodes
        )

    def read_node(self, name: str) -> dict[str, Any] | None:
        """A node a worker failed on, reduced to its annotations (the device plugin's health report);
        None when it is gone or not readable (a namespaced install has no access to nodes)."""
        try:
            node = _json(self.core.read_node(name, _preload_content=False, _request_timeout=10))
        except ApiException as error:
            if error.status in (403, 404):
                return None
            raise
        annotations = dict((node.get("metadata") or {}).get("annotations") or {})
        annotations.update(self._device_info(name))
        return {"metadata": {"name": name, "annotations": annotations}}

    def _device_info(self, node: str) -> dict[str, str]:
        """The device plugin's current health report, ConfigMap kube-system/mindx-dl-deviceinfo-<node>,
        key DeviceInfoCfg, DeviceInfo.DeviceList (ascend-device-plugin pkg/kubeclient); older plugins
        wrote the same keys as node annotations. {} when absent or not readable."""
        try:
            name = faults.DEVICE_INFO_PREFIX + node
            cm = self._get(
                lambda: self.core.read_namespaced_config_map(
                    name, "kube-system", _preload_content=False, _request_timeout=10
                )
            )
        except ApiException as error:
            if error.status == 403:
                return {}
            raise
        return faults.device_list((cm or {}).get("data") or {})

    def owned_pods(self, t: api.Training) -> list[dict[str, Any]]:
        """The training's pods, read a page at a time and reduced to what the plan reads (``slim``):
        a 4,096-pod attempt with a 100 KiB template is 400 MiB of JSON in one unpaged list."""
        selector = f"{names.LABEL_TRAINING}={names.training_label(t.name)}"
        pods, token = [], None
        while True:
            page = _json(
                self.core.list_namespaced_pod(
                    t.namespace, label_selector=selector, limit=informer.PAGE_SIZE, _continue=token,
                    _preload_content=False,
                )
            )  # fmt: skip
            pods += [slim(p) for p in page.get("items", []) if resources.owned_by(p, t.uid)]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return pods

    def _get(self, call: Callable[[], Any]) -> dict[str, Any] | None:
        response = _ignore(404, call)
        return _json(response) if response is not None else None

    def read_log(self, namespace: str, pod: str, tail_lines: int = 50) -> list[str] | None:
        """Rank 0's log tail; None when it cannot be read (no kubelet, pod gone): progress just waits.

        Bounded in bytes as well as lines: a worker printing one endless line must not cost the
        controller its memory (progress also skips any line longer than progress.LINE_MAX).
        """
        try:
            response = self.core.read_namespaced_pod_log(
                pod, namespace, container=resources.CONTAINER, tail_lines=tail_lines,
                limit_bytes=progress.LOG_BYTES, _preload_content=False, _request_timeout=10,
            )  # fmt: skip
            return response.data.decode("utf-8", errors="replace").splitlines()
        except Exception as error:  # any failure here only delays progress
            log.debug("logs of %s/%s unavailable: %s", namespace, pod, error)
            return None

    # -- actions ---------------------------------------------------------------------------------
    def apply(self, t: api.Training, action: Action) -> None:
        if isinstance(action, Create):
            self.create(action.manifest)
        elif isinstance(action, Delete) and action.kind == "Service":
            self.delete_service(t.namespace, action.name, action.uid)
        elif isinstance(action, Delete):
            self.delete_pod(t.namespace, action.name, action.uid)
        elif isinstance(action, ReplaceConfigMap):
            self.replace_configmap(action.manifest, action.resource_version)
        elif isinstance(action, DeleteTraining):
            self.delete_training(t)
        else:  # pragma: no cover - the plan only emits the four above
            raise TypeError(f"unknown action {action!r}")

    def create(self, manifest: dict[str, Any]) -> None:
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        calls = {
            "Pod": lambda: self.core.create_namespaced_pod(namespace, manifest, _preload_content=False),
            "Service": lambda: self.core.create_namespaced_service(
                namespace, manifest, _preload_content=False
            ),
            "ConfigMap": lambda: self.core.create_namespaced_config_map(
                namespace, manifest, _preload_content=False
            ),
            "PodGroup": lambda: self.custom.create_namespaced_custom_object(
                "scheduling.volcano.sh", "v1beta1", namespace, "podgroups", manifest, _preload_content=False
            ),
        }
        self.on_write("create", kind.lower() + "s")
        try:
            sent(calls[kind]())
        except ApiException as error:
            if error.status != 409:
                raise
            # AlreadyExists: ours from an interrupted reconcile (harmless), or someone else's (stop).
            self._check_owner(manifest)

    def _check_owner(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        kind, name, namespace = manifest["kind"], meta["name"], meta["namespace"]
        reads = {
            "Pod": lambda: self.core.read_namespaced_pod(name, namespace, _preload_content=False),
            "Service": lambda: self.core.read_namespaced_service(name, namespace, _preload_content=False),
            "ConfigMap": lambda: self.core.read_namespaced_config_map(
                name, namespace, _preload_content=False
            ),
            "PodGroup": lambda: self.custom.get_namespaced_custom_object(
                "scheduling.volcano.sh", "v1beta1", namespace, "podgroups", name, _preload_content=False
            ),
        }
        existing = self._get(reads[kind])
        uid = meta["ownerReferences"][0]["uid"]
        if existing is not None and not resources.owned_by(existing, uid):
            raise NameTaken(kind, name, resources.describe_owner(existing))

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        # The uid precondition: a pod recreated under the same name is not ours to delete.
        options = {"preconditions": {"uid": uid}} if uid else {}
        self.on_write("delete", "pods")
        try:
            sent(self.core.delete_namespaced_pod(name, namespace, body=options, _preload_content=False))
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def delete_service(self, namespace: str, name: str, uid: str) -> None:
        """An outdated Service of ours (the headless one of earlier versions), by uid precondition."""
        self.on_write("delete", "services")
        try:
            sent(self.core.delete_namespaced_service(
                name, namespace, body={"preconditions": {"uid": uid}}, _preload_content=False
            ))  # fmt: skip
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def replace_configmap(self, manifest: dict[str, Any], resource_version: str) -> None:
        body = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": resource_version}}
        meta = manifest["metadata"]
        self.on_write("update", "configmaps")
        try:
            replaced = self.core.replace_namespaced_config_map(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
            sent(replaced)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(f"configmap {meta['name']}: {error.reason}") from error
            raise

    def delete_training(self, t: api.Training) -> None:
        body = {"propagationPolicy": "Background", "preconditions": {"uid": t.uid}}
        self.on_write("delete", "deeplabtrainings")
        sent(_ignore(
            404,
            lambda: self.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, t.namespace, api.PLURAL, t.name, body=body, _preload_content=False
            ),
        ))  # fmt: skip

    # -- events ----------------------------------------------------------------------------------
    def event(self, t: api.Training, event: Event, instance: str = "") -> None:
        """A core/v1 Event on the training (what `kubectl describe` shows). Best effort.

        Messages may quote a pod (its termination message, a scheduler's reason): cleaned and
        bounded here too, whatever the plan already did, since this is where they leave for a terminal.
        """
        now = datetime.now(timezone.utc)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{t.name[:200]}.", "namespace": t.namespace},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": t.name,
                "namespace": t.namespace,
                "uid": t.uid,
            },
            "reason": progress.clean_text(event.reason, progress.REASON_MAX),
            "message": progress.clean_text(event.message, EVENT_MESSAGE_MAX),
            "type": event.type,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": instance or COMPONENT,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        self.on_write("create", "events")
        try:
            sent(self.core.create_namespaced_event(t.namespace, body, _preload_content=False))
        except ApiException as error:
            log.warning("event %s on %s/%s not recorded: %s", event.reason, t.namespace, t.name, error.reason)


def _failed(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Failed"


def slim(pod: dict[str, Any]) -> dict[str, Any]:
    """The parts of a pod the plan reads (``plan.PodInfo``): identity, our labels, the device
    plugin's annotations, owner and status. Never the spec (the user's template lives there)."""
    meta = pod["metadata"]
    keep = ("name", "namespace", "uid", "labels", "deletionTimestamp", "ownerReferences")
    slimmed = {key: meta[key] for key in keep if key in meta}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k in ranktable.DEVICE_ANNOTATIONS
    }
    if annotations:
        slimmed["annotations"] = annotations
    node = (pod.get("spec") or {}).get("nodeName")
    return {
        "metadata": slimmed,
        "spec": {"nodeName": node} if node else {},
        "status": pod.get("status") or {},
    }


def owner_key(obj: dict[str, Any]) -> tuple[str, str] | None:
    """The (namespace, name) of the training controlling a child object."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == api.KIND
            and ref.get("apiVersion", "").startswith(api.GROUP)
        ):
            return obj["metadata"].get("namespace", ""), ref["name"]
    return None
