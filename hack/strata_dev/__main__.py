"""``python -m strata_dev``: build the binaries, run a local cluster with the GPU fleet, show it.

python -m strata_dev demo            # start, create the fleet, run Strata and the examples: queue, run, finish; stop
python -m strata_dev up [--nodes N]  # keep a dev cluster running in the background
                                     # (both add a real node that runs pods; --no-real-node: kwok-only)
python -m strata_dev down            # stop it
python -m strata_dev env             # print `export KUBECONFIG=...` for the running dev cluster
python -m strata_dev load-images TAR..  # import image tars into the dev cluster's real node (nothing is pulled)
python -m strata_dev images [NAME..] # build the container images (cached by content hash; IMAGE_BUILDER=docker)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from strata_api.fleet import FleetError
from strata_dev import binaries, dev_cluster, images
from strata_dev.cluster import ClusterError
from strata_dev.demo import run_demo
from strata_dev.fleet import DEFAULT_FLEET, Fleet, load_fleet
from strata_dev.pki import PKIError

REAL_NODE_HELP = (
    "add one real node (containerd, kubelet) that runs pods (default; needs root and make node-deps); "
    "--no-real-node: kwok nodes only, for a host that cannot run containers"
)


def parser() -> argparse.ArgumentParser:
    """The command line: ``demo`` and ``up`` add the real node unless told ``--no-real-node``."""
    top = argparse.ArgumentParser(prog="python -m strata_dev", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = top.add_subparsers(dest="command", required=True)
    for name in ("demo", "up", "_serve"):
        p = sub.add_parser(name)
        if name == "demo":
            p.add_argument("--wait", type=float, default=90, help="seconds to wait for the example jobs to settle")
        p.add_argument("--fleet", default=str(DEFAULT_FLEET), help="fleet file (default: examples/fleet.yaml)")
        p.add_argument("--nodes", type=int, default=0, help="scale the fleet's pools to this many nodes in all")
        p.add_argument("--real-node", action=argparse.BooleanOptionalAction, default=True, help=REAL_NODE_HELP)
    sub.add_parser("down")
    sub.add_parser("env")
    sub.add_parser("load-images").add_argument("archives", nargs="+", type=Path, help="docker-archive or OCI tars")
    sub.add_parser("images").add_argument("names", nargs="*", help="build only these images (default: all)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(_fleet(args), args.wait, args.real_node)
        if args.command == "up":
            return dev_cluster.up(args.fleet, args.nodes, args.real_node)
        if args.command == "_serve":
            return dev_cluster.serve(_fleet(args), args.real_node)
        if args.command == "down":
            return dev_cluster.down()
        if args.command == "load-images":
            return dev_cluster.load_images(args.archives)
        if args.command == "images":
            return images.build(args.names)
        print(dev_cluster.env_line())
        return 0
    except (ClusterError, FleetError, PKIError, binaries.BuildError, images.ImageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _fleet(args: argparse.Namespace) -> Fleet:
    """The fleet file, scaled to ``--nodes`` when given."""
    fleet = load_fleet(Path(args.fleet))
    return fleet.scaled(args.nodes) if args.nodes else fleet


if __name__ == "__main__":
    sys.exit(main())
