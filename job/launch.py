"""Worker entrypoint: turn what the operator gives a pod into an initialised MindSpore rank.

``python -m job launch -- train <flags>`` (the image's entrypoint). The operator sets
``DEEPLAB_LAUNCHER``:

- ``rankTable`` (Ascend/HCCL): wait for the mounted rank table of *this* attempt to be completed,
  validate it, find this pod's rank, export ``RANK_TABLE_FILE``/``RANK_ID``/``RANK_SIZE``/
  ``DEVICE_ID``/``ASCEND_DEVICE_ID`` and the HCCL interface address, then exec the job.
- ``dynamicCluster`` (MindSpore scheduler + workers): check the ``MS_*`` variables and that the
  scheduler's name resolves, then exec the job (the scheduler pod runs the same command).
- unset: a local run; exec the job unchanged.

The job replaces this process (exec), so SIGTERM from the kubelet reaches the training loop
directly and it can make its newest checkpoint safe before exiting.
"""

from __future__ import annotations

import argparse
import json
import os
import reprlib
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from job.errors import BadInput
from job.recipe import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED

DEFAULT_TABLE = "/user/serverid/devindex/config/hccl.json"  # MindX DL mount convention
DEFAULT_RANKS = "/user/serverid/devindex/config/ranks.json"
DEFAULT_TIMEOUT = 900.0


class NotReady(Exception):
    """The table is not (yet) the completed one of this attempt."""


class Unreadable(NotReady):
    """Not valid JSON: waited for (a writer may be mid-way), refused as bad input if it stays so."""


@dataclass(frozen=True)
class Placement:
    rank: int
    size: int
    device_id: str  # physical NPU id, as the table says
    server_id: str


RANK_DIGITS = 9  # no table has a billion ranks; longer numbers are refused before int() parses them
SHOW_MAX = 80  # characters of a quoted value in an error line


def _show(value: object) -> str:
    """A value quoted in a one-line error: bounded however large the table's value is."""
    text = reprlib.repr(value)
    return text if len(text) <= SHOW_MAX else text[: SHOW_MAX - 3] + "..."


def _rank(value: object) -> int | None:
    """A rank id as v1.0 tables write it ("3"), or as a JSON integer: non-negative, else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= RANK_DIGITS:
        return int(value)
    if type(value) is int and 0 <= value < 10**RANK_DIGITS:
        return value
    return None


def validate_table(table: object, source: str = "rank table") -> dict[int, tuple[str, str]]:
    """Check a completed v1.0 table; return rank -> (server_id, device_id).

    HCCL fails late and obscurely on a bad table, so everything it relies on is checked up front:
    string values, ranks 0..N-1 each once, ranks contiguous within a server, a true server count.
    Every problem is a BadInput naming ``source``: a table does not repair itself, so a retry
    cannot help (exit 2, never a traceback).
    """
    if not isinstance(table, dict):
        raise BadInput(f"{source}: not a JSON object but {type(table).__name__} {_show(table)}")
    if table.get("version") != "1.0":
        raise BadInput(f"{source}: version {_show(table.get('version'))} is not the supported '1.0'")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise BadInput(f"{source}: server_list is missing or empty")
    if str(table.get("server_count")) != str(len(servers)):
        raise BadInput(
            f"{source}: server_count {_show(table.get('server_count'))} but {len(servers)} servers listed"
        )
    ranks: dict[int, tuple[str, str]] = {}
    for index, server in enumerate(servers):
        server_id = server.get("server_id") if isinstance(server, dict) else None
        devices = server.get("device") if isinstance(server, dict) else None
        if not isinstance(server_id, str) or not server_id or not isinstance(devices, list) or not devices:
            raise BadInput(f"{source}: server_list[{index}] lacks server_id or devices")
        placed = [
            _device(device, f"{source}: server_list[{index}].device[{i}]") for i, device in enumerate(devices)
        ]
        server_ranks = [rank for rank, _ in placed]
        if server_ranks != list(range(server_ranks[0], server_ranks[0] + len(server_ranks))):
            raise BadInput(
                f"{source}: ranks {_show(server_ranks)} of server {_show(server_id)} are not contiguous"
            )
        for rank, device_id in placed:
            if rank in ranks:
                raise BadInput(f"{source}: rank_id {rank} appears twice")
            ranks[rank] = (server_id, device_id)
    if sorted(ranks) != list(range(len(ranks))):
        raise BadInput(f"{source}: rank ids {_show(sorted(ranks))} are not 0..{len(ranks) - 1}")
    return ranks


def _device(device: object, where: str) -> tuple[int, str]:
    """(rank, device_id) of one device entry."""
    if not isinstance(device, dict):
        raise BadInput(f"{where} is not an object but {_show(device)}")
    rank = _rank(device.get("rank_id"))
    if rank is None:
        raise BadInput(f"{where} has no integer rank_id >= 0: {_show(device.get('rank_id'))}")
    device_id = device.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise BadInput(f"{where} has no device_id string: {_show(device_id)}")
    return rank, device_id


def _read(path: Path) -> str:
    """A mounted file: absent is NotReady (kubelet has not mounted it yet); anything else unusable
    (a directory, no permission, not UTF-8) is BadInput."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise NotReady(f"{path} does not exist yet") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot be read ({error.__class__.__name__}: {_show(str(error))})") from None


