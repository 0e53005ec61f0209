"""The CRD in manifests/ is generated from the pydantic models, and is a structural schema."""

from __future__ import annotations

import types
import typing
from typing import Any

import pydantic
import pytest
import yaml

from controller import api, crd, resources
from job.config import TrainConfig


def walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def test_committed_crd_matches_the_models():
    assert crd.CRD_PATH.read_text() == crd.render(), "stale: run `python -m controller crd --write`"


def test_schema_is_structural():
    schema = crd.openapi_schema()
    for path, node in walk(schema):
        assert not {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"} & node.keys(), path
    for section in ("spec", "status"):
        for path, node in walk(schema["properties"][section]):
            if (
                path.endswith((".properties", "x-kubernetes-validations"))
                or "x-kubernetes-validations[" in path
            ):
                continue
            if path.split(".")[-1] in ("default", "enum", "required", "x-kubernetes-list-map-keys"):
                continue
            typeless = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
                "x-kubernetes-int-or-string"
            )
            assert "type" in node or typeless, f"{section}{path}"


def test_defaults_enums_bounds_and_rules_reach_the_schema():
    spec = crd.openapi_schema()["properties"]["spec"]
    props = spec["properties"]
    assert props["npusPerServer"]["default"] == 8
    assert props["npuResource"]["default"] == api.DEFAULT_NPU_RESOURCE
    assert (
        props["launcher"]["enum"] == ["rankTable", "dynamicCluster"]
        and props["launcher"]["default"] == "rankTable"
    )
    assert props["backoffLimit"]["default"] == 3 and props["workers"]["minimum"] == 1
    stage = props["stages"]["items"]
    assert stage["properties"]["name"]["pattern"] == api.DNS_LABEL
    assert (
        stage["properties"]["baseLR"]["exclusiveMinimum"] is True
        and stage["properties"]["baseLR"]["minimum"] == 0
    )
    assert stage["properties"]["lrType"]["enum"] == ["cos", "poly", "exp"]
    assert props["stages"]["maxItems"] == api.MAX_STAGES  # CEL cost estimation needs bounds
    messages = [rule["message"] for rule in spec["x-kubernetes-validations"]]
    assert "stage names must be unique" in messages and "initFrom must name an earlier stage" in messages
    volume = props["volumes"]["properties"]["data"]
    assert "exactly one of" in volume["x-kubernetes-validations"][0]["message"]
    tolerations = props["template"]["properties"]["tolerations"]
    assert tolerations["maxItems"] == api.MAX_TOLERATIONS
    assert tolerations["items"]["properties"]["operator"]["enum"] == ["Exists", "Equal"]


def test_status_has_no_defaults_and_conditions_are_a_map():
    status = crd.openapi_schema()["properties"]["status"]
    assert not [path for path, node in walk(status) if "default" in node]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == [
        "type"
    ]


def test_crd_identity_and_printer_columns():
    doc = yaml.safe_load(crd.render())
    assert doc["metadata"]["name"] == "deeplabtrainings.deeplab.io"
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["shortNames"] == ["dlt"]
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"]]
    assert columns == ["STAGE", "PHASE", "EPOCH", "LOSS", "MIOU", "AGE"]


def test_command_line_check(capsys):
    from controller.__main__ import main

    assert main(["crd", "--check"]) == 0
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd.render()


