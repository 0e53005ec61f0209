"""`python -m envtest {build,up,down}`: what `make cluster` and `make cluster-down` run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from envtest.binaries import BinariesUnavailable, ensure_binaries
from envtest.plane import ControlPlane, ControlPlaneError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envtest", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down"])
    parser.add_argument(
        "--dir", type=Path, default=Path(".cluster"), help="state directory (default .cluster)"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_binaries())
        elif args.command == "up":
            return _up(args.dir.resolve())
        else:
            _down(args.dir.resolve())
    except (BinariesUnavailable, ControlPlaneError) as error:
        print(f"envtest: {error}", file=sys.stderr)
        return 1
    return 0


def _up(workdir: Path) -> int:
    running = ControlPlane.from_state(workdir)
    if running is not None:
        print(f"envtest: a control plane already runs from {workdir} ({running.server})")
        print("envtest: stop it first with 'make cluster-down'")
        return 1
    plane = ControlPlane(workdir, ensure_binaries())
    plane.start()
    print(f"kube-apiserver {plane.version()} at {plane.server} (pids {plane.pids})")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print(f"  {plane.kubectl} --kubeconfig {plane.kubeconfig} get --raw /readyz")
    print("  stop it with: make cluster-down")
    return 0


def _down(workdir: Path) -> None:
    plane = ControlPlane.from_state(workdir)
    if plane is None:
        print(f"envtest: no control plane recorded in {workdir}")
        return
    pids = sorted(plane.pids.values())
    plane.stop()
    print(f"envtest: stopped pids {pids} and removed {workdir}")


if __name__ == "__main__":
    sys.exit(main())
