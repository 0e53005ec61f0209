"""Multi-tenant decisions without a cluster: name conflicts, the admin's policy, per-rank stamping."""

from __future__ import annotations

import copy

from sim import UID, Sim, pod_name, stage, training_obj

from controller import names, plan, policy, resources
from controller.api import DeepLabTrainingSpec, Training

SECRET_ENV = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}


def foreign(kind: str, name: str, owner: str = "Job", owner_uid: str = "someone-else") -> dict:
    refs = [{"apiVersion": "v1", "kind": owner, "name": "mindx-job", "uid": owner_uid, "controller": True}]
    return {"kind": kind, "metadata": {"name": name, "namespace": "ns", "ownerReferences": refs}}


def failed(sim: Sim) -> tuple[str, str]:
    return sim.status["phase"], sim.status.get("reason")


# -- name conflicts ---------------------------------------------------------------------------------
def test_a_foreign_rank_table_configmap_stops_the_training_and_is_never_written():
    sim = Sim()
    theirs = foreign("ConfigMap", names.configmap_name("voc"))
    sim.configmap = copy.deepcopy(theirs)
    result = sim.step()
    assert failed(sim) == ("Failed", plan.REASON_NAME_CONFLICT)
    assert "ConfigMap rings-config-voc" in sim.status["message"] and "Job/mindx-job" in sim.status["message"]
    assert result.actions == [], "nothing created, replaced or deleted"
    assert sim.configmap == theirs and sim.cm_writes == 0
    assert [e.reason for e in result.events] == ["Started", plan.REASON_NAME_CONFLICT]


def test_an_unowned_service_of_the_same_name_stops_the_training():
    theirs = {"kind": "Service", "metadata": {"name": "voc", "namespace": "ns"}}
    table_only = Sim()  # a rankTable training has no Service: the name is not its business
    table_only.service = theirs
    table_only.settle()
    assert table_only.status["phase"] == "Pending" and table_only.pods
    sim = Sim(training_obj(launcher="dynamicCluster", npuResource=""))
    sim.service = theirs
    sim.step()
    assert failed(sim) == ("Failed", plan.REASON_NAME_CONFLICT)
    assert "Service voc" in sim.status["message"] and "no owner" in sim.status["message"]
    assert sim.pods == {}


def test_a_foreign_podgroup_stops_a_gang_training():
    sim = Sim(training_obj(gang="volcano"))
    sim.podgroup = foreign("PodGroup", names.podgroup_name("voc"), owner="Job")
    sim.step()
    assert failed(sim) == ("Failed", plan.REASON_NAME_CONFLICT)


def test_our_own_children_are_not_a_conflict():
    sim = Sim()
    sim.settle()
    assert sim.status["phase"] == "Pending" and sim.configmap is not None
    dynamic = Sim(training_obj(launcher="dynamicCluster", npuResource=""))
    dynamic.settle()
    assert dynamic.status["phase"] == "Pending" and dynamic.service is not None and dynamic.pods


def test_a_create_that_meets_a_foreign_pod_stops_the_training_and_frees_our_pods():
    sim = Sim()
    sim.step()
    t = sim.training()
    observed = plan.Observed(pods=list(sim.pods.values()), configmap=sim.configmap, service=sim.service)
    name = pod_name("s16-vocaug", 1, 2)
    result = plan.name_conflict(t, observed, sim.now, "Pod", name, "no owner")
    assert result.status["phase"] == "Failed" and result.status["reason"] == plan.REASON_NAME_CONFLICT
    assert f"Pod {name} already exists" in result.status["message"]
    deleted = {a.name for a in result.actions if isinstance(a, plan.Delete)}
    assert deleted == set(sim.pods), "the attempt's own pods are freed; nothing else is touched"


# -- the admin's policy -----------------------------------------------------------------------------
def spec_with(**fields) -> DeepLabTrainingSpec:
    return Training.from_obj(training_obj(**fields)).spec


def host_path_volumes(path: str, type_: str | None = None) -> dict:
    host = {"path": path} | ({"type": type_} if type_ else {})
    return {"data": {"hostPath": host}, "checkpoints": {"persistentVolumeClaim": {"claimName": "c"}}}


