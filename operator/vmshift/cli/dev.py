"""``vmshift dev``: build, start, stop and inspect the embedded local control plane and a real node;
build the image.

Glue only: argument parsing around ``vmshift.devcluster``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmshift.devcluster import alertmanager, binaries, guestimage, promtool
from vmshift.devcluster import node as devnode
from vmshift.devcluster.cluster import ClusterState, ControlPlane, default_dir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("dev", help="the embedded local control plane (etcd, kube-apiserver, ...)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="cluster directory (default ~/.cache/vmshift/clusters/<name>)")
    parser.add_argument("--name", default="dev", help="cluster name, used for the default directory")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("build", help="build (or find) etcd, kube-apiserver, kube-controller-manager, kubectl")
    actions.add_parser("alertmanager", help="build (or find) Prometheus Alertmanager, the webhook tests' real peer")
    actions.add_parser("promtool", help="build (or find) Prometheus' promtool, which checks the alerting rules")
    actions.add_parser("guest-image", help="build (or find) the real guest the QEMU driver boots: a Debian kernel "
                                           "and a busybox initramfs, cached in ~/.cache/vmshift/guest")
    up = actions.add_parser("up", help="start the control plane and wait until /readyz answers")
    up.add_argument("--fresh", action="store_true", help="start from an empty etcd")
    actions.add_parser("down", help="stop every process of the control plane")
    actions.add_parser("status", help="print the control plane's processes and readiness as JSON")
    actions.add_parser("kubeconfig", help="print the admin kubeconfig's path")
    actions.add_parser("env", help="print shell exports for KUBECONFIG and PATH (eval \"$(vmshift dev env)\")")
    node = actions.add_parser("node", help="a one-node cluster with real pods: the control plane plus containerd, "
                                           "kubelet, kube-scheduler, kube-proxy and CoreDNS (root)")
    node.add_argument("--dir", dest="node_dir", type=Path, default=None,
                      help="cluster directory (default ~/.cache/vmshift/clusters/kube)")
    node_actions = node.add_subparsers(dest="node_action", required=True, metavar="ACTION")
    node_up = node_actions.add_parser("up", help="build what is missing, start everything, wait for the node Ready")
    node_up.add_argument("--fresh", action="store_true", help="start from an empty etcd")
    node_actions.add_parser("down", help="stop everything; remove the containers, mounts, rules and bridge made")
    node_actions.add_parser("status", help="print the node's processes and readiness as JSON")
    node_actions.add_parser("env", help="print shell exports for KUBECONFIG and PATH")
    load = node_actions.add_parser("load", help="copy images from the local Docker daemon into the node")
    load.add_argument("images", nargs="+", help="image references known to `docker images`")
    image = actions.add_parser(
        "image", help="build the container image vmshift:<version> and vmshift:dev (no registry needed)",
        description="Build the one image of the operator and the agents from this checkout: a Debian base made "
                    "with mmdebstrap, wheels fetched on this machine, docker build. Cached under "
                    "~/.cache/vmshift/image; a second run takes seconds.")
    image.add_argument("--base-image", default=None,
                       help="build on this image instead of the local Debian base (CPython 3.11 as python3, "
                            "e.g. python:3.11-slim)")
    parser.set_defaults(func=run)


def run_node(args: argparse.Namespace) -> int:
    directory = args.node_dir or devnode.default_dir()
    node = devnode.Node(directory)
    if args.node_action == "up":
        state = node.up(fresh=args.fresh)
        print(f"export KUBECONFIG={state.kubeconfig}")
        return 0
    if args.node_action == "down":
        node.down()
        return 0
    if args.node_action == "status":
        status = node.status()
        print(json.dumps(status, indent=2))
        return 0 if status.get("ready") else 1
    if args.node_action == "load":
        node.load_images(args.images)
        return 0
    running = ClusterState.load(directory)
    if running is None:
        print(f"no cluster in {directory}; start one with: vmshift dev node up")
        return 1
    for key, value in running.env().items():
        print(f"export {key}={value}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "node":
        return run_node(args)
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
    if args.action == "promtool":
        print(f"promtool: {promtool.ensure()}")
        return 0
    if args.action == "guest-image":
        image = guestimage.ensure()
        print(f"kernel: {image.kernel}")
        print(f"initrd: {image.initrd}")
        return 0
    if args.action == "image":
        return build_image(args.base_image)
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


def build_image(base_image: str | None) -> int:
    from vmshift.devcluster import image

    try:
        result = image.build(base_image)
    except image.ImageBuildError as exc:
        print(f"vmshift dev image: {exc}", file=sys.stderr)
        return 1
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.steps.items())
    print(f"built {' '.join(result.tags)} on {result.base_image}: {result.size_bytes / 1e6:.0f} MB, "
          f"{result.seconds:.1f} s ({steps})")
    return 0
