"""The /healthz, /readyz and /metrics endpoint: a small HTTP server that no client can hold.

The kubelet's probes and Prometheus share one port. Whoever else can reach that port (the NetworkPolicy
sample narrows it) must not be able to starve the probes and get the controller restarted: a connection that
sends nothing, or its request a byte at a time (slowloris), is cut after `REQUEST_TIMEOUT` seconds in
total, a request is read up to `MAX_REQUEST_BYTES`, and at most `MAX_CONNECTIONS` are served at once (one
thread each; more are closed at once rather than queued behind slow ones).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUEST_TIMEOUT = 5.0  # seconds for a whole request (read and reply); probes answer in milliseconds
MAX_REQUEST_BYTES = 16 * 1024  # request line and headers; a probe or a scrape sends a few hundred
MAX_CONNECTIONS = 64
ADDRESS_HELP = "HOST:PORT, :PORT (every interface), [IPV6]:PORT, or 0 to disable"

Reply = tuple[int, bytes, str]  # status code, body, content type
Route = Callable[[], Reply]


class BindError(Exception):
    """The server cannot listen where asked; the message is one line naming the address."""


def parse_address(addr: str) -> tuple[str, int] | None:
    """`host:port`, `:port`, `[::1]:port` -> (host, port); `0` -> None (no server, as controller-runtime's
    `--health-probe-bind-address=0`). An empty host means every interface. Raises ValueError (one line)."""
    addr = addr.strip()
    if addr == "0":
        return None
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad address {addr!r}: expected {ADDRESS_HELP}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"bad address {addr!r}: an IPv6 host goes in brackets, e.g. [::]:{port}")
    return host, int(port)


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream that gives up at a deadline and ends after `limit` bytes.

    A socket timeout alone bounds each recv, not the request: a byte every few seconds would hold the
    thread for ever. Here each recv waits only for what is left of the request's time."""

    def __init__(self, sock: socket.socket, deadline: float, limit: int):
        super().__init__()
        self.sock, self.deadline, self.left = sock, deadline, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            return 0  # end of input: the parser sees a truncated request and answers or drops it
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(remaining)
        count = self.sock.recv_into(memoryview(buffer)[: self.left])
        self.left -= count
        return count


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    timeout = REQUEST_TIMEOUT  # also bounds writing the reply to a client that does not read

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file: replaced, and its reference on the socket dropped
        deadline = time.monotonic() + self.server.request_timeout
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline, MAX_REQUEST_BYTES))

    def do_GET(self) -> None:
        self.connection.settimeout(self.server.request_timeout)
        route = self.server.routes.get(self.path.split("?", 1)[0])
        code, body, ctype = route() if route is not None else (404, b"not found", "text/plain")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # probes every few seconds, and timeouts: keep the log quiet
        pass


class HealthServer(ThreadingHTTPServer):
    """Serves `routes` (path -> reply) in daemon threads, at most `max_connections` at a time."""

    daemon_threads = True  # a stuck client never delays the process's exit

    def __init__(
        self,
        address: tuple[str, int],
        routes: Mapping[str, Route],
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ):
        host, port = address
        self.routes, self.request_timeout = dict(routes), request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self.address_family, host, self.dual_stack = _family(host)
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        if self.dual_stack:  # `:port` means IPv4 and IPv6 alike, as in Go's net.Listen
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: refuse at once, never queue behind slow clients
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up mid-reply is its own problem; never a traceback in the log

    @property
    def port(self) -> int:
        return self.server_address[1]


def _family(host: str) -> tuple[socket.AddressFamily, str, bool]:
    """(address family, host to bind, dual stack?) for a parsed host."""
    if not host:
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, "::", True
        return socket.AF_INET, "0.0.0.0", False
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), host, False


def serve(addr: str, routes: Mapping[str, Route], **kwargs) -> HealthServer | None:
    """Listen on `addr` (see `parse_address`) and serve in a daemon thread; None when `addr` is `0`.
    A bad or unusable address raises BindError with one line."""
    try:
        address = parse_address(addr)
    except ValueError as error:
        raise BindError(str(error)) from None
    if address is None:
        return None
    try:
        server = HealthServer(address, routes, **kwargs)
    except OSError as error:  # in use, not an address of this host, unresolvable name
        raise BindError(f"cannot listen on {addr!r}: {error.strerror or error}") from None
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
