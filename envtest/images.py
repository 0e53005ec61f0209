"""Build the project's images locally and import them into the real node's containerd.

No registry is reachable from these machines, so every image starts from a local base: a Python
3.11 Debian rootfs made with mmdebstrap and imported into podman (``localhost/py311:bookworm``).
``images/*.Dockerfile`` are built unchanged in meaning, the base chosen with their own
``PYTHON_IMAGE`` build arg. Each image is tagged with a hash of its inputs (the Dockerfile, the
files it copies, the base's id): an existing tag means the build is skipped. The node's containerd
gets them through an OCI archive (``podman save`` + ``ctr images import``); pods use them with
``imagePullPolicy: IfNotPresent`` or ``Never``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from envtest.binaries import cache_dir

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/py311:bookworm"
# python-is-python3: the Dockerfiles call `python`, as the official python images provide it.
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PAUSE_IMAGE = "localhost/pause:deeplab"
PAUSE_SOURCE = """package main

// The pod sandbox's process: holds the namespaces until the kubelet stops the pod.
import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tc := make(chan os.Signal, 1)
\tsignal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
\t<-c
}
"""


class ImageError(RuntimeError):
    """An image could not be built or imported; the message names the log or command."""


@dataclass(frozen=True)
class Image:
    """One of the project's images: its Dockerfile and the repository paths it copies."""

    name: str  # the image repository, e.g. localhost/deeplab-controller
    dockerfile: str
    inputs: tuple[str, ...]

    def tag(self, base_id: str) -> str:
        return f"{self.name}:{content_hash(self, base_id)}"


IMAGES = {
    "controller": Image(
        "localhost/deeplab-controller",
        "images/controller.Dockerfile",
        ("images/requirements-controller.lock", "pyproject.toml", "controller"),
    ),
    "worker-cpu": Image(
        "localhost/deeplab-worker-cpu",
        "images/worker-cpu.Dockerfile",
        ("images/requirements-worker.lock", "pyproject.toml", "job"),
    ),
}


def content_hash(image: Image, base_id: str) -> str:
    """Hash of the Dockerfile, every file it copies and the base image: equal hash, equal image."""
    digest = hashlib.sha256(base_id.encode())
    for rel in (image.dockerfile, *image.inputs):
        for path in _files(REPO / rel):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


# -- podman ------------------------------------------------------------------------------------------
def _run(cmd: list[str], log, **kwargs) -> subprocess.CompletedProcess:
    print(f"envtest: $ {' '.join(cmd)}", file=log, flush=True)
    result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kwargs)
    if result.returncode != 0:
        raise ImageError(f"{cmd[0]} {cmd[1]} failed with exit {result.returncode}; see {log.name}")
    return result


def image_id(ref: str) -> str | None:
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_base(log) -> str:
    """The Python 3.11 bookworm base, made once with mmdebstrap (about 20 s); returns its image id."""
    found = image_id(BASE_IMAGE)
    if found:
        return found
    with tempfile.TemporaryDirectory(prefix="py311-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        _run(["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs)], log)
        _run(["podman", "import", str(rootfs), BASE_IMAGE], log)
    return image_id(BASE_IMAGE)


def ensure_image(image: Image, log) -> str:
    """Build ``image`` unless its content-hash tag exists; returns the tag."""
    tag = image.tag(ensure_base(log))
    if image_id(tag):
        print(f"envtest: {tag} is up to date", file=log, flush=True)
        return tag
    started = time.monotonic()
    _run(
        [
            # runc: crun refuses this machine's hybrid cgroup layout.
            "podman", "build", "--runtime=runc", "--network=host",
            "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",  # TLS to the package registries goes through a local CA
            "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
            "-f", image.dockerfile, "-t", tag, ".",
        ],
        log,
        cwd=REPO,
    )  # fmt: skip
    print(f"envtest: built {tag} in {time.monotonic() - started:.0f}s", file=log, flush=True)
    _prune_podman(image, tag, log)
    return tag