def _parse(path: Path, text: str) -> object:
    """Unparsable JSON is Unreadable (waited for); JSON Python refuses (nesting too deep, an integer
    of thousands of digits) is BadInput at once."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise Unreadable(f"{path}: not valid JSON ({error})") from None
    except (ValueError, RecursionError) as error:
        raise BadInput(f"{path}: unusable JSON ({error.__class__.__name__}: {_show(str(error))})") from None


def _pod_ranks(meta: object, ranks_path: Path) -> dict[str, int]:
    """The operator's pod -> rank map, checked as strictly as the table: {pod name: integer rank}."""
    pod_ranks = meta.get("ranks") if isinstance(meta, dict) else None
    if not isinstance(pod_ranks, dict):
        raise BadInput(f"{ranks_path}: ranks is not a map of pod name to rank but {_show(pod_ranks)}")
    for pod, rank in pod_ranks.items():
        if type(rank) is not int or rank < 0:
            raise BadInput(
                f"{ranks_path}: rank {_show(rank)} of pod {_show(pod)} is not a non-negative integer"
            )
    return pod_ranks


def read_placement(table_path: Path, ranks_path: Path, pod: str, attempt: str | None) -> Placement:
    """This pod's place in a completed table of this attempt; NotReady while it is not there yet."""
    # Kubelet swaps both files at once, but between two reads: the map read again must be unchanged,
    # else a table and a map of different writes could meet (a completed table, an empty map).
    ranks_text = _read(ranks_path)
    table = _parse(table_path, _read(table_path))
    if _read(ranks_path) != ranks_text:
        raise NotReady(f"{ranks_path} changed while the table was read")
    meta = _parse(ranks_path, ranks_text)
    if not isinstance(meta, dict):
        raise BadInput(f"{ranks_path}: not a JSON object but {type(meta).__name__} {_show(meta)}")
    if not isinstance(table, dict):
        raise BadInput(
            f"rank table {table_path}: not a JSON object but {type(table).__name__} {_show(table)}"
        )
    if table.get("status") != "completed":
        raise NotReady(f"{table_path} status is {_show(table.get('status'))}")
    if attempt and meta.get("attempt") != attempt:
        # kubelet refreshes ConfigMap volumes lazily: this may still be the previous attempt's table.
        raise NotReady(
            f"{ranks_path} belongs to attempt {_show(meta.get('attempt'))}, this pod to {attempt!r}"
        )
    by_rank = validate_table(table, f"rank table {table_path}")
    pod_ranks = _pod_ranks(meta, ranks_path)
    if pod not in pod_ranks:
        raise BadInput(f"{ranks_path}: pod {pod!r} is not in the rank map")
    if sorted(pod_ranks.values()) != sorted(by_rank):
        raise BadInput(
            f"{ranks_path}: ranks {_show(sorted(pod_ranks.values()))} do not match the table's "
            f"0..{len(by_rank) - 1}, one pod each"
        )
    rank = pod_ranks[pod]
    server_id, device_id = by_rank[rank]
    return Placement(rank=rank, size=len(by_rank), device_id=device_id, server_id=server_id)


