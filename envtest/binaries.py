"""Build (once) or find the control-plane binaries for a pinned Kubernetes release.

Nothing in the package registries ships kube-apiserver, so it is compiled from the
upstream ``k8s.io/kubernetes`` module with the local Go toolchain. The build cache is
keyed by release and lives outside the repository, so a second run costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
# Staging modules are published as v0.<minor>.<patch> of the same release.
STAGING_VERSION = "v0" + KUBERNETES_VERSION[2:]

# binary name -> Go package that builds it (etcd comes from the release's own etcd dependency)
PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "go.etcd.io/etcd/server/v3",
}
# The real node (envtest/node.py): built on demand from the same module set, so versions match the plane.
NODE_PACKAGES = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}
ALL_PACKAGES = {**PACKAGES, **NODE_PACKAGES}
# Cluster DNS for the node: CoreDNS from the Go module proxy (its own module, not the release's set), built
# from envtest/coredns/ (a main linking only the node's plugins: ~7 min cold instead of 21 for all of them).
COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_VERSION = "v1.14.7"  # envtest/coredns/go.mod requires the same (tests/unit/test_coredns_build.py)
COREDNS_SOURCE = Path(__file__).parent / "coredns"
COREDNS_STAMP = ".coredns.source"  # next to the binary: the source hash it was built from

HOW_TO_GET = (
    "build them with 'make cluster' (needs the Go toolchain and the Go module proxy), "
    "or point KUBEBUILDER_ASSETS at a directory holding etcd, kube-apiserver and kubectl "
    "(e.g. from controller-runtime's setup-envtest)"
)


class BinariesUnavailable(RuntimeError):
    """The control-plane binaries can be neither found nor built."""


def cache_root() -> Path:
    """Where every built binary lives, outside the repository (a clean clone reuses it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deeplab-operator"


def cache_dir() -> Path:
    return cache_root() / f"kubernetes-{KUBERNETES_VERSION}"


def ensure_binaries(build: bool = True, log=sys.stderr, names: tuple[str, ...] = tuple(PACKAGES)) -> Path:
    """Return a directory with ``names`` (default: etcd, kube-apiserver, kube-controller-manager, kubectl).

    ``KUBEBUILDER_ASSETS`` wins when set (the envtest convention); otherwise the
    version-keyed cache is used and filled by a Go build when ``build`` is true.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        missing = [b for b in ("etcd", "kube-apiserver") if not (Path(assets) / b).is_file()]
        if missing:
            raise BinariesUnavailable(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}")
        return Path(assets)
    bin_dir = cache_dir() / "bin"
    missing = [name for name in names if not (bin_dir / name).is_file()]
    if not missing:
        return bin_dir
    if not build:
        raise BinariesUnavailable(f"no control-plane binaries in {bin_dir}: {HOW_TO_GET}")
    if shutil.which("go") is None:
        raise BinariesUnavailable(f"the Go toolchain is not on PATH: {HOW_TO_GET}")
    _build(missing, bin_dir, log)
    return bin_dir


def _build(names: list[str], bin_dir: Path, log) -> None:
    module_dir = cache_dir() / "module"
    _write_module(module_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    for name in names:
        print(f"envtest: building {name} {KUBERNETES_VERSION} (first time only, takes minutes)", file=log)
        tmp = bin_dir / f".{name}.partial"
        cmd = ["go", "build", "-trimpath", "-ldflags", _ldflags(), "-o", str(tmp), ALL_PACKAGES[name]]
        result = subprocess.run(cmd, cwd=module_dir, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise BinariesUnavailable(f"go build {ALL_PACKAGES[name]} failed:\n{result.stderr[-4000:]}")
        tmp.replace(bin_dir / name)  # atomic: a half-built binary is never taken as cached


def _ldflags() -> str:
    major, minor = re.match(r"v(\d+)\.(\d+)", KUBERNETES_VERSION).groups()
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _write_module(module_dir: Path) -> None:
    """A go.mod that requires the release and maps each staging module to its tag."""
    module_dir.mkdir(parents=True, exist_ok=True)
    gomod = _release_gomod(module_dir)
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", gomod, flags=re.M)
    go_line = re.search(r"^go (\S+)", gomod, flags=re.M).group(1)
    lines = [
        "module envtest.local/controlplane",
        "",
        f"go {go_line}",
        "",
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}",
        "",
        "replace (",
        *[f"\t{m} => {m} {STAGING_VERSION}" for m in staging],
        ")",
        "",
    ]
    (module_dir / "go.mod").write_text("\n".join(lines))
    # Blank imports keep the binaries' packages (and etcd's) in the module graph for `go mod tidy`.
    imports = "\n".join(f'\t_ "{pkg}"' for pkg in ALL_PACKAGES.values())
    (module_dir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    subprocess.run(["go", "mod", "tidy"], cwd=module_dir, check=True, capture_output=True, text=True)


def release_module_versions() -> tuple[str, dict[str, str]]:
    """The release module's ``go`` line and every module of its build list at the version the plane is
    built with (replacements applied).

    Other Go tools built beside the plane (envtest/sched.py) pin these same versions, so they compile
    the very packages the plane did and share Go's build cache instead of compiling a second Kubernetes.
    """
    module_dir = cache_dir() / "module"
    if not (module_dir / "go.sum").is_file():
        _write_module(module_dir)
    version = "{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}"
    template = f"{{{{if not .Main}}}}{{{{.Path}}}} {version}{{{{end}}}}"
    out = subprocess.run(
        ["go", "list", "-m", "-f", template, "all"],
        cwd=module_dir,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise BinariesUnavailable(f"go list -m all in {module_dir} failed:\n{out.stderr[-4000:]}")
    go_line = re.search(r"^go (\S+)", (module_dir / "go.mod").read_text(), flags=re.M).group(1)
    return go_line, dict(line.split() for line in out.stdout.splitlines() if line.strip())


def _release_gomod(module_dir: Path) -> str:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        cwd=module_dir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = re.search(r'"GoMod":\s*"([^"]+)"', out).group(1)
    return Path(path).read_text()


def ensure_coredns(build: bool = True, log=sys.stderr) -> Path:
    """CoreDNS for the node's cluster DNS, built into the binaries' directory (minutes, cold).

    The binary keeps the name the node runs (``bin/coredns``); a stamp beside it holds the hash of
    envtest/coredns/, so a binary built from other sources (an older full build, a plugin added since)
    counts as missing and is rebuilt.
    """
    bin_dir = cache_dir() / "bin"
    binary, stamp = bin_dir / "coredns", bin_dir / COREDNS_STAMP
    wanted = coredns_source_hash()
    if binary.is_file() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return binary
    if not build or shutil.which("go") is None:
        raise BinariesUnavailable(
            f"no {binary} built from {COREDNS_SOURCE}: "
            "build it with 'make node-dns' (needs Go and the module proxy)"
        )
    print(f"envtest: building coredns {COREDNS_VERSION} (first time only, takes minutes)", file=log)
    bin_dir.mkdir(parents=True, exist_ok=True)
    tmp = bin_dir / ".coredns.partial"
    # -mod=readonly: the committed go.sum is authoritative; no VCS stamp (the repository is not CoreDNS's).
    env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off"}
    flags = ["-mod=readonly", "-buildvcs=false", "-trimpath", "-ldflags=-s -w"]
    cmd = ["go", "build", *flags, "-o", str(tmp), "."]
    result = subprocess.run(cmd, cwd=COREDNS_SOURCE, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BinariesUnavailable(f"go build {COREDNS_SOURCE} failed:\n{result.stderr[-4000:]}")
    tmp.replace(binary)  # atomic, like the release's binaries; the stamp follows, so a crash means a rebuild
    stamp.write_text(wanted + "\n")
    return binary


def coredns_source_hash(source: Path = COREDNS_SOURCE) -> str:
    """sha256 over envtest/coredns/'s Go sources, go.mod and go.sum: what the cached binary was built from.

    Only those: a stray binary from a manual ``go build`` there must not force a rebuild.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in source.iterdir() if p.suffix in (".go", ".mod", ".sum")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
