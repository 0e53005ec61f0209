"""`python -m envtest demo` (what `make demo` runs as root on a Debian-based machine): the whole system.

The local node (envtest/node.py: kubelet, containerd, kube-scheduler, kube-proxy, CoreDNS), the images
built from images/ and imported into it, the operator installed from its image as an admin does
(`kubectl apply -k overlays/local-node`), the sample data Job, then the two-stage CPU training of
manifests/samples/cpu-smoke.yaml applied with kubectl and followed as `kubectl get dlt -w` shows it. It ends
with the training's row, where its checkpoints are, and colour predictions of the final checkpoint.

A node already started by `make node` is used and left running; otherwise the demo starts one in `.node`
and stops it at the end (`--keep-node` leaves it up for `kubectl`). Where no node can run here (not root,
binaries or images that cannot be built), one line says why and the one-device demo
(`python -m job demo`) runs instead, so `make demo` always shows the job.

Exit codes: 0 the training succeeded; 1 it failed or timed out (its status and events are printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from envtest import images
from envtest.binaries import BinariesUnavailable
from envtest.node import new_node, node_components, socket
from envtest.plane import ControlPlane, ControlPlaneError, alive

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "manifests" / "samples"
OVERLAY = REPO / "overlays" / "local-node"
SMOKE_PREFIX = Path("/var/lib/deeplab-smoke")  # the hostPath prefix overlays/local-node allows
TRAINING = "deeplab-smoke"  # the sample's names
DATA_JOB = "deeplab-smoke-data"
NAMESPACE = "deeplab-demo"  # the demo's own: what it replaces there is only ever its previous run
TRAINING_TIMEOUT = 1800  # seconds; the two stages take about 4 min on 2 idle cores


class DemoFailed(RuntimeError):
    """The training did not succeed; the message holds its status and the namespace's last events."""


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def localise(obj: dict, image: str, base: Path) -> dict:
    """A sample's image and hostPath directories -> the locally built image and directories under ``base``.

    The samples name ``deeplab-worker-cpu:0.1.0`` (a registry image) and /var/lib/deeplab-smoke; the
    local node has the image under its content-hash tag and never pulls."""
    obj = json.loads(json.dumps(obj).replace(str(SMOKE_PREFIX), str(base)))
    if obj["kind"] == "Job":
        obj["spec"]["template"]["spec"]["containers"][0].update(image=image, imagePullPolicy="Never")
    else:
        obj["spec"].update(image=image, imagePullPolicy="Never")
    return obj


def sample(name: str, image: str, base: Path) -> dict:
    return localise(yaml.safe_load((SAMPLES / name).read_text()), image, base)


