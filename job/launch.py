"""Worker entrypoint: turn what the operator gives a pod into an initialised MindSpore rank.

``python -m job launch -- train <flags>`` (the image's entrypoint). The operator sets
``DEEPLAB_LAUNCHER``:

- ``rankTable`` (Ascend/HCCL): wait for the mounted rank table of *this* attempt to be completed,
  validate it, find this pod's rank, export ``RANK_TABLE_FILE``/``RANK_ID``/``RANK_SIZE``/
  ``DEVICE_ID``/``ASCEND_DEVICE_ID`` and the HCCL interface address, then exec the job.
- ``dynamicCluster`` (MindSpore scheduler + workers): check the ``MS_*`` variables and that the
  scheduler's name resolves, then exec the job (the scheduler pod runs the same command).
- unset: a local run; exec the job unchanged.

A pod with one rank (one NPU) is replaced by the job (exec), so SIGTERM from the kubelet reaches the
training loop directly and it can make its newest checkpoint safe before exiting. A pod with N > 1
ranks (``MS_LOCAL_WORKER``, or N devices in the pod's server_list entry) starts one job process per
rank, as MindSpore's ``msrun`` does (mindspore/parallel/cluster/process_entity/_api.py), forwards
SIGTERM/SIGINT to each, and exits with the first failure's code after stopping the others.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import reprlib
import signal
import socket
import subprocess
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
    rank: int  # the pod's first rank (what ranks.json maps the pod to)
    size: int
    device_id: str  # physical NPU id of the first rank, as the table says
    server_id: str
    local_ranks: int = 1  # ranks (NPUs) this pod holds: rank .. rank + local_ranks - 1
    device_ids: tuple[str, ...] = ()  # the physical ids of those ranks' NPUs, in rank order


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


# 1.2: Atlas A3 super pods, as MindX's ascend-operator writes it (mind-cluster component/ascend-operator/
# pkg/ranktable/v1dot2/ranktable.go, common/server.go; docs/en/scheduling/api/hccl.json_file_description.md):
# every device also has a super_device_id, and super_pod_list groups the server_ids by super pod.
VERSIONS = ("1.0", "1.2")


def validate_table(table: object, source: str = "rank table") -> dict[int, tuple[str, str]]:
    """Check a completed v1.0 or v1.2 table; return rank -> (server_id, device_id).

    HCCL fails late and obscurely on a bad table, so everything it relies on is checked up front:
    string values, ranks 0..N-1 each once, ranks contiguous within a server_list entry, a true
    server count (MindX writes one entry per pod, so several entries may share a server_id).
    Every problem is a BadInput naming ``source``: a table does not repair itself, so a retry
    cannot help (exit 2, never a traceback).
    """
    if not isinstance(table, dict):
        raise BadInput(f"{source}: not a JSON object but {type(table).__name__} {_show(table)}")
    version = table.get("version")
    if version not in VERSIONS:
        raise BadInput(f"{source}: version {_show(version)} is not a supported one ('1.0' or '1.2')")
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
            _device(device, f"{source}: server_list[{index}].device[{i}]", super_pod=version == "1.2")
            for i, device in enumerate(devices)
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
    if version == "1.2":
        _check_super_pods(table.get("super_pod_list"), {server_id for server_id, _ in ranks.values()}, source)
    return ranks


def _check_super_pods(super_pods: object, server_ids: set[str], source: str) -> None:
    """v1.2's super_pod_list: distinct numeric super_pod_ids, each listing servers of server_list,
    and every server of server_list in one of them (HCCL places each server in its super pod)."""
    if not isinstance(super_pods, list) or not super_pods:
        raise BadInput(f"{source}: version 1.2 needs a super_pod_list, got {_show(super_pods)}")
    seen_pods: set[str] = set()
    listed: set[str] = set()
    for index, pod in enumerate(super_pods):
        where = f"{source}: super_pod_list[{index}]"
        pod_id = pod.get("super_pod_id") if isinstance(pod, dict) else None
        members = pod.get("server_list") if isinstance(pod, dict) else None
        if not _id_string(pod_id) or not isinstance(members, list) or not members:
            raise BadInput(f"{where} lacks a numeric super_pod_id string or a server_list: {_show(pod)}")
        if pod_id in seen_pods:
            raise BadInput(f"{where}: super_pod_id {pod_id!r} appears twice")
        seen_pods.add(pod_id)
        for member in members:
            server_id = member.get("server_id") if isinstance(member, dict) else None
            if server_id not in server_ids:
                raise BadInput(f"{where}: server {_show(server_id)} is not in server_list")
            listed.add(server_id)
    if server_ids - listed:
        raise BadInput(f"{source}: servers {_show(sorted(server_ids - listed))} are in no super pod")


def _id_string(value: object) -> bool:
    """A decimal id as MindX writes it, a string ("0", "37748736")."""
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 2 * RANK_DIGITS


def _device(device: object, where: str, super_pod: bool = False) -> tuple[int, str]:
    """(rank, device_id) of one device entry (v1.2: with its super_device_id)."""
    if not isinstance(device, dict):
        raise BadInput(f"{where} is not an object but {_show(device)}")
    if super_pod and not _id_string(device.get("super_device_id")):
        raise BadInput(f"{where} has no super_device_id string: {_show(device.get('super_device_id'))}")
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
    counts = pod_rank_counts(pod_ranks.values(), entry_first_ranks(table), len(by_rank))
    if counts is None:
        raise BadInput(
            f"{ranks_path}: ranks {_show(sorted(pod_ranks.values()))} do not match the table's "
            f"0..{len(by_rank) - 1}: one pod per rank, or per server_list entry"
        )
    rank = pod_ranks[pod]
    server_id, device_id = by_rank[rank]
    return Placement(
        rank=rank,
        size=len(by_rank),
        device_id=device_id,
        server_id=server_id,
        local_ranks=counts[rank],
        device_ids=tuple(by_rank[r][1] for r in range(rank, rank + counts[rank])),
    )


def entry_first_ranks(table: dict) -> list[int]:
    """The first rank of every server_list entry of a validated table (its ranks are contiguous)."""
    return [
        min(_rank(device["rank_id"]) or 0 for device in entry["device"]) for entry in table["server_list"]
    ]


def pod_rank_counts(firsts: object, entry_starts: list[int], size: int) -> dict[int, int] | None:
    """Each pod's first rank -> how many ranks it holds, or None when the map does not fit the table.

    ranks.json maps a pod to its first rank. A pod holds the ranks from there up to the next pod's
    first rank, within one server_list entry: MindX's one entry per pod (N devices each), or the
    older grouping of several one-NPU pods of a node in one entry (every rank then starts a pod).
    So every entry must start at some pod's first rank, and no two pods may share one.
    """
    starts = sorted(firsts)  # type: ignore[call-overload]
    if len(set(starts)) != len(starts) or not set(entry_starts) <= set(starts) <= set(range(size)):
        return None
    ends = [*starts[1:], size]
    return {first: end - first for first, end in zip(starts, ends, strict=True)}


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


def rank_table_env(
    placement: Placement, table_file: str, pod_ip: str | None, local: int = 0
) -> dict[str, str]:
    """The variables of the pod's ``local``-th process (rank ``placement.rank + local``)."""
    env = {
        "RANK_TABLE_FILE": table_file,
        "RANK_ID": str(placement.rank + local),
        "RANK_SIZE": str(placement.size),
        # Only the pod's own NPUs are visible, and the runtime numbers visible devices from 0; the
        # table keeps the physical id, which HCCL maps to the NPU's address. Exporting the physical
        # id here would make the runtime ask for a device the container does not see.
        "DEVICE_ID": str(local),
        "ASCEND_DEVICE_ID": str(local),
    }
    if pod_ip:
        env["HCCL_IF_IP"] = pod_ip  # HCCL's host-side socket: the pod's own address
    return env


