"""Real pods on the real node: what the operator relies on from a kubelet, checked for real.

A ConfigMap volume is refreshed in place (the rank-table launcher waits for its own attempt's table),
the termination message reaches the pod status (rank 0's summary reaches status.stages[]), logs are
served by the kubelet, a ClusterIP Service reaches a pod through kube-proxy (the dynamic cluster's
scheduler address for the workers), and cluster DNS resolves Service names.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.node

WAIT_FOR_UPDATE = """
import pathlib, sys, time
path = pathlib.Path("/cfg/greeting")
print("first:", path.read_text(), flush=True)
while path.read_text() != "second":  # the kubelet swaps the volume's files when the ConfigMap changes
    time.sleep(0.5)
pathlib.Path("/dev/termination-log").write_text("saw " + path.read_text())
print("done", flush=True)
"""


def _apply(node_kubectl, *objects: dict) -> None:
    applied = node_kubectl(
        "apply", "-f", "-", stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    )
    assert applied.returncode == 0, applied.stderr


def _pod(name: str, image: str, command: list[str], **spec) -> dict:
    container = {"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def _wait_phase(node_kubectl, name: str, phases: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    pod = {}
    while time.monotonic() < deadline:
        got = node_kubectl("get", "pod", name, "-o", "json")
        pod = json.loads(got.stdout) if got.returncode == 0 else {}
        if pod.get("status", {}).get("phase") in phases:
            return pod
        time.sleep(1)
    events = node_kubectl("get", "events", "--field-selector", f"involvedObject.name={name}").stdout
    raise AssertionError(f"pod {name} not in {phases} after {timeout}s: {pod.get('status')}\n{events}")


def test_configmap_volume_refresh_and_termination_message(node_kubectl, node_images):
    image = node_images["controller"]  # any image with Python; the controller's is the small one
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "greeting"},
        "data": {"greeting": "first"},
    }
    pod = _pod(
        "reader",
        image,
        ["python", "-c", WAIT_FOR_UPDATE],
        automountServiceAccountToken=False,
        volumes=[{"name": "cfg", "configMap": {"name": "greeting"}}],
        container={"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
    )
    _apply(node_kubectl, configmap, pod)
    running = _wait_phase(node_kubectl, "reader", {"Running", "Succeeded", "Failed"})
    assert running["status"]["phase"] == "Running", running["status"]
    assert running["spec"]["nodeName"] == "deeplab-node"  # placed by the real kube-scheduler
    patched = node_kubectl(
        "patch", "configmap", "greeting", "--type=merge", "-p", '{"data":{"greeting":"second"}}'
    )
    assert patched.returncode == 0, patched.stderr

    done = _wait_phase(node_kubectl, "reader", {"Succeeded", "Failed"})
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (done["status"]["phase"], state["exitCode"]) == ("Succeeded", 0), state
    assert state["message"] == "saw second"
    logs = node_kubectl("logs", "reader")  # the API server streams it from the kubelet
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["first: first", "done"]


def test_cluster_dns_clusterip_service_and_the_api_server_from_a_pod(node_kubectl, node_images):
    image = node_images["controller"]
    server = _pod(
        "web",
        image,
        ["python", "-m", "http.server", "8080", "-d", "/opt/venv"],
        restartPolicy="Always",
        automountServiceAccountToken=False,
        container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    _apply(node_kubectl, server, service)
    waited = node_kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=90s")
    assert waited.returncode == 0, waited.stderr
    cluster_ip = node_kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    # kube-proxy programs the Service once it sees the ready endpoint, a sync period later (up to a few
    # seconds on a loaded node); until then its rules refuse connections, as on any cluster.
    probe = (
        "import os, socket, ssl, time, urllib.request\n"
        "print(socket.gethostbyname('web'), socket.gethostbyname('kubernetes.default.svc.cluster.local'))\n"
        "for attempt in range(30):\n"
        "    try:\n"
        f"        status = urllib.request.urlopen('http://{cluster_ip}/', timeout=10).status\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(1)\n"
        "print(status)\n"
        "print(urllib.request.urlopen('http://web/', timeout=10).status)\n"
        "ca = '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'\n"
        "url = 'https://' + os.environ['KUBERNETES_SERVICE_HOST'] + '/version'\n"
        "context = ssl.create_default_context(cafile=ca)\n"
        "print(urllib.request.urlopen(url, context=context, timeout=10).status)\n"
    )
    _apply(node_kubectl, _pod("client", image, ["python", "-c", probe]))
    done = _wait_phase(node_kubectl, "client", {"Succeeded", "Failed"})
    logs = node_kubectl("logs", "client").stdout
    assert done["status"]["phase"] == "Succeeded", logs
    # names from cluster DNS (CoreDNS), the Service through kube-proxy's iptables rules, by address and
    # by name, then the API server through `kubernetes`
    assert logs.split() == [cluster_ip, "10.0.0.1", "200", "200", "200"]
    for name in ("client", "web"):
        node_kubectl("delete", "pod", name, "--wait=false")