class Kubectl:
    """The release's kubectl against the node's kubeconfig."""

    def __init__(self, plane: ControlPlane, namespace: str | None = None) -> None:
        self.base = [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig)]
        self.base += ["--namespace", namespace] if namespace else []

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        """Run; return stdout, raise DemoFailed with stderr when kubectl fails."""
        done = subprocess.run(
            [*self.base, *args], input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise DemoFailed(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def get_json(self, *args: str) -> dict:
        return json.loads(self("get", *args, "-o", "json"))

    def watch(self, *args: str) -> subprocess.Popen:
        """`kubectl get -w`: its rows go straight to our stdout as the object changes."""
        command = [*self.base, "get", *args, "-w"]
        return subprocess.Popen(command, stdout=sys.stdout, stderr=subprocess.DEVNULL)


# -- steps ------------------------------------------------------------------------------------------------
@contextmanager
def local_node(workdir: Path, keep: bool) -> Iterator[ControlPlane]:
    """A node `make node` runs from ``workdir``, left running; else a new one, stopped unless ``keep``."""
    running = ControlPlane.from_state(workdir, node_components())
    if running is not None:
        if not all(alive(pid) for pid in running.pids.values()):
            raise ControlPlaneError(f"the node recorded in {workdir} is not running; stop it: make node-down")
        say(f"using the node already running from {workdir} ({running.server})")
        yield running
        return
    started = time.monotonic()
    plane = new_node(workdir)
    plane.start(timeout=180)
    say(f"node Ready in {time.monotonic() - started:.0f}s: {plane.server} (logs in {workdir})")
    try:
        yield plane
    finally:
        if keep:
            say(f"the node keeps running: export KUBECONFIG={plane.kubeconfig}; stop it with make node-down")
        else:
            plane.stop()
            say("node stopped")


def load_images(plane: ControlPlane, log_path: Path) -> str:
    """Build (or find by content hash) the controller and CPU worker images, import them; the worker's tag."""
    started = time.monotonic()
    with open(log_path, "a") as log:
        tags = images.build_all(log, ("controller", "worker-cpu"))
        images.import_all(socket(plane), tags, log)
    say(f"images ready in {time.monotonic() - started:.0f}s: {sorted(tags.values())} (log {log_path})")
    return tags["worker-cpu"]


def install_operator(kubectl: Kubectl) -> None:
    started = time.monotonic()
    kubectl("apply", "-k", str(OVERLAY))
    kubectl(
        "wait", "-n", "deeplab-system", "--for=condition=Available", "deployment/deeplab-operator",
        "--timeout=300s", timeout=320,
    )  # fmt: skip
    overlay = OVERLAY.relative_to(REPO)
    say(f"operator Available in {time.monotonic() - started:.0f}s (kubectl apply -k {overlay})")


def prepare_data(kubectl: Kubectl, image: str, base: Path) -> None:
    """The sample data Job, as a user runs it; a previous demo's Job, training and files go first."""
    started = time.monotonic()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
    kubectl("delete", "dlt", TRAINING, "--ignore-not-found", "--timeout=120s", timeout=150)
    kubectl("delete", "job", DATA_JOB, "--ignore-not-found", "--timeout=120s", timeout=150)
    shutil.rmtree(base, ignore_errors=True)
    kubectl("apply", "-f", "-", stdin=json.dumps(sample("cpu-smoke-data.yaml", image, base)))
    try:
        kubectl("wait", "--for=condition=Complete", f"job/{DATA_JOB}", "--timeout=600s", timeout=620)
    except DemoFailed as error:
        logs = subprocess.run([*kubectl.base, "logs", f"job/{DATA_JOB}"], capture_output=True, text=True)
        raise DemoFailed(f"{error}\n{logs.stdout[-3000:]}") from None
    say(f"data ready in {time.monotonic() - started:.0f}s: {base / 'data'} (Job {DATA_JOB})")


def train(kubectl: Kubectl, image: str, base: Path, timeout: float = TRAINING_TIMEOUT) -> dict:
    """Apply the two-stage training, show its rows as they change, return its final status."""
    started = time.monotonic()
    kubectl("apply", "-f", "-", stdin=json.dumps(sample("cpu-smoke.yaml", image, base)))
    say(f"kubectl apply -n {NAMESPACE} -f manifests/samples/cpu-smoke.yaml; kubectl get dlt {TRAINING} -w:")
    watcher = kubectl.watch("dlt", TRAINING)
    try:
        status: dict = {}
        while time.monotonic() - started < timeout:
            status = kubectl.get_json("dlt", TRAINING).get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(3)
    finally:
        time.sleep(1)  # the watch prints the last change
        watcher.terminate()
        watcher.wait()
    if status.get("phase") != "Succeeded":
        events = kubectl("get", "events", "--sort-by=.lastTimestamp")
        why = f"{status.get('phase', 'not finished')} after {time.monotonic() - started:.0f}s"
        raise DemoFailed(f"training {TRAINING}: {why}: {status.get('message')}\n{events[-3000:]}")
    say(f"training Succeeded in {time.monotonic() - started:.0f}s")
    return status


def host_path(pod_path: str, base: Path) -> Path:
    """A checkpoint path as the pods see it (/checkpoints/...) -> where it is on this machine."""
    return base / pod_path.lstrip("/")


def predict(checkpoint: Path, base: Path, output: Path) -> list[Path]:
    """Colour predictions of the validation images by the final checkpoint, with `python -m job predict`."""
    val_list = (base / "data" / "smoke_val_lst.txt").read_text().split("\n")
    inputs = [str(base / "data" / line.split()[0]) for line in val_list if line.strip()]
    spec = yaml.safe_load((SAMPLES / "cpu-smoke.yaml").read_text())["spec"]["stages"][-1]
    command = [
        sys.executable, "-m", "job", "predict", "--model", spec["model"],
        "--num_classes", str(spec.get("numClasses", 21)), "--crop_size", str(spec["cropSize"]),
        "--device_target", "CPU", "--ckpt_path", str(checkpoint),
        "--output", str(output), "--input", *inputs,
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return sorted(output.glob("*_mask.png"))


def run(plane: ControlPlane, base: Path, output: Path) -> dict:
    """Everything after the node: images, operator, data, training, predictions. Returns the status."""
    output.mkdir(parents=True, exist_ok=True)
    image = load_images(plane, output / "images.log")
    install_operator(Kubectl(plane))
    kubectl = Kubectl(plane, NAMESPACE)
    prepare_data(kubectl, image, base)
    status = train(kubectl, image, base)
    print(kubectl("get", "dlt", TRAINING), end="", flush=True)
    for stage in status["stages"]:
        say(f"stage {stage['name']}: checkpoint {host_path(stage['checkpoint'], base)}")
    pngs = predict(host_path(status["stages"][-1]["checkpoint"], base), base, output / "predictions")
    say(f"{len(pngs)} colour masks (*_mask.png) and overlays in {output / 'predictions'}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envtest demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".node"), help="the node's state directory")
    parser.add_argument("--keep-node", action="store_true", help="leave a node the demo started running")
    parser.add_argument("--base", type=Path, default=SMOKE_PREFIX / "demo", help="data, checkpoints")
    parser.add_argument("--output", type=Path, default=Path("demo-output/cluster"), help="logs, predictions")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        with local_node(args.dir.resolve(), args.keep_node) as plane:
            run(plane, args.base.resolve(), args.output.resolve())
    except (BinariesUnavailable, ControlPlaneError, images.ImageError) as error:
        first = str(error).splitlines()[0]
        say(f"no local node here ({first}); running the one-device demo instead: python -m job demo")
        return subprocess.run([sys.executable, "-m", "job", "demo"]).returncode
    except DemoFailed as error:
        say(f"failed: {error}")
        return 1
    say(f"done in {time.monotonic() - started:.0f}s")
    return 0