def visible_devices(value: str) -> list[str] | None:
    """The physical NPU ids of ``ASCEND_VISIBLE_DEVICES`` in the forms Ascend Docker Runtime takes
    ("Ascend910-0,Ascend910-1" as Volcano's huawei.com/Ascend910 annotation has it, "0,1", "0-3"),
    or None for anything else (then nothing is compared)."""
    ids: list[str] = []
    for part in value.split(","):
        part = part.strip()
        named = re.fullmatch(r"Ascend\w*-(\d{1,4})", part)
        span = re.fullmatch(r"(\d{1,4})-(\d{1,4})", part)
        if named:
            ids.append(str(int(named.group(1))))
        elif span and int(span.group(1)) <= int(span.group(2)):
            ids += [str(i) for i in range(int(span.group(1)), int(span.group(2)) + 1)]
        elif re.fullmatch(r"\d{1,4}", part):
            ids.append(str(int(part)))
        else:
            return None
    return ids


def visibility_warning(placement: Placement, visible: str | None) -> str | None:
    """A warning when the container's NPUs are not the pod's devices of the table, in order.

    The runtime numbers the visible NPUs from 0 in ascending physical id, and the launcher gives
    rank ``first + i`` DEVICE_ID i: that is right only if the table lists this pod's NPUs, sorted,
    as the device plugin writes them (mind-cluster ascend-device-plugin GetPodConfiguration sorts
    the ids). Not refused: only real hardware can tell whether a mismatch matters.
    """
    ids = visible_devices(visible) if visible else None
    if ids is None or not placement.device_ids:
        return None
    if sorted(ids, key=int) == list(placement.device_ids):
        return None
    return (
        f"ASCEND_VISIBLE_DEVICES={visible!r} are not this pod's NPUs of the table "
        f"{list(placement.device_ids)} in ascending order: DEVICE_ID i may not be rank {placement.rank}+i's"
    )


