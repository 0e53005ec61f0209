"""Worker pod manifests: what the job's contract and Kubernetes semantics require."""

from __future__ import annotations

from pathlib import Path

import yaml
from sim import pod_name, training_obj

from controller import plan, resources
from controller.api import DeepLabTrainingSpec, Training
from job import recipe
from job.recipe import VOC_STAGES

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def pod(obj=None, index=0, attempt=1, name=None):
    t = Training.from_obj(obj or training_obj())
    ctx = resources.PodContext(sched_ip="10.96.0.10")
    return resources.desired_pods(t, index, attempt, ctx)[name or pod_name("s16-vocaug", 1, 0)]


def flags(command: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    args = command[command.index("train") + 1 :]
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
            out.setdefault(arg, []).append(value)
    return out


def test_worker_pod_shape():
    p = pod()
    spec, container = p["spec"], p["spec"]["containers"][0]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert "hostname" not in spec and "subdomain" not in spec, "no DNS: MindSpore gets IPs"
    assert container["name"] == "ascend", "the container MindX's tooling looks for"
    assert p["metadata"]["annotations"] == {"hccl/rankIndex": "0"}
    assert p["metadata"]["ownerReferences"][0]["controller"] is True
    assert p["metadata"]["labels"] == {
        "deeplab.io/training": "voc",
        "app.kubernetes.io/managed-by": "deeplab-operator",
        "deeplab.io/stage": "s16-vocaug",
        "deeplab.io/attempt": "1",
        "deeplab.io/role": "worker",
        "deeplab.io/rank": "0",
        "framework": "mindspore",
        "job-name": "voc",
        "replica-type": "worker",
        "replica-index": "0",
        "ring-controller.atlas": "ascend-910",
        "deeplab.io/server": "0",
    }
    assert container["resources"] == {
        "limits": {"huawei.com/Ascend910": "1"},
        "requests": {"huawei.com/Ascend910": "1"},
    }
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["command"][:6] == ["python", "-m", "job", "launch", "--", "train"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"] and mounts["/pretrained"]["readOnly"]
    assert not mounts["/checkpoints"].get("readOnly")
    assert mounts["/user/serverid/devindex/config"]["readOnly"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    assert volumes["rank-table"]["configMap"]["name"] == "rings-config-voc"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["DEEPLAB_LAUNCHER"]["value"] == "rankTable" and env["DEEPLAB_STAGE"]["value"] == "s16-vocaug"


def test_train_flags_follow_the_stage():
    obj = training_obj()
    obj["spec"]["stages"][0].update(
        baseLR=0.08, batchSize=32, lossScale=3072, extraArgs=["--max_steps", "3"],
        evaluate={"dataList": "voc/val.txt", "scales": [0.5, 1.0], "flip": True},
    )  # fmt: skip
    f = flags(pod(obj)["spec"]["containers"][0]["command"])
    assert f["--data_file"] == ["/data/vocaug/train.mindrecord0"]
    assert f["--train_dir"] == ["/checkpoints/voc/s16-vocaug"]
    assert f["--base_lr"] == ["0.08"] and f["--batch_size"] == ["32"] and f["--loss_scale"] == ["3072"]
    assert f["--ckpt_pre_trained"] == ["/pretrained/resnet101.ckpt"]
    assert f["--is_distributed"] == [""] and f["--device_target"] == ["Ascend"]
    assert f["--result_file"] == ["/dev/termination-log"]
    assert f["--eval_scales"] == ["0.5", "1"] and f["--eval_flip"] == [""]
    assert f["--eval_data_lst"] == ["/data/voc/val.txt"] and f["--max_steps"] == ["3"]
    assert f["--seed"] == ["1"] and f["--log_steps"] == ["10"]  # typed fields, the job's defaults


def test_init_from_names_an_earlier_stage():
    obj = training_obj()
    obj["spec"]["stages"][2]["initFrom"] = "s16-vocaug"
    container = pod(obj, 2, 1, pod_name("s8-voctrain", 1, 0))["spec"]["containers"][0]
    init = [m for m in container["volumeMounts"] if m["mountPath"] == "/init"]
    assert init == [
        {"name": "checkpoints", "mountPath": "/init", "subPath": "voc/s16-vocaug", "readOnly": True}
    ]
    assert not any(
        v["name"] == "pretrained" for v in pod(obj, 2, 1, pod_name("s8-voctrain", 1, 0))["spec"]["volumes"]
    )


def test_cpu_workers_and_template_patch():
    obj = training_obj(
        npuResource="",
        workers=1,
        template={
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "resources": {"requests": {"cpu": 4, "memory": "8Gi"}},
            "env": [{"name": "ONEDNN_MAX_CPU_ISA", "value": "AVX2"}],
            "annotations": {"team": "vision"},
        },
    )
    p = pod(obj)
    container = p["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"}}
    assert p["spec"]["nodeSelector"] == {"pool": "cpu"} and p["spec"]["tolerations"][0]["key"] == "dedicated"
    assert container["env"][-1] == {"name": "ONEDNN_MAX_CPU_ISA", "value": "AVX2"}
    assert p["metadata"]["annotations"] == {"team": "vision", "hccl/rankIndex": "0"}
    assert "ring-controller.atlas" not in p["metadata"]["labels"], "CPU pods are not Atlas pods"
    f = flags(container["command"])
    assert f["--device_target"] == ["CPU"] and "--is_distributed" not in f


def test_single_worker_dynamic_cluster_still_joins_its_scheduler():
    obj = training_obj(npuResource="", workers=1, launcher="dynamicCluster")
    assert "--is_distributed" in flags(pod(obj)["spec"]["containers"][0]["command"])


def test_voc_sample_agrees_with_the_recipe():
    sample = yaml.safe_load((SAMPLES / "voc-three-stage.yaml").read_text())
    spec = DeepLabTrainingSpec.model_validate(sample["spec"])
    assert spec.workers == 8
    got = [
        {"name": s.name, "model": s.model.value, "epochs": s.epochs, "batch_size": s.batch_size,
         "base_lr": s.base_lr, "loss_scale": s.loss_scale}
        for s in spec.stages
    ]  # fmt: skip
    assert got == [dict(s) for s in VOC_STAGES]


def test_voc_sample_builds_the_recipes_network():
    """Through the operator's own flags and the job's parser: every stage of the sample trains the
    network job/recipe.py states (the model zoo's rates at both strides, its dropout and alignment)."""
    from job.__main__ import make_parser
    from job.config import TrainConfig, build

    sample = yaml.safe_load((SAMPLES / "voc-three-stage.yaml").read_text())
    sample["metadata"].update(namespace="ns", uid="u1")
    t = Training.from_obj(sample)
    assert len(t.spec.stages) == len(VOC_STAGES)
    for index, stage in enumerate(VOC_STAGES):
        args = make_parser().parse_args(["train", *resources.train_args(t, index)])
        config = build(TrainConfig, {k: v for k, v in vars(args).items() if k not in ("command", "config")})
        network = (config.model, config.aspp_rates, config.aspp_dropout, config.align_corners)
        expected = (stage["model"], recipe.ASPP_RATES, recipe.ASPP_DROPOUT, recipe.ALIGN_CORNERS)
        assert network == expected, stage["name"]
    assert recipe.ASPP_RATES == (6, 12, 18) and recipe.ASPP_DROPOUT == 0.7 and recipe.ALIGN_CORNERS is True


def test_samples_parse():
    docs = [doc for path in SAMPLES.glob("*.yaml") for doc in yaml.safe_load_all(path.read_text())]
    trainings = [doc for doc in docs if doc and doc["kind"] == "DeepLabTraining"]
    assert len(trainings) >= 2, "the CPU smoke and VOC samples"
    for doc in trainings:
        DeepLabTrainingSpec.model_validate(doc["spec"])


def test_the_permanent_exit_code_is_the_jobs():
    assert plan.EXIT_BAD_INPUT == recipe.EXIT_BAD_INPUT
