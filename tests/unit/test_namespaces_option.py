"""Watching a list of namespaces: the flag, and informers that never ask for more than one namespace."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from controller.__main__ import parse_namespaces
from controller.runtime import Controller, Options


class RecordingClient(client.ApiClient):
    """Records the path of every API call instead of sending it (any client version: the URL is what
    goes on the wire)."""

    def __init__(self):
        super().__init__(client.Configuration(host="http://nowhere"))
        self.paths: list[str] = []

    def call_api(self, method, url, *args, **kwargs):
        self.paths.append(urlsplit(url).path)
        return SimpleNamespace(status=200, response=None)


def listed_paths(namespaces: tuple[str, ...]) -> dict[str, str]:
    recorder = RecordingClient()
    controller = Controller(recorder, Options(namespaces=namespaces, leader_elect=False, health_addr=None))
    paths = {}
    for informer in controller.informers:
        informer.list_call(_preload_content=False)
        paths[informer.name] = recorder.paths[-1]
    return paths


def test_one_informer_per_kind_and_namespace_each_listing_only_its_namespace():
    assert listed_paths(("team-a", "team-b")) == {
        "trainings@team-a": "/apis/deeplab.io/v1alpha1/namespaces/team-a/deeplabtrainings",
        "pods@team-a": "/api/v1/namespaces/team-a/pods",
        "services@team-a": "/api/v1/namespaces/team-a/services",
        "trainings@team-b": "/apis/deeplab.io/v1alpha1/namespaces/team-b/deeplabtrainings",
        "pods@team-b": "/api/v1/namespaces/team-b/pods",
        "services@team-b": "/api/v1/namespaces/team-b/services",
    }


def test_no_namespaces_means_every_namespace():
    assert listed_paths(()) == {
        "trainings": "/apis/deeplab.io/v1alpha1/deeplabtrainings",
        "pods": "/api/v1/pods",
        "services": "/api/v1/services",
    }


def test_namespace_list_flag():
    assert parse_namespaces("team-a,team-b") == ("team-a", "team-b")
    assert parse_namespaces(" team-b , team-a,,team-b ") == (
        "team-b",
        "team-a",
    )  # order kept, repeats dropped
    assert parse_namespaces("") == ()
    for bad in ("Team-A", "team_a", "-a", "a" * 64, "a/b"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a namespace name"):
            parse_namespaces(f"ok,{bad}")


def test_namespace_is_an_alias_and_a_bad_name_exits_2(monkeypatch):
    import controller.__main__ as main_module

    seen = {}

    def fake_run(args) -> int:
        seen["namespaces"] = args.namespaces
        return 0

    monkeypatch.setattr(main_module, "run", fake_run)
    main_module.main(["run", "--namespace", "team-a"])
    assert seen.pop("namespaces") == ("team-a",)
    main_module.main(["--namespaces", "team-a,team-b"])
    assert seen.pop("namespaces") == ("team-a", "team-b")
    with pytest.raises(SystemExit) as exit_info:
        main_module.main(["run", "--namespaces", "team-a,Team-B"])
    assert exit_info.value.code == 2


def test_the_overlay_binds_exactly_the_namespaces_its_deployment_watches():
    """The two lists an admin edits in overlays/namespaced stay in step (the cluster test renders
    the overlay with kustomize; this one needs no binaries)."""
    overlay = Path(__file__).resolve().parents[2] / "overlays/namespaced"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    ops = [op for p in kustomization["patches"] if "target" in p for op in yaml.safe_load(p["patch"])]
    flags = [op["value"] for op in ops if str(op.get("value", "")).startswith("--namespaces=")]
    assert len(flags) == 1
    watched = parse_namespaces(flags[0].split("=", 1)[1])
    bindings = [d for d in yaml.safe_load_all((overlay / "rolebindings.yaml").read_text()) if d]
    assert [b["metadata"]["namespace"] for b in bindings] == list(watched)
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "deeplab-operator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "deeplab-operator", "namespace": "deeplab-system"}
        ]
