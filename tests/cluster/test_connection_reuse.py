"""The controller's requests reuse their connections. A reply read with ``_preload_content=False`` goes
back to urllib3's pool only once read to its end; a write whose reply was never read kept its connection
out of the pool, so every create paid a new TCP and TLS handshake (1,024 of them for a 1,024-worker
attempt, most of the controller's CPU and part of the API server's in bench/scheduling_scale.py)."""

from __future__ import annotations

import pytest
from sim import training_obj
from urllib3.connectionpool import HTTPSConnectionPool

from controller import api, kube
from controller.leader import LeaderElector
from controller.plan import Event

pytestmark = pytest.mark.cluster


def test_writes_reuse_one_connection(control_plane, namespace, monkeypatch):
    opened = []
    new_conn = HTTPSConnectionPool._new_conn
    monkeypatch.setattr(HTTPSConnectionPool, "_new_conn", lambda pool: opened.append(pool) or new_conn(pool))
    api_client = kube.api_client(str(control_plane.kubeconfig))
    writer = kube.Kube(api_client)
    for index in range(5):
        meta = {"name": f"reuse-{index}", "namespace": namespace}
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"a": "1"}}
        writer.create(config_map)
        pod = {"containers": [{"name": "c", "image": "none"}]}
        writer.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod})
        writer.delete_pod(namespace, meta["name"], "")
    version = writer.core.read_namespaced_config_map("reuse-4", namespace).metadata.resource_version
    writer.replace_configmap({**config_map, "data": {"a": "2"}}, version)
    obj = training_obj("reuse")
    training = api.Training.from_obj({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
    writer.event(training, Event("Normal", "Reused", "one connection"))
    elector = LeaderElector(api_client, namespace, "reuse", "me")
    assert elector.try_acquire_or_renew() and elector.try_acquire_or_renew()
    assert len(opened) == 1, f"{len(opened)} connections for 18 requests and 4 Lease requests"
