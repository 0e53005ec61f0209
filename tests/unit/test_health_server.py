"""The health/metrics server on loopback, no cluster: a silent or slow client cannot hold it, the probes
answer while one tries, and a bad address fails at start-up with one line."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client

from controller import __main__ as cli
from controller import health
from controller.runtime import Controller, Options

ROUTES = {
    "/healthz": lambda: (200, b"ok", "text/plain"),
    "/readyz": lambda: (503, b"informers not synced", "text/plain"),
    "/metrics": lambda: (200, b"deeplab_leader 1\n", "text/plain"),
}


@pytest.fixture
def server():
    """A server with a 1 s request budget, so the timeouts show in a second."""
    instance = health.serve("127.0.0.1:0", ROUTES, request_timeout=1.0, max_connections=4)
    yield instance
    instance.shutdown()
    instance.server_close()


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def seconds_until_closed(sock: socket.socket, limit: float = 10.0) -> float:
    """How long until the server closes `sock` (recv returns b'' or the connection is reset)."""
    started = time.monotonic()
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(4096):
            pass
    return time.monotonic() - started


def test_a_silent_connection_is_closed_within_the_timeout(server):
    with connect(server.port) as silent:
        elapsed = seconds_until_closed(silent)
    assert 0.8 < elapsed < 3.0


def test_a_slowloris_is_cut_at_the_deadline_though_it_keeps_sending(server):
    """A byte every 0.2 s keeps a per-recv socket timeout happy for ever; the request deadline is total."""
    started = time.monotonic()
    with connect(server.port) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        with contextlib.suppress(OSError):  # the server closes mid-send: broken pipe or reset
            while time.monotonic() - started < 10:
                slow.sendall(b"X")
                time.sleep(0.2)
        elapsed = time.monotonic() - started
    assert elapsed < 3.0, "the server kept reading a request that never ends"


def test_probes_and_metrics_answer_while_silent_connections_are_open(server):
    silent = [connect(server.port) for _ in range(2)]
    try:
        assert get(server.port, "/healthz") == (200, b"ok")
        assert get(server.port, "/readyz") == (503, b"informers not synced")
        assert get(server.port, "/metrics") == (200, b"deeplab_leader 1\n")
    finally:
        for sock in silent:
            sock.close()


def test_unknown_path_is_404_and_a_query_string_is_ignored(server):
    assert get(server.port, "/nope") == (404, b"not found")
    assert get(server.port, "/healthz?verbose=1") == (200, b"ok")


def test_connections_beyond_the_cap_are_closed_at_once_and_served_again_later(server):
    held = [connect(server.port) for _ in range(4)]  # max_connections=4, all silent
    try:
        time.sleep(0.3)  # let the server accept them all
        with connect(server.port) as extra:
            assert seconds_until_closed(extra) < 0.5
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the slots come back as the held connections end
        with contextlib.suppress(OSError):
            if get(server.port, "/healthz") == (200, b"ok"):
                break
        assert time.monotonic() < deadline, "slots never released"
        time.sleep(0.1)


def test_the_reader_stops_at_the_byte_limit_and_the_deadline():
    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"x" * 100_000)
        reader = health._DeadlineReader(left, time.monotonic() + 5, limit=health.MAX_REQUEST_BYTES)
        read = b""
        while chunk := reader.read(4096):
            read += chunk
        assert len(read) == health.MAX_REQUEST_BYTES
        late = health._DeadlineReader(left, time.monotonic() - 1, limit=100)
        with pytest.raises(TimeoutError):
            late.read(10)


@pytest.mark.parametrize(
    "text, expected",
    [
        (":8081", ("", 8081)),
        ("0.0.0.0:8081", ("0.0.0.0", 8081)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:8081", ("::", 8081)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:8081", ("localhost", 8081)),
        ("0", None),
    ],
)
def test_addresses(text, expected):
    assert health.parse_address(text) == expected


@pytest.mark.parametrize("text", ["8081", "host:", ":http", "::1:8081", ":99999", ""])
def test_bad_addresses_are_one_line_errors(text):
    with pytest.raises(ValueError, match="bad address") as caught:
        health.parse_address(text)
    assert "\n" not in str(caught.value)


def test_zero_serves_nothing():
    assert health.serve("0", ROUTES) is None


def test_a_port_in_use_is_a_one_line_bind_error(server):
    with pytest.raises(health.BindError) as caught:
        health.serve(f"127.0.0.1:{server.port}", ROUTES)
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message and "in use" in message and "\n" not in message


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_and_the_dual_stack_default():
    v6 = health.serve("[::1]:0", ROUTES)
    try:
        assert get(v6.port, "/healthz", host="[::1]") == (200, b"ok")
    finally:
        v6.shutdown()
        v6.server_close()
    if not socket.has_dualstack_ipv6():
        return
    every = health.serve(":0", ROUTES)  # the Deployment's `:8081`: IPv4 and IPv6 pod addresses alike
    try:
        assert get(every.port, "/healthz", host="127.0.0.1") == (200, b"ok")
        assert get(every.port, "/healthz", host="[::1]") == (200, b"ok")
    finally:
        every.shutdown()
        every.server_close()


def test_the_controller_serves_its_probes_and_metrics_with_the_default_timeout():
    """Wired into the Controller (not started: no cluster): informers not running -> 503, metrics 200,
    and a silent client is dropped after health.REQUEST_TIMEOUT."""
    controller = Controller(client.ApiClient(), Options(health_addr="127.0.0.1:0"))
    controller._serve_health(controller.options.health_addr)
    port = controller.health_port
    try:
        with connect(port) as silent:
            assert get(port, "/healthz") == (503, b"unhealthy")
            assert get(port, "/readyz") == (503, b"informers not synced")
            status, body = get(port, "/metrics")
            assert status == 200 and b"deeplab_reconcile_total" in body
            elapsed = seconds_until_closed(silent)
        assert health.REQUEST_TIMEOUT - 1 < elapsed < health.REQUEST_TIMEOUT + 2
    finally:
        controller._server.shutdown()
        controller._server.server_close()


def test_the_command_line_rejects_a_bad_address_in_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--health-addr", "8081"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--health-addr" in error and "bad address '8081'" in error


def test_the_command_line_exits_2_with_one_line_when_the_port_is_taken(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # keep pytest's own Ctrl-C
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    taken = f"127.0.0.1:{server.port}"
    code = cli.main(["run", "--kubeconfig", str(kubeconfig), "--health-addr", taken, "--log-level", "ERROR"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and taken in lines[0] and lines[0].startswith("python -m controller: error:")
