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


@dataclass(frozen=True)
class Placement:
    rank: int
    size: int
    device_id: str  # physical NPU id, as the table says
    server_id: str


def validate_table(table: object) -> dict[int, tuple[str, str]]:
    """Check a completed v1.0 table; return rank -> (server_id, device_id).

    HCCL fails late and obscurely on a bad table, so everything it relies on is checked up front:
    string values, ranks 0..N-1 each once, ranks contiguous within a server, a true server count.
    """
    if not isinstance(table, dict):
        raise BadInput("rank table: not a JSON object")
    if table.get("version") != "1.0":
        raise BadInput(f"rank table: version {table.get('version')!r} is not the supported '1.0'")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise BadInput("rank table: server_list is missing or empty")
    if str(table.get("server_count")) != str(len(servers)):
        raise BadInput(
            f"rank table: server_count {table.get('server_count')!r} but {len(servers)} servers listed"
        )
    ranks: dict[int, tuple[str, str]] = {}
    for index, server in enumerate(servers):
        server_id = server.get("server_id") if isinstance(server, dict) else None
        devices = server.get("device") if isinstance(server, dict) else None
        if not server_id or not isinstance(devices, list) or not devices:
            raise BadInput(f"rank table: server_list[{index}] lacks server_id or devices")
        server_ranks = [_rank_of(device, index) for device in devices]
        if server_ranks != list(range(server_ranks[0], server_ranks[0] + len(server_ranks))):
            raise BadInput(f"rank table: ranks {server_ranks} of server {server_id} are not contiguous")
        for device, rank in zip(devices, server_ranks, strict=True):
            if rank in ranks:
                raise BadInput(f"rank table: rank_id {rank} appears twice")
            ranks[rank] = (str(server_id), str(device.get("device_id")))
    if sorted(ranks) != list(range(len(ranks))):
        raise BadInput(f"rank table: rank ids {sorted(ranks)} are not 0..{len(ranks) - 1}")
    return ranks


def _rank_of(device: object, server_index: int) -> int:
    try:
        return int(device["rank_id"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise BadInput(
            f"rank table: a device of server_list[{server_index}] has no integer rank_id"
        ) from None


def read_placement(table_path: Path, ranks_path: Path, pod: str, attempt: str | None) -> Placement:
    """This pod's place in a completed table of this attempt; NotReady while it is not there yet."""
    try:
        meta = json.loads(ranks_path.read_text())
        table = json.loads(table_path.read_text())
    except FileNotFoundError as missing:
        raise NotReady(f"{missing.filename} does not exist yet") from None
    except ValueError as error:
        raise NotReady(f"unreadable JSON ({error})") from None  # kubelet may be mid-swap
    if table.get("status") != "completed":
        raise NotReady(f"{table_path} status is {table.get('status')!r}")
    if attempt and meta.get("attempt") != attempt:
        # kubelet refreshes ConfigMap volumes lazily: this may still be the previous attempt's table.
        raise NotReady(f"{ranks_path} belongs to attempt {meta.get('attempt')!r}, this pod to {attempt!r}")
    by_rank = validate_table(table)
    pod_ranks = meta.get("ranks")
    if not isinstance(pod_ranks, dict) or pod not in pod_ranks:
        raise BadInput(f"{ranks_path}: pod {pod!r} is not in the rank map")
    rank = int(pod_ranks[pod])
    if rank not in by_rank:
        raise BadInput(f"{ranks_path}: pod {pod!r} has rank {rank}, which the table does not list")
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


def check_dynamic_cluster(env: Mapping[str, str], timeout: float, poll: float = 1.0) -> None:
    role = env.get("MS_ROLE")
    if role not in ("MS_SCHED", "MS_WORKER"):
        raise BadInput(f"MS_ROLE={role!r}: expected MS_SCHED or MS_WORKER")
    for name in ("MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM"):
        if not env.get(name):
            raise BadInput(f"{name} is not set")
    if role == "MS_WORKER" and not env.get("MS_NODE_ID", "").isdigit():
        raise BadInput(f"MS_NODE_ID={env.get('MS_NODE_ID')!r}: a worker needs its integer node id")
    # The scheduler's DNS record appears a few seconds after its pod gets an IP.
    host, deadline = env["MS_SCHED_HOST"], time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, int(env["MS_SCHED_PORT"]))
            return
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
