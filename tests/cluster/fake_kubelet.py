"""A stand-in for the kubelet's log endpoint, so `kubectl logs` (and the controller's log tail) work.

The API server proxies ``GET pods/log`` to ``https://<node InternalIP>:<kubeletEndpoint port>/
containerLogs/<ns>/<pod>/<container>``. Without --kubelet-certificate-authority it does not verify
the kubelet's serving certificate, so a self-signed one on 127.0.0.1 is enough.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubelet")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class FakeKubelet:
    """Serves ``logs[(namespace, pod)]`` (a list of lines) honouring tailLines."""

    def __init__(self, directory: Path):
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.requests: list[str] = []
        logs, requests = self.logs, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                requests.append(self.path)
                parts = url.path.strip("/").split("/")
                lines = (
                    logs.get((parts[1], parts[2]))
                    if len(parts) >= 4 and parts[0] == "containerLogs"
                    else None
                )
                if lines is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                tail = parse_qs(url.query).get("tailLines")
                chosen = lines[-int(tail[0]) :] if tail else lines
                body = "".join(line + "\n" for line in chosen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        cert, key = _self_signed(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def register_node(self, admin, name: str) -> None:
        """A Node whose kubelet is this server: InternalIP 127.0.0.1 and our port."""
        core = client.CoreV1Api(admin)
        core.create_node(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}, _preload_content=False
        )
        status = {
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            }
        }
        core.patch_node_status(name, status, _content_type="application/merge-patch+json")


def progress_line(epoch: int, epochs: int, loss: float) -> str:
    return json.dumps(
        {"event": "progress", "epoch": epoch, "epochs": epochs, "step": epoch * 10, "steps": epochs * 10,
         "loss": loss, "lr": 0.01, "images_per_second": 131.0, "eta_seconds": 60.0}
    )  # fmt: skip