def _digits(text: str) -> bool:
    """A small decimal number (str.isdigit alone also accepts "²" and 5,000 digits)."""
    return text.isascii() and text.isdigit() and len(text) <= RANK_DIGITS


def check_dynamic_cluster(env: Mapping[str, str], timeout: float, poll: float = 1.0) -> dict[str, str]:
    """Check the ``MS_*`` variables; return the additions for the job: the scheduler's IP address.

    MindSpore documents ``MS_SCHED_HOST`` as an IP address; an IP literal is used as is, a host name
    is resolved once here (waiting for its DNS record) and the job gets the address instead.
    """
    role = env.get("MS_ROLE")
    if role not in ("MS_SCHED", "MS_WORKER"):
        raise BadInput(f"MS_ROLE={role!r}: expected MS_SCHED or MS_WORKER")
    for name in ("MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM"):
        if not env.get(name):
            raise BadInput(f"{name} is not set")
    if not _digits(env["MS_WORKER_NUM"]):
        raise BadInput(f"MS_WORKER_NUM={env['MS_WORKER_NUM']!r}: expected a number of workers")
    if role == "MS_WORKER":
        first_node_id(env)
    if not (_digits(env["MS_SCHED_PORT"]) and 0 < int(env["MS_SCHED_PORT"]) < 65536):
        raise BadInput(f"MS_SCHED_PORT={env['MS_SCHED_PORT']!r}: expected a port number")
    host = env["MS_SCHED_HOST"]
    if _ip(host):
        return {}
    address = resolve(host, int(env["MS_SCHED_PORT"]), timeout, poll)
    print(f"launch: MS_SCHED_HOST {host} resolved to {address}; the job gets the address", file=sys.stderr)
    return {"MS_SCHED_HOST": address}


