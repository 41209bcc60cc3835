"""``vmshift agent``: run one hypervisor host (its API and migration ports) in this process.

Its guests are simulated, or real ones under QEMU with ``--driver qemu``.

Parses the command line into a HostConfig and hands over to vmshift.hypervisor.server.run_agent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from vmshift.hypervisor.host import HostConfig
from vmshift.processor import processor_info


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent", help="run a simulated hypervisor host",
        description="Run one simulated hypervisor host: a management API (HTTP, bearer token; /healthz and "
                    "/readyz answer probes without it) and a migration port (TCP, one-time tickets). Arguments "
                    "can also come from a file, one a line: vmshift agent @FILE (as the agents' StatefulSet "
                    "does, one file per pod).",
        fromfile_prefix_chars="@",
    )
    parser.add_argument("--name", required=True, help="host name")
    parser.add_argument("--cpu-model", required=True, help="archspec microarchitecture, e.g. icelake, zen3")
    parser.add_argument("--cores", type=int, default=32, help="physical cores offered to VMs (default 32)")
    parser.add_argument("--memory-mib", type=int, default=262144, help="memory offered to VMs in MiB")
    parser.add_argument("--bandwidth-mbps", type=float, default=10000.0,
                        help="migration link rate in Mbit/s (0: unlimited)")
    parser.add_argument("--shared-volume", action="append", default=[], metavar="NAME",
                        help="a Cluster Shared Volume this host mounts (repeatable)")
    parser.add_argument("--passthrough-lun", action="append", default=[], metavar="NAME",
                        help="a pass-through LUN this host sees (repeatable)")
    parser.add_argument("--token-file", required=True, type=Path, help="file holding the API bearer token")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--advertise-host", default=None,
                        help="address other agents use to reach this one (default: --listen, or 127.0.0.1)")
    parser.add_argument("--advertise-migration-port", type=int, default=0,
                        help="migration port other agents dial, when a proxy, NAT or Service forwards to "
                             "--migration-port (default 0: the port the listener is bound to)")
    parser.add_argument("--api-port", type=int, default=0, help="API port (0: any free port)")
    parser.add_argument("--migration-port", type=int, default=0, help="migration port (0: any free port)")
    parser.add_argument("--reservation-seconds", type=float, default=30.0,
                        help="how long an incoming migration's reservation waits for its stream")
    parser.add_argument("--ready-file", type=Path, default=None,
                        help="write the actual ports here (JSON) once both listeners are up")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="shut down when the process that started the agent dies")
    parser.add_argument("--driver", choices=("simulated", "qemu"), default="simulated",
                        help="what runs the guests: simulated (default) or qemu (real Linux guests under QEMU, "
                             "KVM where it works, else TCG)")
    parser.add_argument("--driver-dir", type=Path, default=None,
                        help="qemu: where guests' consoles, monitors and local disks go")
    parser.add_argument("--shared-dir", type=Path, default=None,
                        help="qemu: the directory standing for the cluster shared volumes (one subdirectory per "
                             "--shared-volume; quick migrations save guests' state here); every host must see "
                             "the same one")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                        help="qemu: the accelerator (auto: KVM when a probe guest boots under it, else TCG)")
    parser.add_argument("--qemu-switchover-hold-seconds", type=float, default=0.0,
                        help="qemu: hold a converged live migration's switchover for the operator's go at most "
                             "this long, with the guest already paused (it adds to the downtime); 0 (default): "
                             "switch over at once")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    try:
        processor_info(args.cpu_model)
        token = args.token_file.read_text().strip()
    except (ValueError, OSError) as exc:
        print(f"vmshift agent: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"vmshift agent: the token file {args.token_file} is empty", file=sys.stderr)
        return 2
    if not 0 <= args.advertise_migration_port <= 65535:
        print(f"vmshift agent: --advertise-migration-port {args.advertise_migration_port} is not a TCP port "
              "(0-65535)", file=sys.stderr)
        return 2
    if args.cores < 1 or args.memory_mib < 1:
        print("vmshift agent: --cores and --memory-mib must be positive", file=sys.stderr)
        return 2
    if not 0 <= args.qemu_switchover_hold_seconds <= 20:
        print("vmshift agent: --qemu-switchover-hold-seconds must be from 0 to 20", file=sys.stderr)
        return 2
    if args.driver == "qemu" and (args.driver_dir is None or args.shared_dir is None):
        print("vmshift agent: --driver qemu needs --driver-dir and --shared-dir", file=sys.stderr)
        return 2
    advertise = args.advertise_host or (args.listen if args.listen not in ("0.0.0.0", "::") else "127.0.0.1")
    config = HostConfig(
        name=args.name, cpu_model=args.cpu_model, cores=args.cores, memory_mib=args.memory_mib,
        bandwidth_mbps=args.bandwidth_mbps, shared_volumes=tuple(args.shared_volume),
        passthrough_luns=tuple(args.passthrough_lun), advertise_host=advertise,
        advertise_migration_port=args.advertise_migration_port,
        reservation_seconds=args.reservation_seconds, driver=args.driver,
        driver_dir=args.driver_dir.resolve() if args.driver_dir else None,
        shared_dir=args.shared_dir.resolve() if args.shared_dir else None, accel=args.accel,
        qemu_switchover_hold_seconds=args.qemu_switchover_hold_seconds,
    )
    from vmshift.hypervisor.server import run_agent

    try:
        return asyncio.run(run_agent(config, token, listen=args.listen, api_port=args.api_port,
                                     migration_port=args.migration_port, ready_file=args.ready_file,
                                     exit_with_parent=args.exit_with_parent))
    except OSError as exc:  # a port in use, an address not on this machine
        print(f"vmshift agent: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the driver cannot run here (no guest image, no QEMU)
        print(f"vmshift agent: {exc}", file=sys.stderr)
        return 2
