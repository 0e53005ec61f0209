"""Leader election as kubebuilder controllers do it: off unless asked (the Deployment asks), and a missing
Lease namespace is one line and exit 2, never a retry loop of tracebacks."""

from __future__ import annotations

import threading

import pytest
import yaml
from kubernetes.client.rest import ApiException

from controller import __main__ as main_module
from controller.leader import LeaderElector, LeaseNamespaceMissing
from tests.unit.test_security_manifests import MANIFESTS


def test_leader_election_is_off_by_default_and_the_deployment_turns_it_on():
    assert main_module.parse(["--kubeconfig", "k"]).leader_elect is False
    docs = yaml.safe_load_all((MANIFESTS / "deployment.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    argv = command[command.index("controller") + 1 :]
    assert main_module.parse(argv).leader_elect is True


class _MissingNamespaceApi:
    """The API server's answers when the Lease's namespace does not exist."""

    def __init__(self):
        self.creates = 0

    def read_namespaced_lease(self, name, namespace, **kwargs):
        raise ApiException(status=404, reason="Not Found")

    def create_namespaced_lease(self, namespace, body, **kwargs):
        self.creates += 1
        raise ApiException(status=404, reason="Not Found")


def test_a_missing_lease_namespace_stops_the_campaign_with_one_line(caplog):
    elector = LeaderElector(None, "deeplab-system", "deeplab-operator", "me", retry_period=0.01)
    elector.api = _MissingNamespaceApi()
    stopped = threading.Event()
    elector.run(threading.Event(), on_started=lambda: pytest.fail("not a leader"), on_stopped=stopped.set)
    assert stopped.is_set() and elector.api.creates == 1, "one attempt, then the campaign ends"
    assert "namespace 'deeplab-system'" in elector.fatal and "--leader-elect" in elector.fatal
    assert "\n" not in elector.fatal
    with pytest.raises(LeaseNamespaceMissing):
        elector.try_acquire_or_renew()
