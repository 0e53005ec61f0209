"""`python -m envtest {build,up,down,node,node-down,images,demo}`: what `make cluster`, `make node` & co. run.

``up``/``down`` start and stop the test control plane (state in ``.cluster``); ``node``/``node-down`` the
real one-node cluster (state in ``.node``; needs root, see envtest/node.py); ``images`` builds the
project's images with podman (content-hash cached) and, with ``--node``, imports them into a running node;
``demo`` runs the whole system on the node (envtest/demo.py, its own options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from envtest import demo, images
from envtest.binaries import NODE_PACKAGES, PACKAGES, BinariesUnavailable, ensure_binaries, ensure_coredns
from envtest.node import new_node, node_components, socket
from envtest.plane import ControlPlane, ControlPlaneError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        return demo.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m envtest", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "node", "node-down", "images", "demo"])
    parser.add_argument(
        "--dir", type=Path, help="state directory (default .cluster, or .node for node commands)"
    )
    parser.add_argument("--node", action="store_true", help="build: also the node binaries; images: import")
    parser.add_argument("--dns", action="store_true", help="build: also CoreDNS (minutes, cold)")
    args = parser.parse_args(argv)
    node = args.command.startswith("node") or args.node
    workdir = (args.dir or Path(".node" if node else ".cluster")).resolve()
    try:
        if args.command == "build":
            print(ensure_binaries(names=(*PACKAGES, *(NODE_PACKAGES if args.node else ()))))
            if args.dns:
                print(ensure_coredns())
        elif args.command in ("up", "node"):
            return _up(workdir, node=args.command == "node")
        elif args.command == "images":
            return _images(workdir if args.node else None)
        else:
            _down(workdir)
    except (BinariesUnavailable, ControlPlaneError, images.ImageError) as error:
        print(f"envtest: {error}", file=sys.stderr)
        return 1
    return 0


def _images(node_dir: Path | None) -> int:
    """Build (or find) every image; import them when a node runs from ``node_dir``."""
    tags = images.build_all(sys.stdout)
    for short, tag in tags.items():
        print(f"{short}: {tag}")
    if node_dir is not None:
        if ControlPlane.recorded_kind(node_dir) != "node":
            print(f"envtest: no node recorded in {node_dir}; start one with 'make node'", file=sys.stderr)
            return 1
        images.import_all(socket(ControlPlane(node_dir, Path())), tags, sys.stdout)
        print(f"envtest: imported {len(tags)} images into the node's containerd")
    return 0


def _up(workdir: Path, node: bool) -> int:
    running = ControlPlane.from_state(workdir)
    if running is not None:
        print(f"envtest: a {running.kind} already runs from {workdir} ({running.server})")
        print(f"envtest: stop it first with 'make {'node-down' if node else 'cluster-down'}'")
        return 1
    plane = new_node(workdir) if node else ControlPlane(workdir, ensure_binaries())
    plane.start()
    print(f"kube-apiserver {plane.version()} at {plane.server} (pids {plane.pids})")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print(f"  {plane.kubectl} --kubeconfig {plane.kubeconfig} get --raw /readyz")
    print(f"  stop it with: make {'node-down' if node else 'cluster-down'}")
    return 0


def _down(workdir: Path) -> None:
    kind = ControlPlane.recorded_kind(workdir)
    plane = ControlPlane.from_state(workdir, node_components() if kind == "node" else None)
    if plane is None:
        print(f"envtest: no control plane recorded in {workdir}")
        return
    pids = sorted(plane.pids.values())
    plane.stop()
    print(f"envtest: stopped pids {pids} and removed {workdir}")


if __name__ == "__main__":
    sys.exit(main())
