"""``vmshift operator``: run the Kopf operator (watch every vmshift kind, reconcile the fleet).

Glue only: flags become environment settings read at start-up, then Kopf runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from vmshift import metrics


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("operator", help="run the operator against the current kubeconfig")
    parser.add_argument("--standalone", action="store_true",
                        help="no peering: run even if another operator instance is active (tests)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("VMSHIFT_METRICS_PORT", "0")),
                        help="serve Prometheus metrics on this port (0: off)")
    parser.add_argument("--agent-poll-seconds", type=float, default=None,
                        help="how often each Host's agent is polled (default 2)")
    parser.add_argument("--keep-finished-migrations", type=int, default=None,
                        help="finished migrations kept per VM (default 5)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    if args.agent_poll_seconds is not None:
        os.environ["VMSHIFT_AGENT_POLL_SECONDS"] = str(args.agent_poll_seconds)
    if args.keep_finished_migrations is not None:
        os.environ["VMSHIFT_KEEP_FINISHED_MIGRATIONS"] = str(args.keep_finished_migrations)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # Kopf logs every successful handler call at INFO; with thousands of objects that is noise.
    logging.getLogger("kopf.objects").addFilter(
        lambda record: not record.getMessage().endswith(" succeeded."))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    import vmshift.controllers.startup  # noqa: F401  - registers the handlers

    if args.metrics_port:
        metrics.serve(args.metrics_port)
    asyncio.run(kopf.operator(standalone=args.standalone, clusterwide=True))
    return 0
