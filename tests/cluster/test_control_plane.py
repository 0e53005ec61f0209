"""The control plane is a real one: schemas, status subresources and printer columns all work."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.envtest.example.com
    spec:
      group: envtest.example.com
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
      - name: v1
        served: true
        storage: true
        subresources: {status: {}}
        additionalPrinterColumns:
        - {name: SIZE, type: integer, jsonPath: .spec.size}
        - {name: STATE, type: string, jsonPath: .status.state}
        - {name: AGE, type: date, jsonPath: .metadata.creationTimestamp}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                required: [size]
                properties:
                  size: {type: integer, minimum: 1}
              status:
                type: object
                properties:
                  state: {type: string}
    """
)


def widget(name: str, size) -> str:
    return json.dumps(
        {
            "apiVersion": "envtest.example.com/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"size": size},
        }
    )


def test_apiserver_is_ready_and_reports_pinned_version(control_plane):
    from envtest import KUBERNETES_VERSION

    assert control_plane.get("/readyz") == b"ok"
    assert control_plane.version() == KUBERNETES_VERSION


def test_crd_schema_status_and_printer_columns(kubectl):
    applied = kubectl("apply", "-f", "-", stdin=WIDGET_CRD)
    assert applied.returncode == 0, applied.stderr
    waited = kubectl(
        "wait", "--for=condition=Established", "crd/widgets.envtest.example.com", "--timeout=30s"
    )
    assert waited.returncode == 0, waited.stderr

    assert kubectl("apply", "-f", "-", stdin=widget("ok", 3)).returncode == 0

    refused = kubectl("apply", "-f", "-", stdin=widget("bad", 0))
    assert refused.returncode != 0
    # The API server's own OpenAPI validation message, naming the field.
    assert "spec.size" in refused.stderr and "should be greater than or equal to 1" in refused.stderr

    wrong_type = kubectl("apply", "-f", "-", stdin=widget("typed", "three"))
    assert wrong_type.returncode != 0 and "spec.size" in wrong_type.stderr

    # The status subresource: a status patch on the main resource is ignored, on /status it lands.
    patched = kubectl(
        "patch", "widget", "ok", "--subresource=status", "--type=merge", "-p", '{"status":{"state":"Shiny"}}'
    )
    assert patched.returncode == 0, patched.stderr

    table = kubectl("get", "widgets")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "SIZE", "STATE", "AGE"]
    assert row.split()[:3] == ["ok", "3", "Shiny"]


def test_rbac_is_enforced(kubectl):
    denied = kubectl("get", "pods", as_user="nobody")
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    assert kubectl("auth", "can-i", "create", "pods", as_user="nobody").stdout.strip() == "no"


def test_service_accounts_exist_so_pods_are_admitted(kubectl):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "automountServiceAccountToken": False},
    }
    created = kubectl("create", "-f", "-", stdin=json.dumps(pod))
    assert created.returncode == 0, created.stderr
    assert kubectl("delete", "pod", "probe", "--wait=false").returncode == 0


def test_a_failed_part_stops_the_parts_already_started(tmp_path, control_plane):
    """controlplane.ControlPlane's contract: a start that fails midway leaves no process behind."""
    from envtest.binaries import ensure_binaries
    from envtest.plane import ETCD, Component, ControlPlane, ControlPlaneError, api_ready, plane_components

    seen: dict[str, int] = {}
    broken = Component(
        "kube-controller-manager",
        lambda plane: ["--no-such-flag"],
        api_ready("/api/v1/namespaces/default/serviceaccounts/default"),
        setup=lambda plane: seen.update(plane.pids),
    )
    apiserver = plane_components()[1]
    plane = ControlPlane(tmp_path / "plane", ensure_binaries(), components=[ETCD, apiserver, broken])
    with pytest.raises(ControlPlaneError, match="kube-controller-manager exited during start-up"):
        plane.start(timeout=60)
    assert set(seen) == {"etcd", "kube-apiserver"}
    for pid in seen.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert plane.pids == {} and not (tmp_path / "plane").exists()
