"""Start and stop a Kubernetes plane built from a list of parts, on loopback.

The default parts are etcd, kube-apiserver and a slim kube-controller-manager; there is no
kubelet and tests play kubelet by patching pod status. The controller manager runs only the
controllers a test cluster needs: service accounts (pods are refused without the namespace's
``default`` ServiceAccount) and the garbage collector (owner references only cascade with it).

Each part is a ``Component``: its arguments are computed from the plane's shared facts (ports,
certificates, addresses), and the plane waits for its readiness before starting the next one.
A real node (envtest/node.py) is the same plane with more parts. As in controller-runtime's
``controlplane.ControlPlane``, a failed start stops the parts already started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from envtest import audit, pki

STATE_FILE = "state.json"
CONTROLLERS = "serviceaccount,serviceaccount-token,garbagecollector,namespace"


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message names the log to read."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


Hook = Callable[["ControlPlane"], None]


def _nothing(plane: ControlPlane) -> None:
    """A hook that has nothing to do."""


@dataclass(frozen=True)
class Component:
    """One process of the plane.

    ``args`` derives the command line from the plane's shared facts; ``ready`` blocks until the
    process serves (or raises ``ControlPlaneError``). ``setup`` prepares files or devices before the
    start, ``before_stop`` runs while every later part is already stopped and every earlier one
    still runs (a kubelet drains its pods while containerd and the API server are up), and
    ``cleanup`` undoes ``setup`` and whatever the process left behind (mounts, links). ``binary`` is
    a path or a name on PATH for parts that come from OS packages; by default the plane's bin_dir.
    """

    name: str
    args: Callable[[ControlPlane], list[str]] | None  # None: a part without a process (network setup)
    ready: Callable[[ControlPlane, float], None] = lambda plane, timeout: None
    binary: str | None = None
    setup: Hook = _nothing
    before_stop: Hook = _nothing
    cleanup: Hook = _nothing


def api_ready(path: str) -> Callable[[ControlPlane, float], None]:
    """Readiness as an API path that answers (e.g. /readyz, or an object a controller creates)."""

    def check(plane: ControlPlane, timeout: float) -> None:
        plane.wait_until(lambda: _answers(plane, path), timeout, f"{path} on the API server")

    return check


def _answers(plane: ControlPlane, path: str) -> bool:
    try:
        plane.get(path)
        return True
    except (OSError, urllib.error.URLError):
        return False


# -- the default parts ---------------------------------------------------------------------------------
def _etcd_args(plane: ControlPlane) -> list[str]:
    peer_url = f"http://127.0.0.1:{plane.port('etcd-peer')}"
    return [
        "--name=envtest",
        f"--data-dir={plane.workdir / 'etcd'}",
        f"--listen-client-urls={plane.etcd_url}",
        f"--advertise-client-urls={plane.etcd_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=envtest={peer_url}",
        "--unsafe-no-fsync",  # test data: durability buys nothing, fsync costs seconds
        "--log-level=warn",
    ]


def _apiserver_args(plane: ControlPlane) -> list[str]:
    paths = plane.pki
    return [
        f"--etcd-servers={plane.etcd_url}",
        f"--bind-address={plane.address}",
        f"--advertise-address={plane.address}",
        f"--secure-port={plane.port('kube-apiserver')}",
        f"--tls-cert-file={paths['serving_cert']}",
        f"--tls-private-key-file={paths['serving_key']}",
        f"--client-ca-file={paths['ca_cert']}",
        f"--service-account-key-file={paths['sa_pub']}",
        f"--service-account-signing-key-file={paths['sa_key']}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={plane.service_cidr}",
        "--allow-privileged=true",
        f"--cert-dir={plane.workdir / 'pki'}",
        # kubectl logs/exec reach a real kubelet with the admin's client certificate.
        f"--kubelet-client-certificate={paths['admin_cert']}",
        f"--kubelet-client-key={paths['admin_key']}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--v=1",
        # tests count writes in the server's own record (envtest/audit.py), not a component's word
        *audit.apiserver_args(plane.workdir),
    ]


def _controller_manager_args(plane: ControlPlane) -> list[str]:
    return [
        f"--kubeconfig={plane.kubeconfig}",
        f"--authentication-kubeconfig={plane.kubeconfig}",
        f"--authorization-kubeconfig={plane.kubeconfig}",
        f"--controllers={plane.controllers}",
        f"--service-account-private-key-file={plane.pki['sa_key']}",
        f"--root-ca-file={plane.pki['ca_cert']}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={plane.port('kube-controller-manager')}",
        "--v=1",
    ]


ETCD = Component("etcd", _etcd_args)
APISERVER = Component("kube-apiserver", _apiserver_args, api_ready("/readyz"))
CONTROLLER_MANAGER = Component(
    "kube-controller-manager",
    _controller_manager_args,
    api_ready("/api/v1/namespaces/default/serviceaccounts/default"),
)


def plane_components(controller_manager: bool = True) -> list[Component]:
    """The test control plane: etcd, kube-apiserver and (by default) the slim controller manager."""
    return [ETCD, APISERVER, *([CONTROLLER_MANAGER] if controller_manager else [])]


@dataclass
class ControlPlane:
    workdir: Path
    bin_dir: Path
    controller_manager: bool = True
    pids: dict[str, int] = field(default_factory=dict)
    server: str = ""
    components: list[Component] | None = None
    address: str = "127.0.0.1"
    service_cidr: str = "10.0.0.0/24"
    controllers: str = CONTROLLERS
    ports: dict[str, int] = field(default_factory=dict)
    kind: str = "plane"  # recorded in the state file so `down` rebuilds the same parts

    def __post_init__(self) -> None:
        if self.components is None:
            self.components = plane_components(self.controller_manager)
        self.binaries: dict[str, str] = {}
        if not self.server:
            self.server = f"https://{self.address}:{self.port('kube-apiserver')}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        """Every write the API server carried out or refused (envtest/audit.py)."""
        return self.workdir / "audit.log"

    @property
    def kubectl(self) -> Path:
        """The release's own kubectl when present (client and server versions match)."""
        own = self.bin_dir / "kubectl"
        return own if own.is_file() else Path(shutil.which("kubectl") or "kubectl")

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.port('etcd')}"

    @property
    def pki(self) -> dict[str, Path]:
        return pki.paths_in(self.workdir / "pki")

    def port(self, key: str) -> int:
        """A free loopback port per key, chosen once, so every part's arguments agree on it."""
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    # -- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            pki.generate(self.workdir / "pki", extra_ips=(self.address,))
            self._write_kubeconfig(self.pki)
            for component in self.components:
                self._start_component(component, timeout)
        except BaseException:
            self.stop()
            raise
        self._save_state()

    def _start_component(self, component: Component, timeout: float) -> None:
        self.binaries[component.name] = self._binary(component)
        component.setup(self)
        if component.args is not None:
            self._spawn(component.name, component.args(self))
        component.ready(self, timeout)

    def stop(self) -> None:
        """Stop exactly the processes this plane started (last first), undo their setup, remove the data."""
        started = [c for c in self.components if c.name in self.binaries or c.name in self.pids]
        for component in reversed(started):
            _quietly(component.before_stop, self)
            pid = self.pids.pop(component.name, None)
            if pid is not None:
                _terminate(pid, Path(self.binaries.get(component.name, component.name)))
            _quietly(component.cleanup, self)
        for name, pid in reversed(list(self.pids.items())):  # processes a test added by hand
            _terminate(pid, self.bin_dir / name)
        self.pids.clear()
        self.binaries.clear()
        if self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- state for `make cluster` / `make cluster-down` --------------------------------
    def _save_state(self) -> None:
        state = {
            "kind": self.kind,
            "bin_dir": str(self.bin_dir),
            "server": self.server,
            "address": self.address,
            "pids": self.pids,
            "ports": self.ports,
            "binaries": self.binaries,
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def from_state(cls, workdir: Path, components: list[Component] | None = None) -> ControlPlane | None:
        path = workdir / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        plane = cls(
            workdir,
            Path(state["bin_dir"]),
            pids=state["pids"],
            server=state["server"],
            components=components,
            address=state.get("address", "127.0.0.1"),
            ports=state.get("ports", {}),
            kind=state.get("kind", "plane"),
        )
        plane.binaries = state.get("binaries", {})
        return plane

    @staticmethod
    def recorded_kind(workdir: Path) -> str | None:
        path = workdir / STATE_FILE
        return json.loads(path.read_text()).get("kind", "plane") if path.is_file() else None

    # -- helpers -------------------------------------------------------------------------
    def _binary(self, component: Component) -> str:
        if component.args is None:
            return ""
        if component.binary is None:
            return str(self.bin_dir / component.name)
        found = shutil.which(component.binary)
        if found is None:
            raise ControlPlaneError(f"{component.name}: {component.binary} not found; run 'make node-deps'")
        return found

    def _spawn(self, name: str, args: list[str]) -> None:
        binary = self.binaries.get(name) or str(self.bin_dir / name)
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [binary, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `make cluster`; not hit by the terminal's Ctrl-C
        )
        log.close()
        self.pids[name] = proc.pid

    def _write_kubeconfig(self, paths: dict[str, Path]) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {"server": self.server, "certificate-authority": str(paths["ca_cert"])},
                }
            ],
            "users": [
                {
                    "name": "envtest-admin",
                    "user": {
                        "client-certificate": str(paths["admin_cert"]),
                        "client-key": str(paths["admin_key"]),
                    },
                }
            ],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "envtest-admin"}}],
            "current-context": "envtest",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        self.kubeconfig.chmod(0o600)

    def _ssl_context(self) -> ssl.SSLContext:
        pki_dir = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        return context

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=5) as response:
            return response.read()

    def version(self) -> str:
        return json.loads(self.get("/version"))["gitVersion"]

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate``; fail fast, naming the log, when a started part exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not alive(pid):
                    raise ControlPlaneError(f"{name} exited during start-up; see {self.workdir / name}.log")
            if predicate():
                return
            time.sleep(0.25)
        newest = next(reversed(self.pids), "kube-apiserver")
        raise ControlPlaneError(f"{what} not ready within {timeout:.0f}s; see {self.workdir / newest}.log")

    def _wait_for(self, path: str, timeout: float, component: str) -> None:
        api_ready(path)(self, timeout)


def _quietly(hook: Hook, plane: ControlPlane) -> None:
    """Teardown goes on past a failing step: the remaining parts must still be stopped."""
    try:
        hook(plane)
    except Exception as error:
        print(f"envtest: teardown step {getattr(hook, '__name__', hook)} failed: {error}")


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie child of ours is reaped and counts as gone)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier `make cluster`): fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_ours(pid: int, binary: Path) -> bool:
    """Guard against PID reuse: only signal a process running the binary we started."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return Path(exe).name == binary.name


def _terminate(pid: int, binary: Path, grace: float = 10.0) -> None:
    if not _is_ours(pid, binary):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