def wait_for_placement(
    table_path: Path,
    ranks_path: Path,
    pod: str,
    attempt: str | None,
    timeout: float,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> Placement:
    deadline = clock() + timeout
    while True:
        try:
            return read_placement(table_path, ranks_path, pod, attempt)
        except NotReady as why:
            if clock() >= deadline:
                if isinstance(why, Unreadable):
                    raise BadInput(f"{why}, still after {timeout:.0f}s") from None
                raise TimeoutError(
                    f"rank table not ready after {timeout:.0f}s: {why}; the operator completes it once every "
                    "worker pod of the attempt has an IP (check for Pending pods)"
                ) from None
        time.sleep(poll)


def rank_table_env(placement: Placement, table_file: str, pod_ip: str | None) -> dict[str, str]:
    env = {
        "RANK_TABLE_FILE": table_file,
        "RANK_ID": str(placement.rank),
        "RANK_SIZE": str(placement.size),
        # One NPU is visible per pod, and the runtime numbers visible devices from 0; the table keeps
        # the physical id, which HCCL maps to the NPU's address. Exporting the physical id here
        # would make the runtime ask for a device the container does not see.
        "DEVICE_ID": "0",
        "ASCEND_DEVICE_ID": "0",
    }
    if pod_ip:
        env["HCCL_IF_IP"] = pod_ip  # HCCL's host-side socket: the pod's own address
    return env


def _digits(text: str) -> bool:
    """A small decimal number (str.isdigit alone also accepts "²" and 5,000 digits)."""
    return text.isascii() and text.isdigit() and len(text) <= RANK_DIGITS


def check_dynamic_cluster(env: Mapping[str, str], timeout: float, poll: float = 1.0) -> None:
    role = env.get("MS_ROLE")
    if role not in ("MS_SCHED", "MS_WORKER"):
        raise BadInput(f"MS_ROLE={role!r}: expected MS_SCHED or MS_WORKER")
    for name in ("MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM"):
        if not env.get(name):
            raise BadInput(f"{name} is not set")
    if role == "MS_WORKER" and not _digits(env.get("MS_NODE_ID", "")):
        raise BadInput(f"MS_NODE_ID={env.get('MS_NODE_ID')!r}: a worker needs its integer node id")
    if not _digits(env["MS_WORKER_NUM"]):
        raise BadInput(f"MS_WORKER_NUM={env['MS_WORKER_NUM']!r}: expected a number of workers")
    if not (_digits(env["MS_SCHED_PORT"]) and 0 < int(env["MS_SCHED_PORT"]) < 65536):
        raise BadInput(f"MS_SCHED_PORT={env['MS_SCHED_PORT']!r}: expected a port number")
    # The scheduler's DNS record appears a few seconds after its pod gets an IP.
    host, deadline = env["MS_SCHED_HOST"], time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, int(env["MS_SCHED_PORT"]))
            return
        except UnicodeError:  # the IDNA codec refuses it (an empty or over-long label)
            raise BadInput(f"MS_SCHED_HOST={host!r} is not a valid host name") from None
        except socket.gaierror:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"scheduler host {host} did not resolve within {timeout:.0f}s") from None
            time.sleep(poll)


def snapshot(table_path: Path) -> str:
    """A private copy for HCCL: the mounted file may be swapped by kubelet while training runs."""
    fd, path = tempfile.mkstemp(prefix="hccl-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        out.write(table_path.read_text())
    return path


def launch_mode(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    return args.mode or env.get("DEEPLAB_LAUNCHER", "")


def job_command(args: argparse.Namespace, env: Mapping[str, str]) -> list[str]:
    if launch_mode(args, env) == "dynamicCluster" and env.get("MS_ROLE") == "MS_SCHED":
        # The scheduler pod gets the same command as the workers but only coordinates them.
        return [sys.executable, "-m", "job.distributed"]
    return [sys.executable, "-m", "job", *args.command]


def prepare(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The environment additions for this pod's role, or raise."""
    mode = launch_mode(args, env)
    if mode == "rankTable":
        pod = env.get("POD_NAME") or socket.gethostname()
        table, ranks = (
            Path(env.get("DEEPLAB_RANK_TABLE", args.table)),
            Path(env.get("DEEPLAB_RANKS", args.ranks)),
        )
        placement = wait_for_placement(table, ranks, pod, env.get("DEEPLAB_ATTEMPT"), args.timeout, args.poll)
        print(
            f"launch: {pod} is rank {placement.rank}/{placement.size} on {placement.server_id}",
            file=sys.stderr,
        )
        return rank_table_env(placement, snapshot(table), env.get("POD_IP"))
    if mode == "dynamicCluster":
        check_dynamic_cluster(env, args.timeout, args.poll)
        return {}
    if mode:
        raise BadInput(f"DEEPLAB_LAUNCHER={mode!r}: expected rankTable or dynamicCluster")
    return {}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m job launch", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["rankTable", "dynamicCluster"], help="default: $DEEPLAB_LAUNCHER")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="rank table path (or $DEEPLAB_RANK_TABLE)")
    parser.add_argument("--ranks", default=DEFAULT_RANKS, help="pod -> rank map path (or $DEEPLAB_RANKS)")
    parser.add_argument(
        "--timeout", type=float, default=float(os.environ.get("DEEPLAB_LAUNCH_TIMEOUT", DEFAULT_TIMEOUT))
    )
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- train|eval <flags>")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("nothing to launch: give the job command after --, e.g. -- train --data_file ...")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # As PID 1 in a container, a process without a handler ignores SIGTERM: waiting must stay stoppable.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_INTERRUPTED))
    try:
        extra = prepare(args, os.environ)
    except BadInput as error:
        print(f"launch: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TimeoutError as error:
        print(f"launch: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update(extra)
    command = job_command(args, os.environ)
    sys.stdout.flush()
    os.execv(command[0], command)
    return EXIT_FAILURE  # unreachable: exec replaced the process


if __name__ == "__main__":
    sys.exit(main())