def stale_tags(refs: list[str], image: Image, keep: str) -> list[str]:
    """Earlier content-hash tags of ``image``: each worker build is 3.4 GB, so only the newest is kept."""
    return [
        ref for ref in refs if ref.startswith(f"{image.name}:") and ref not in (keep, f"{image.name}:dev")
    ]


def _prune_podman(image: Image, keep: str, log) -> None:
    listed = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", image.name],
        capture_output=True,
        text=True,
    )
    for ref in stale_tags(listed.stdout.split(), image, keep):
        subprocess.run(["podman", "rmi", ref], stdout=log, stderr=subprocess.STDOUT)


def ensure_pause(log) -> str:
    """The sandbox image containerd's config names: a static Go binary that waits for SIGTERM."""
    if image_id(PAUSE_IMAGE):
        return PAUSE_IMAGE
    with tempfile.TemporaryDirectory(prefix="pause-") as tmp:
        src = Path(tmp)
        (src / "main.go").write_text(PAUSE_SOURCE)
        (src / "go.mod").write_text("module pause\n\ngo 1.21\n")
        env = {**os.environ, "CGO_ENABLED": "0"}
        _run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", "pause", "."], log, cwd=src, env=env)
        (src / "Containerfile").write_text(
            'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
        )
        _run(["podman", "build", "--network=none", "-t", PAUSE_IMAGE, "."], log, cwd=src)
    return PAUSE_IMAGE


# -- containerd --------------------------------------------------------------------------------------
def imported(address: Path, ref: str) -> bool:
    result = subprocess.run(
        ["ctr", "--address", str(address), "-n", "k8s.io", "images", "ls", "-q", f"name=={_full(ref)}"],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and bool(result.stdout.strip())


def _full(ref: str) -> str:
    """containerd keeps the fully qualified name; podman's localhost/ names already are."""
    return ref if "/" in ref.split(":")[0] else f"docker.io/library/{ref}"


def import_image(address: Path, ref: str, log) -> None:
    """Move ``ref`` from podman to the node's containerd (k8s.io namespace), unless already there."""
    if imported(address, ref):
        return
    archive_dir = cache_dir() / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    archive = archive_dir / (ref.replace("/", "_").replace(":", "_") + ".tar")
    try:
        _run(["podman", "save", "--format", "oci-archive", "-o", str(archive), ref], log)
        _run(["ctr", "--address", str(address), "-n", "k8s.io", "images", "import", str(archive)], log)
    finally:
        archive.unlink(missing_ok=True)
    if not imported(address, ref):
        raise ImageError(f"{ref} not in containerd after import; see {log.name}")


def import_all(address: Path, tags: dict[str, str], log) -> None:
    """Import every built image, and alias the project's as ``:dev`` (what overlays/local-node deploys)."""
    for short, ref in tags.items():
        import_image(address, ref, log)
        if short in IMAGES:
            ctr = ["ctr", "--address", str(address), "-n", "k8s.io", "images"]
            listed = subprocess.run([*ctr, "ls", "-q"], capture_output=True, text=True).stdout.split()
            for stale in stale_tags(listed, IMAGES[short], ref):  # containerd collects their layers
                subprocess.run([*ctr, "rm", stale], stdout=log, stderr=subprocess.STDOUT)
            alias = f"{IMAGES[short].name}:dev"
            _run(
                ["ctr", "--address", str(address), "-n", "k8s.io", "images", "tag", "--force", ref, alias],
                log,
            )


def build_all(log=sys.stderr, names: tuple[str, ...] = tuple(IMAGES)) -> dict[str, str]:
    """The sandbox image and the project's images ``names``, by short name (``pause``, ``controller``...)."""
    tags = {"pause": ensure_pause(log)}
    for short in names:
        tags[short] = ensure_image(IMAGES[short], log)
    return tags
