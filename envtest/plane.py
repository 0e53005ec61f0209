"""Start and stop etcd + kube-apiserver (+ a slim kube-controller-manager) on loopback.

There is no kubelet: tests play kubelet by patching pod status. The controller
manager runs only the controllers a test cluster needs: service accounts (pods are
refused without the namespace's ``default`` ServiceAccount) and the garbage
collector (owner references only cascade with it).
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
from dataclasses import dataclass, field
from pathlib import Path

from envtest import pki

STATE_FILE = "state.json"
CONTROLLERS = "serviceaccount,serviceaccount-token,garbagecollector,namespace"


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message names the log to read."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ControlPlane:
    workdir: Path
    bin_dir: Path
    controller_manager: bool = True
    pids: dict[str, int] = field(default_factory=dict)
    server: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def kubectl(self) -> Path:
        """The release's own kubectl when present (client and server versions match)."""
        own = self.bin_dir / "kubectl"
        return own if own.is_file() else Path(shutil.which("kubectl") or "kubectl")

    # -- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self._save_state()

    def _start(self, timeout: float) -> None:
        paths = pki.generate(self.workdir / "pki")
        etcd_url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        self._spawn(
            "etcd",
            [
                "--name=envtest",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=envtest={peer_url}",
                "--unsafe-no-fsync",  # test data: durability buys nothing, fsync costs seconds
                "--log-level=warn",
            ],
        )
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={paths['serving_cert']}",
                f"--tls-private-key-file={paths['serving_key']}",
                f"--client-ca-file={paths['ca_cert']}",
                f"--service-account-key-file={paths['sa_pub']}",
                f"--service-account-signing-key-file={paths['sa_key']}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                f"--cert-dir={self.workdir / 'pki'}",
                "--v=1",
            ],
        )
        self._write_kubeconfig(paths)
        self._wait_ready(timeout)
        if self.controller_manager:
            self._spawn(
                "kube-controller-manager",
                [
                    f"--kubeconfig={self.kubeconfig}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                    f"--controllers={CONTROLLERS}",
                    f"--service-account-private-key-file={paths['sa_key']}",
                    f"--root-ca-file={paths['ca_cert']}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--v=1",
                ],
            )
            self._wait_for(
                "/api/v1/namespaces/default/serviceaccounts/default", timeout, "kube-controller-manager"
            )

    def stop(self) -> None:
        """Stop exactly the processes this plane started, then remove their data."""
        for name, pid in reversed(list(self.pids.items())):
            _terminate(pid, self.bin_dir / name)
        self.pids.clear()
        if self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- state for `make cluster` / `make cluster-down` --------------------------------
    def _save_state(self) -> None:
        state = {"bin_dir": str(self.bin_dir), "server": self.server, "pids": self.pids}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def from_state(cls, workdir: Path) -> ControlPlane | None:
        path = workdir / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        return cls(workdir, Path(state["bin_dir"]), pids=state["pids"], server=state["server"])

    # -- helpers -------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [str(self.bin_dir / name), *args],
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

    def _wait_ready(self, timeout: float) -> None:
        self._wait_for("/readyz", timeout, "kube-apiserver")

    def _wait_for(self, path: str, timeout: float, component: str) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not _alive(pid):
                    raise ControlPlaneError(f"{name} exited during start-up; see {self.workdir / name}.log")
            try:
                self.get(path)
                return
            except (OSError, urllib.error.URLError) as error:
                last_error = str(error)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{component} not ready at {path} within {timeout:.0f}s ({last_error}); "
            f"see {self.workdir / component}.log"
        )


def _alive(pid: int) -> bool:
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
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
