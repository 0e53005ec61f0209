"""Command line: `python -m controller [run] [--kubeconfig ...]` and `python -m controller crd [--write]`."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading

DEFAULT_LEASE_NAMESPACE = "deeplab-system"
# Exit codes of `run`: 0 stopped by a signal; 1 lost the Lease (the Deployment restarts the replica);
# 2 bad configuration: a bad flag, a busy health address, or no namespace to hold the Lease in.
EXIT_LOST_LEASE = 1
EXIT_CONFIG = 2
# a namespace name is a DNS-1123 label
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_namespaces(text: str) -> tuple[str, ...]:
    """`team-a,team-b` -> ("team-a", "team-b"): order kept, blanks and repeats dropped. A misspelt name
    fails at start-up (exit 2), not as an informer that is refused for ever."""
    found = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [name for name in found if not _NAMESPACE.fullmatch(name)]
    if bad:
        raise argparse.ArgumentTypeError(f"not a namespace name: {bad[0]!r}")
    return found


def health_address(text: str) -> str:
    """Checked at start-up so a typo exits 2 with one line, before any API call."""
    from controller import health

    try:
        health.parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _run_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--as", dest="as_user", help="impersonate this user (like kubectl --as)")
    parser.add_argument(
        "--namespaces",
        type=parse_namespaces,
        default=(),
        metavar="NS[,NS...]",
        help="watch only these namespaces (default: all); the namespaced install's RBAC grants exactly these",
    )
    parser.add_argument(
        "--namespace", dest="namespaces", type=parse_namespaces, metavar="NS", help="alias of --namespaces"
    )
    parser.add_argument("--workers", type=int, default=2, help="concurrent reconciles")
    parser.add_argument("--resync-seconds", type=float, default=300.0)
    parser.add_argument("--log-interval", type=float, default=30.0, help="seconds between rank-0 log reads")
    parser.add_argument("--watch-timeout", type=int, default=60)
    parser.add_argument(
        "--health-addr",
        type=health_address,
        default=":8081",
        metavar="ADDR",
        help="where /healthz, /readyz and /metrics listen: HOST:PORT, :PORT (every interface, IPv4 "
        "and IPv6), [IPV6]:PORT, or 0 for no server (default :8081)",
    )
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="hold a Lease so only one replica reconciles (the Deployment passes it; default off, as for a "
        "single controller run from a laptop)",
    )
    parser.add_argument(
        "--lease-namespace", default=os.environ.get("POD_NAMESPACE") or DEFAULT_LEASE_NAMESPACE
    )
    parser.add_argument("--lease-name", default="deeplab-operator")
    parser.add_argument("--lease-duration", type=float, default=15.0)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    parser.add_argument("--identity", default=os.environ.get("POD_NAME", ""))
    parser.add_argument("--log-level", default="INFO")
    # The admin's policy (controller/policy.py): off by default, what a tenant gets without asking.
    parser.add_argument(
        "--allowed-host-path-prefixes",
        default="",
        help="comma-separated node directories under which trainings may mount hostPath volumes "
        "(default: none, hostPath refused)",
    )
    parser.add_argument(
        "--allow-secret-env",
        action="store_true",
        help="let trainings read Secrets into worker environment variables (valueFrom.secretKeyRef)",
    )


def options(args: argparse.Namespace):
    """The parsed `run` flags as the controller's Options (the admin's policy included)."""
    from controller.policy import Policy
    from controller.runtime import Options

    return Options(
        namespaces=args.namespaces,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        log_interval=args.log_interval,
        watch_timeout=args.watch_timeout,
        leader_elect=args.leader_elect,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        identity=args.identity,
        health_addr=args.health_addr or None,
        policy=Policy(
            host_path_prefixes=tuple(p for p in args.allowed_host_path_prefixes.split(",") if p),
            allow_secret_env=args.allow_secret_env,
        ),
    )


def run(args: argparse.Namespace) -> int:
    from controller import health, kube
    from controller.runtime import Controller

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    controller = Controller(kube.api_client(args.kubeconfig, args.context, args.as_user), options(args))
    stopping = threading.Event()

    def on_signal(signum, frame):  # SIGTERM from the kubelet, Ctrl-C from a laptop
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        controller.start()  # the health server first: a port in use stops us before any other work
    except health.BindError as error:
        print(f"python -m controller: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    logging.getLogger("controller").info("started as %s", controller.identity)
    while not stopping.wait(0.5):
        if controller.lost_lease.is_set():
            if controller.elector.fatal:  # e.g. no Lease namespace: retrying cannot help
                print(f"python -m controller: error: {controller.elector.fatal}", file=sys.stderr)
                return EXIT_CONFIG
            return EXIT_LOST_LEASE  # never keep running without the Lease: exit, the Deployment restarts us
    controller.stop()
    return 0


def crd(args: argparse.Namespace) -> int:
    from controller import crd as crd_module

    if args.write:
        print(f"wrote {crd_module.write()}")
    elif args.check:
        if crd_module.CRD_PATH.read_text() != crd_module.render():
            print(f"{crd_module.CRD_PATH} is stale: run `python -m controller crd --write`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(crd_module.render())
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    """`run` is the default command: `python -m controller --kubeconfig ...` runs the controller."""
    argv = list(argv)
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "run")
    parser = argparse.ArgumentParser(prog="python -m controller", description="The DeepLabTraining operator")
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands.add_parser("run", help="run the controller"))
    crd_parser = commands.add_parser("crd", help="print the generated CRD")
    crd_parser.add_argument("--write", action="store_true", help="write manifests/crd.yaml")
    crd_parser.add_argument("--check", action="store_true", help="fail when manifests/crd.yaml is stale")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return run(args) if args.command == "run" else crd(args)


if __name__ == "__main__":
    sys.exit(main())