# -- every field documented ------------------------------------------------------------------------------
def properties(node: Any, path: str = ""):
    """(path, schema) of every field: what `kubectl explain --recursive` lists."""
    if not isinstance(node, dict):
        return
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from properties(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from properties(node[key], f"{path}[]")


def test_every_field_has_a_description():
    schema = crd.openapi_schema()
    fields = list(properties(schema))
    assert len(fields) > 150, "the walk reaches every nested field"
    missing = [
        path for path, node in fields if not node.get("description", "").strip() and path != ".metadata"
    ]
    assert not missing, f"fields without a description (add an attribute docstring): {missing}"


def test_descriptions_state_defaults_and_units():
    stage = crd.openapi_schema()["properties"]["spec"]["properties"]["stages"]["items"]["properties"]
    assert stage["saveSteps"]["description"].endswith("Default: 1500.")
    assert stage["freezeBn"]["description"].endswith("Default: false.")
    assert (
        stage["cropSize"]["description"].startswith("Training crop")
        and "pixels" in stage["cropSize"]["description"]
    )
    for name, node in stage.items():
        if "default" in node and node["default"] != []:
            assert "Default: " in node["description"], name


# -- bounded input -----------------------------------------------------------------------------------------
def test_every_free_form_field_of_the_spec_is_bounded():
    """A manifest can never make the controller build huge pods: every string, list and map of the spec
    has a maxLength, maxItems or maxProperties, and nothing is left free-form."""
    spec = crd.openapi_schema()["properties"]["spec"]
    unbounded = []
    for path, node in walk(spec):
        if "x-kubernetes-validations" in path or path.endswith((".properties", ".default")):
            continue
        assert not node.get("x-kubernetes-preserve-unknown-fields"), f"free-form: spec{path}"
        kind = node.get("type")
        if (kind == "string" and "enum" not in node) or node.get("x-kubernetes-int-or-string"):
            bound = "maxLength"
        elif kind == "array":
            bound = "maxItems"
        elif kind == "object" and "additionalProperties" in node:
            bound = "maxProperties"
        else:
            continue
        if bound not in node:
            unbounded.append(f"spec{path} ({bound})")
    assert not unbounded, unbounded


def test_maps_bound_their_keys_with_cel():
    template = crd.openapi_schema()["properties"]["spec"]["properties"]["template"]["properties"]
    for name in ("nodeSelector", "labels", "annotations"):
        node = template[name]
        assert node["maxProperties"] == api.MAX_MAP_ENTRIES
        rules = [r["rule"] for r in node["x-kubernetes-validations"]]
        assert rules == [f"self.all(k, size(k) >= 1 && size(k) <= {api.QUALIFIED_NAME_MAX})"], name
    assert template["labels"]["additionalProperties"]["maxLength"] == 63
    assert template["annotations"]["additionalProperties"]["maxLength"] == api.ANNOTATION_VALUE_MAX
    limits = template["resources"]["properties"]["limits"]
    assert limits["maxProperties"] == api.MAX_RESOURCE_NAMES
    assert limits["additionalProperties"]["x-kubernetes-int-or-string"] is True


def test_typed_template_parses_the_kubernetes_shapes():
    template = api.PodTemplatePatch.model_validate(
        {
            "resources": {"requests": {"cpu": 4, "memory": "8Gi"}, "limits": {"huawei.com/Ascend910": 1}},
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k", "optional": True}}},
                {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            ],
            "tolerations": [{"key": "npu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    )
    wire = template.wire()
    assert wire["resources"] == {
        "requests": {"cpu": "4", "memory": "8Gi"},
        "limits": {"huawei.com/Ascend910": "1"},
    }
    assert wire["env"][3] == {
        "name": "D",
        "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
    }
    assert wire["tolerations"] == [{"key": "npu", "operator": "Exists", "effect": "NoSchedule"}]
    for bad in (
        {"resources": {"requests": {"cpu": "lots"}}},
        {"env": [{"name": "1BAD", "value": "x"}]},
        {"env": [{"name": "A", "value": "x" * (api.ENV_VALUE_MAX + 1)}]},
        {"env": [{"name": f"V{i}", "value": ""} for i in range(api.MAX_ENV + 1)]},
        {"tolerations": [{"operator": "Maybe"}]},
        {"labels": {"k" * (api.QUALIFIED_NAME_MAX + 1): "v"}},
        {"annotations": {f"a{i}": "" for i in range(api.MAX_MAP_ENTRIES + 1)}},
    ):
        with pytest.raises(pydantic.ValidationError):
            api.PodTemplatePatch.model_validate(bad)


# -- extraArgs cannot repeat an operator flag -----------------------------------------------------------
def _full_training(**stage: Any) -> api.Training:
    spec = {
        "image": "w:1",
        "workers": 2,
        "npusPerServer": 2,
        "volumes": {
            "data": {"persistentVolumeClaim": {"claimName": "d"}},
            "checkpoints": {"persistentVolumeClaim": {"claimName": "c"}},
            "pretrained": {"persistentVolumeClaim": {"claimName": "p"}, "path": "r.ckpt"},
        },
        "stages": [
            {"name": "a", "dataFile": "a.mindrecord0", "epochs": 1, **stage},
            {"name": "b", "dataFile": "b.mindrecord0", "epochs": 1, **stage},
        ],
    }
    return api.Training.from_obj({"metadata": {"name": "t", "namespace": "n", "uid": "u"}, "spec": spec})


def _flags(args: list[str]) -> set[str]:
    return {arg for arg in args if arg.startswith("--")}


def test_operator_flags_are_exactly_the_flags_train_args_emits():
    plain = _full_training()
    everything = _full_training(
        freezeBn=True, recompute=True, asppRates=[6, 12, 18], evaluate={"dataList": "l.txt", "flip": True}
    )
    emitted = set()
    for t in (plain, everything):
        for index in range(len(t.spec.stages)):
            emitted |= _flags(resources.train_args(t, index))
    assert emitted == set(api.OPERATOR_FLAGS)
    assert len(api.OPERATOR_FLAGS) == len(set(api.OPERATOR_FLAGS))


def test_operator_flags_are_flags_of_the_jobs_train_command():
    assert {f"--{name}" for name in TrainConfig.model_fields} >= set(api.OPERATOR_FLAGS)


def test_extra_args_rule_is_on_every_item_and_names_the_flag():
    stage = crd.openapi_schema()["properties"]["spec"]["properties"]["stages"]["items"]["properties"]
    extra = stage["extraArgs"]
    assert extra["maxItems"] == api.MAX_EXTRA_ARGS and extra["items"]["maxLength"] == api.EXTRA_ARG_MAX
    (rule,) = extra["items"]["x-kubernetes-validations"]
    assert all(f"'{flag}'" in rule["rule"] for flag in api.OPERATOR_FLAGS)
    assert "self.split('=')[0]" in rule["rule"] and "startsWith" in rule["rule"]  # `--flag=x`, abbreviations
    assert "the operator sets it" in rule["messageExpression"]


def test_new_typed_stage_fields_reach_the_command_line():
    t = _full_training(
        freezeBn=True, asppRates=[12, 24, 36], endLR=0.0001, seed=7, logSteps=5, numParallelWorkers=4
    )
    args = resources.train_args(t, 0)
    text = " ".join(args)
    assert "--aspp_rates 12 24 36" in text and "--freeze_bn" in args and "--end_lr 0.0001" in text
    assert "--seed 7" in text and "--log_steps 5" in text and "--num_parallel_workers 4" in text
    defaults = resources.train_args(_full_training(), 0)
    assert "--freeze_bn" not in defaults and "--aspp_rates" not in defaults
    assert " ".join(defaults).count("--seed 1 --log_steps 10 --num_parallel_workers 2") == 1


# -- the CRD's limits and defaults are the job's own ----------------------------------------------------
# Stage (or Evaluate) field -> TrainConfig field, where the names differ.
JOB_NAME = {"epochs": "train_epochs"}
EVALUATE_JOB_NAME = {
    "data_root": "eval_data_root",
    "data_list": "eval_data_lst",
    "scales": "eval_scales",
    "flip": "eval_flip",
}
API_ONLY = {"name", "init_from", "evaluate", "extra_args"}  # the operator's own, no job flag of that name
# The API refuses more than the job where the job would fail later at run time (and retry): the reason.
STRICTER_LOWER = {
    "loss_scale": "MindSpore's FixedLossScaleManager refuses a loss scale below 1",
    "seed": "mindspore.set_seed and the dataset seed refuse negative seeds",
}


def _bounds(
    metadata: list[Any], integer: bool
) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """(lower, upper) as (value, exclusive); integer bounds normalised to inclusive ones."""
    lower = upper = None
    for item in metadata:
        for attr, is_lower, exclusive in (
            ("ge", True, False),
            ("gt", True, True),
            ("le", False, False),
            ("lt", False, True),
        ):
            value = getattr(item, attr, None)
            if value is None:
                continue
            if integer and exclusive:
                value, exclusive = (value + 1 if is_lower else value - 1), False
            if is_lower:
                lower = (value, exclusive)
            else:
                upper = (value, exclusive)
    return lower, upper


def _schema_bounds(node: dict[str, Any]) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    integer = node.get("type") == "integer"

    def one(key: str, flag: str, step: int):
        if key not in node:
            return None
        value, exclusive = node[key], bool(node.get(flag))
        return (value + step, False) if integer and exclusive else (value, exclusive)

    return one("minimum", "exclusiveMinimum", 1), one("maximum", "exclusiveMaximum", -1)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``X | None`` -> X; ``list[Annotated[T, ...]]``/``tuple[...]`` -> (T, the items' metadata)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) in (list, tuple):
        item = typing.get_args(annotation)[0]
        if typing.get_origin(item) is typing.Annotated:
            base, *extra = typing.get_args(item)
            return base, [m for info in extra for m in getattr(info, "metadata", [info])]
        return item, []
    return annotation, []


def _pairs():
    """(API field path, CRD schema node, the job's field) for every Stage field the job also has."""
    stage_schema = crd.openapi_schema()["properties"]["spec"]["properties"]["stages"]["items"]["properties"]
    for name, field in api.Stage.model_fields.items():
        if name in API_ONLY:
            continue
        yield name, stage_schema[field.alias or name], TrainConfig.model_fields[JOB_NAME.get(name, name)]
    evaluate = stage_schema["evaluate"]["properties"]
    for name, field in api.Evaluate.model_fields.items():
        yield (
            f"evaluate.{name}",
            evaluate[field.alias or name],
            TrainConfig.model_fields[EVALUATE_JOB_NAME[name]],
        )


def test_every_stage_field_is_compared_with_the_job():
    compared = {path for path, _, _ in _pairs()}
    assert set(api.Stage.model_fields) - API_ONLY <= compared
    assert {"ignore_label", "save_steps", "aspp_rates", "end_lr", "seed", "evaluate.scales"} <= compared


def test_stage_limits_equal_the_jobs():
    """The CRD refuses exactly what the job would refuse (lower bounds equal, and the job's upper bounds
    too); the API may add upper bounds the job lacks (they keep sizes sane and integers inside int64)."""
    checked = 0
    for path, node, job in _pairs():
        item_node = node.get("items", node) if node.get("type") == "array" else node
        job_type, job_items = _unwrap(job.annotation)
        integer = item_node.get("type") == "integer"
        job_lower, job_upper = _bounds(job_items or job.metadata, integer)
        api_lower, api_upper = _schema_bounds(item_node)
        if path in STRICTER_LOWER:
            assert job_lower is None or api_lower[0] > job_lower[0], path
        else:
            assert api_lower == job_lower, f"{path}: CRD lower bound {api_lower}, job {job_lower}"
        if job_upper is not None:
            assert api_upper == job_upper, f"{path}: CRD upper bound {api_upper}, job {job_upper}"
        if typing.get_origin(_unwrap_optional(job.annotation)) is tuple:
            size = len(typing.get_args(_unwrap_optional(job.annotation)))
            assert node["minItems"] == node["maxItems"] == size, path
        choices = typing.get_args(job_type) if typing.get_origin(job_type) is typing.Literal else None
        if choices:
            assert tuple(item_node["enum"]) == choices, path
        checked += 1
    assert checked >= 20
    stage = crd.openapi_schema()["properties"]["spec"]["properties"]["stages"]["items"]["properties"]
    assert stage["ignoreLabel"]["maximum"] == 255  # the job's labels are 8-bit


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (
        args[0]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1
        else annotation
    )


def test_defaults_shared_by_stage_and_job_are_equal():
    shared = 0
    for path, node, job in _pairs():
        job_default = None if job.is_required() else job.get_default(call_default_factory=True)
        if job_default is None or "default" not in node:
            continue
        assert node["default"] == job_default or list(node["default"]) == list(job_default), path
        shared += 1
    assert shared >= 15
    assert api.Stage.model_fields["save_steps"].default == TrainConfig.model_fields["save_steps"].default


def test_the_job_parses_the_operators_command_into_the_stages_values():
    """End to end without a cluster: every Stage value reaches the job's TrainConfig unchanged."""
    from job.__main__ import make_parser
    from job.config import build

    stage = {
        "freezeBn": True, "asppRates": [12, 24, 36], "endLR": 0.0001, "seed": 7, "logSteps": 5,
        "numParallelWorkers": 4, "ignoreLabel": 0, "lrType": "poly", "saveSteps": 77, "baseLR": 0.08,
        "evaluate": {"dataList": "l.txt", "scales": [0.5, 1.0], "flip": True},
    }  # fmt: skip
    t = _full_training(**stage)
    args = make_parser().parse_args(["train", *resources.train_args(t, 0)])
    config = build(TrainConfig, {k: v for k, v in vars(args).items() if k not in ("command", "config")})
    s = t.spec.stages[0]
    for name in set(api.Stage.model_fields) - API_ONLY - {"data_file"}:  # data_file gains /data/
        value = getattr(s, name)
        expected = value.value if hasattr(value, "value") else value
        parsed = getattr(config, JOB_NAME.get(name, name))
        assert (list(parsed) if isinstance(parsed, tuple) else parsed) == expected, name
    assert config.data_file == "/data/a.mindrecord0" and config.eval_scales == [0.5, 1.0] and config.eval_flip


def _argparse_takes(spelling: str) -> str | None:
    """The operator flag the job's own parser sets for ``spelling`` (None: refused, ambiguous or other)."""
    from job.__main__ import make_parser

    before = ["train", "--data_file", "d", "--train_dir", "t"]
    baseline = vars(make_parser().parse_args(before))
    values = {"--aspp_rates": ["1", "2", "3"], "--freeze_bn": [], "--is_distributed": [], "--eval_flip": []}
    for flag in (f for f in api.OPERATOR_FLAGS if f.startswith(spelling)):
        try:
            parsed = vars(make_parser().parse_args([*before, spelling, *values.get(flag, ["7"])]))
        except SystemExit:
            return None
        if parsed.get(flag[2:]) != baseline.get(flag[2:]):
            return flag
    return None


def test_every_spelling_argparse_takes_for_an_operator_flag_is_refused(capsys):
    """argparse accepts unique prefixes (`--train_d /x` sets train_dir): each one the job's parser takes
    is in the CRD rule's table, and no other flag of the job is refused."""
    spellings = api.operator_flag_spellings()
    taken = {}
    for flag in api.OPERATOR_FLAGS:
        for end in range(3, len(flag) + 1):
            if (target := _argparse_takes(flag[:end])) is not None:
                taken[flag[:end]] = target
    capsys.readouterr()
    assert taken and all(spellings.get(spelling) == flag for spelling, flag in taken.items()), taken
    assert "--train_d" in taken and spellings["--train_dir"] == "--train_dir"
    others = {f"--{name}" for name in TrainConfig.model_fields} - set(api.OPERATOR_FLAGS)
    assert others and not others & set(spellings), "a flag the operator leaves to extraArgs is refused"