def test_host_path_is_refused_unless_the_admin_allows_its_prefix():
    spec = spec_with(volumes=host_path_volumes("/srv/data/voc"))
    assert policy.violations(spec, policy.Policy()) == [
        "spec.volumes.data.hostPath: hostPath volumes are not allowed "
        "(the admin enables them with --allowed-host-path-prefixes)"
    ]
    allowed = policy.Policy(host_path_prefixes=("/srv/data",))
    assert policy.violations(spec, allowed) == []
    for path in ("/srv/data2/voc", "/srv/data/../../etc", "srv/data/voc", "/"):
        found = policy.violations(spec_with(volumes=host_path_volumes(path)), allowed)
        assert len(found) == 1 and path in found[0], path


def test_secret_env_is_refused_unless_allowed_and_operator_variables_cannot_be_overridden():
    spec = spec_with(template={"env": [{"name": "PLAIN", "value": "x"}, SECRET_ENV]})
    found = policy.violations(spec, policy.Policy())
    assert len(found) == 1 and found[0].startswith("spec.template.env[1]: TOKEN reads a Secret")
    assert policy.violations(spec, policy.Policy(allow_secret_env=True)) == []
    for name in ("DEEPLAB_ATTEMPT", "MS_NODE_ID", "RANK_ID", "POD_NAME", "HCCL_CONNECT_TIMEOUT"):
        spec = spec_with(template={"env": [{"name": name, "value": "7"}]})
        assert "set by the operator" in policy.violations(spec, policy.Policy())[0], name


def test_a_training_the_policy_refuses_fails_before_anything_is_created():
    sim = Sim(training_obj(template={"env": [SECRET_ENV]}))
    result = sim.step()
    assert failed(sim) == ("Failed", plan.REASON_POLICY)
    assert result.actions == [] and sim.pods == {}
    assert [e.reason for e in result.events] == [plan.REASON_POLICY], "no Started event for a refusal"
    allowed = plan.plan(sim.training(), plan.Observed(), sim.now, policy.Policy(allow_secret_env=True))
    assert allowed.status["phase"] == "Failed", "a failed training stays failed"


# -- one template per attempt, stamped per rank -----------------------------------------------------
def test_stamped_pods_equal_pods_built_one_by_one_and_share_the_template():
    template = {"env": [{"name": "BIG", "value": "x" * 4000}], "annotations": {"a": "b" * 4000}}
    for launcher in ("rankTable", "dynamicCluster"):
        t = Training.from_obj(training_obj(workers=8, launcher=launcher, template=template))
        ctx = resources.PodContext(sched_ip="10.96.0.10")
        pods = resources.desired_pods(t, 0, 1, ctx)
        assert len(pods) == resources.pod_count(t)
        for name, pod in pods.items():
            labels = pod["metadata"]["labels"]
            role, rank = labels[names.LABEL_ROLE], labels.get(names.LABEL_RANK)
            alone = resources._pod(t, 0, 1, name, role, int(rank) if rank is not None else None, ctx)
            assert pod == alone, name
        first, second = (pods[names.worker_name("voc", UID, t.spec.stages[0].name, 1, r)] for r in (0, 1))
        # each pod has its own hccl/rankIndex, but the template's values are shared, not copied
        assert first["metadata"]["annotations"]["a"] is second["metadata"]["annotations"]["a"]
        assert first["spec"]["volumes"] is second["spec"]["volumes"]
        big = next(e for e in second["spec"]["containers"][0]["env"] if e["name"] == "BIG")
        assert big is next(e for e in first["spec"]["containers"][0]["env"] if e["name"] == "BIG")


def test_the_plan_builds_an_attempts_pods_once(monkeypatch):
    built = []
    real = resources.desired_pods
    monkeypatch.setattr(resources, "desired_pods", lambda *a: built.append(a) or real(*a))
    sim = Sim(training_obj(stages=[stage("only")]))
    sim.step()
    assert len(built) == 1
    built.clear()
    sim.step()
    assert len(built) == 1, "one build per reconcile, however many decisions use it"
