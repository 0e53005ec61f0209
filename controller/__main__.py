"""Command line: `python -m controller [run] [--kubeconfig ...]` and `python -m controller crd [--write]`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

DEFAULT_LEASE_NAMESPACE = "deeplab-system"


def _run_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--as", dest="as_user", help="impersonate this user (like kubectl --as)")
    parser.add_argument("--namespace", help="watch only this namespace (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="concurrent reconciles")
    parser.add_argument("--resync-seconds", type=float, default=300.0)
    parser.add_argument("--log-interval", type=float, default=30.0, help="seconds between rank-0 log reads")
    parser.add_argument("--watch-timeout", type=int, default=60)
    parser.add_argument("--health-addr", default=":8081", help="host:port for /healthz /readyz /metrics")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--lease-namespace", default=os.environ.get("POD_NAMESPACE") or DEFAULT_LEASE_NAMESPACE
    )
    parser.add_argument("--lease-name", default="deeplab-operator")
    parser.add_argument("--lease-duration", type=float, default=15.0)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    parser.add_argument("--identity", default=os.environ.get("POD_NAME", ""))
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    from controller import kube
    from controller.runtime import Controller, Options

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    options = Options(
        namespace=args.namespace,
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
    )
    controller = Controller(kube.api_client(args.kubeconfig, args.context, args.as_user), options)
    stopping = threading.Event()

    def on_signal(signum, frame):  # SIGTERM from the kubelet, Ctrl-C from a laptop
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    controller.start()
    logging.getLogger("controller").info("started as %s", controller.identity)
    while not stopping.wait(0.5):
        if controller.lost_lease.is_set():
            return 1  # never keep running without the Lease: exit, the Deployment restarts us
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "run")  # `python -m controller --kubeconfig ...` runs the controller
    parser = argparse.ArgumentParser(prog="python -m controller", description="The DeepLabTraining operator")
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands.add_parser("run", help="run the controller"))
    crd_parser = commands.add_parser("crd", help="print the generated CRD")
    crd_parser.add_argument("--write", action="store_true", help="write manifests/crd.yaml")
    crd_parser.add_argument("--check", action="store_true", help="fail when manifests/crd.yaml is stale")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else crd(args)


if __name__ == "__main__":
    sys.exit(main())