def _ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int, timeout: float, poll: float = 1.0) -> str:
    """The host's address (IPv4 first, as MindSpore's TCP layer expects), waiting for its DNS record:
    the scheduler's record appears a few seconds after its pod gets an IP."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return pick_address(infos)
        except UnicodeError:  # the IDNA codec refuses it (an empty or over-long label)
            raise BadInput(f"MS_SCHED_HOST={host!r} is not a valid host name") from None
        except socket.gaierror:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"scheduler host {host} did not resolve within {timeout:.0f}s") from None
            time.sleep(poll)


def pick_address(infos: list[tuple]) -> str:
    """The first IPv4 address of a getaddrinfo answer, else its first address."""
    ordered = sorted(infos, key=lambda info: info[0] != socket.AF_INET)  # stable: resolver order kept
    return str(ordered[0][4][0])


def local_workers(env: Mapping[str, str]) -> int:
    """``MS_LOCAL_WORKER``: how many ranks (processes) this pod runs; 1 when unset."""
    value = env.get("MS_LOCAL_WORKER", "1")
    if not _digits(value) or int(value) < 1:
        raise BadInput(f"MS_LOCAL_WORKER={value!r}: expected a number of processes >= 1")
    return int(value)


def first_node_id(env: Mapping[str, str]) -> int:
    """The MS_NODE_ID of the pod's first process, checked against MS_WORKER_NUM.

    A one-process pod has its MS_NODE_ID (MS_NODE_RANK as fallback); a pod of N processes has
    MS_NODE_RANK and holds node ids MS_NODE_RANK * N .. + N - 1, as msrun numbers them when every
    node runs the same number of processes (``_get_node_id_and_log_path`` in msrun's _api.py).
    """
    count, total = local_workers(env), int(env["MS_WORKER_NUM"])
    node_id, node_rank = env.get("MS_NODE_ID", ""), env.get("MS_NODE_RANK", "")
    if count == 1 and _digits(node_id):
        first = int(node_id)
    elif _digits(node_rank):
        first = int(node_rank) * count
    elif count == 1:
        raise BadInput(f"MS_NODE_ID={env.get('MS_NODE_ID')!r}: a worker needs its integer node id")
    else:
        raise BadInput(f"MS_NODE_RANK={env.get('MS_NODE_RANK')!r}: a worker pod of {count} needs its index")
    if first + count > total:
        raise BadInput(
            f"node ids {first}..{first + count - 1} of this pod do not fit MS_WORKER_NUM={total}"
            f" (MS_NODE_RANK={node_rank or None!r}, MS_LOCAL_WORKER={count})"
        )
    return first


def dynamic_cluster_envs(env: Mapping[str, str]) -> list[dict[str, str]]:
    """The additions of each of the pod's worker processes, as msrun exports them: MS_NODE_ID and
    RANK_ID = the node id, DEVICE_ID = the local index (the pod's NPUs are numbered from 0)."""
    first = first_node_id(env)
    return [
        {"MS_NODE_ID": str(first + i), "RANK_ID": str(first + i), "DEVICE_ID": str(i)}
        for i in range(local_workers(env))
    ]


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


def prepare(args: argparse.Namespace, env: Mapping[str, str]) -> list[dict[str, str]]:
    """The environment additions of each process this pod runs (one per rank), or raise."""
    mode = launch_mode(args, env)
    if mode == "rankTable":
        pod = env.get("POD_NAME") or socket.gethostname()
        table, ranks = (
            Path(env.get("DEEPLAB_RANK_TABLE", args.table)),
            Path(env.get("DEEPLAB_RANKS", args.ranks)),
        )
        placement = wait_for_placement(table, ranks, pod, env.get("DEEPLAB_ATTEMPT"), args.timeout, args.poll)
        last = placement.rank + placement.local_ranks - 1
        held = f"ranks {placement.rank}..{last}" if last > placement.rank else f"rank {placement.rank}"
        print(f"launch: {pod} is {held}/{placement.size} on {placement.server_id}", file=sys.stderr)
        warning = visibility_warning(placement, env.get("ASCEND_VISIBLE_DEVICES"))
        if warning:
            print(f"launch: warning: {warning}", file=sys.stderr)
        copy = snapshot(table)
        return [rank_table_env(placement, copy, env.get("POD_IP"), i) for i in range(placement.local_ranks)]
    if mode == "dynamicCluster":
        extra = check_dynamic_cluster(env, args.timeout, args.poll)
        if env.get("MS_ROLE") == "MS_SCHED":
            return [extra]  # one scheduler process, however many NPUs the worker pods hold
        return [{**extra, **child} for child in dynamic_cluster_envs(env)]
    if mode:
        raise BadInput(f"DEEPLAB_LAUNCHER={mode!r}: expected rankTable or dynamicCluster")
    return [{}]


SIBLING_GRACE = 30.0  # seconds the other processes get after the first failure, then SIGKILL
FORWARDED = (signal.SIGTERM, signal.SIGINT)


def exit_code(status: int) -> int:
    """A wait status as a container runtime reports it: the exit code, or 128 + the killing signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def supervise(command: list[str], envs: list[dict[str, str]], grace: float = SIBLING_GRACE) -> int:
    """Run ``command`` once per environment (one process per rank) and wait for all of them.

    SIGTERM/SIGINT are forwarded to every process (each sits in its own session, so a terminal's
    Ctrl-C reaches them only this way, once). The first process that fails decides the exit code:
    the others get SIGTERM, and SIGKILL after ``grace`` seconds (a rank stuck in a collective with
    a dead peer never returns to Python to act on SIGTERM). 0 only when every process exits 0.
    """
    children: dict[int, subprocess.Popen] = {}
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for pid, child in children.items():
            if child.returncode is None:
                _signal(pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        for env in envs:
            child = subprocess.Popen(command, env=env, start_new_session=True)
            children[child.pid] = child
            if received:  # a signal that came while the earlier processes were being started
                _signal(child.pid, received[-1])
        return _wait(children, grace)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _reap(children)


def _signal(pid: int, signum: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum) if group else os.kill(pid, signum)


def _wait(children: dict[int, subprocess.Popen], grace: float, poll: float = 0.1) -> int:
    """Reap until every process has exited: 0, or the first failure's code (see ``supervise``)."""
    running, failure, deadline = set(children), None, None
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)  # -1: as PID 1 this also reaps orphaned grandchildren
        if pid == 0:
            if deadline is not None and time.monotonic() >= deadline:
                for other in running:
                    _signal(other, signal.SIGKILL, group=True)
                deadline = None
            time.sleep(poll)
            continue
        if pid not in running:
            continue
        running.discard(pid)
        code = children[pid].returncode = exit_code(status)
        if code != 0 and failure is None:
            failure = code
            print(f"launch: process {pid} exited {code}; stopping the other {len(running)}", file=sys.stderr)
            for other in running:
                _signal(other, signal.SIGTERM)
            deadline = time.monotonic() + grace
    return failure or 0


def _reap(children: dict[int, subprocess.Popen]) -> None:
    """Leave no process behind when ``supervise`` itself fails (e.g. a start that raised)."""
    for pid, child in children.items():
        if child.returncode is None:
            _signal(pid, signal.SIGKILL, group=True)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            child.returncode = -signal.SIGKILL


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m job launch", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["rankTable", "dynamicCluster"], help="default: $DEEPLAB_LAUNCHER")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="rank table path (or $DEEPLAB_RANK_TABLE)")
    parser.add_argument("--ranks", default=DEFAULT_RANKS, help="pod -> rank map path (or $DEEPLAB_RANKS)")
    parser.add_argument(
        "--timeout", type=float, default=float(os.environ.get("DEEPLAB_LAUNCH_TIMEOUT", DEFAULT_TIMEOUT))
    )
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("DEEPLAB_SIBLING_GRACE", SIBLING_GRACE)),
        help="multi-NPU pods: seconds the other processes get after one failed, then SIGKILL",
    )
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
    command = job_command(args, os.environ)
    sys.stdout.flush()
    if len(extra) > 1:
        print(f"launch: starting {len(extra)} processes, one per rank of this pod", file=sys.stderr)
        return supervise(command, [{**os.environ, **child} for child in extra], args.grace)
    os.environ.update(extra[0])
    os.execv(command[0], command)
    return EXIT_FAILURE  # unreachable: exec replaced the process


if __name__ == "__main__":
    sys.exit(main())
