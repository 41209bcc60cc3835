"""``vmshift dev``: build, start, stop and inspect the embedded local control plane.

Glue only: argument parsing around ``vmshift.devcluster``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vmshift.devcluster import alertmanager, binaries
from vmshift.devcluster.cluster import ClusterState, ControlPlane, default_dir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("dev", help="the embedded local control plane (etcd, kube-apiserver, ...)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="cluster directory (default ~/.cache/vmshift/clusters/<name>)")
    parser.add_argument("--name", default="dev", help="cluster name, used for the default directory")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("build", help="build (or find) etcd, kube-apiserver, kube-controller-manager, kubectl")
    actions.add_parser("alertmanager", help="build (or find) Prometheus Alertmanager, the webhook tests' real peer")
    up = actions.add_parser("up", help="start the control plane and wait until /readyz answers")
    up.add_argument("--fresh", action="store_true", help="start from an empty etcd")
    actions.add_parser("down", help="stop every process of the control plane")
    actions.add_parser("status", help="print the control plane's processes and readiness as JSON")
    actions.add_parser("kubeconfig", help="print the admin kubeconfig's path")
    actions.add_parser("env", help="print shell exports for KUBECONFIG and PATH (eval \"$(vmshift dev env)\")")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directory = args.dir or default_dir(args.name)
    plane = ControlPlane(directory)
    if args.action == "build":
        bins = binaries.ensure()
        for name, path in vars(bins).items():
            print(f"{name}: {path}")
        return 0
    if args.action == "alertmanager":
        print(f"alertmanager: {alertmanager.ensure()}")
        return 0
    if args.action == "up":
        state = plane.up(fresh=args.fresh)
        print(f"export KUBECONFIG={state.kubeconfig}")
        return 0
    if args.action == "down":
        plane.down()
        return 0
    if args.action == "status":
        status = plane.status()
        print(json.dumps(status, indent=2))
        return 0 if status.get("ready") else 1
    running = ClusterState.load(directory)
    if running is None:
        print(f"no control plane in {directory}; start one with: vmshift dev up")
        return 1
    if args.action == "kubeconfig":
        print(running.kubeconfig)
    else:
        for key, value in running.env().items():
            print(f"export {key}={value}")
    return 0
