"""``vmshift operator``: run the Kopf operator (watch every vmshift kind, reconcile the fleet).

Glue only: flags become environment settings read at start-up, the token Secrets named by flags are
made if missing (``vmshift.controllers.tokens``), then Kopf runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from vmshift import metrics


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("operator", help="run the operator against the current kubeconfig")
    parser.add_argument("--standalone", action="store_true",
                        help="no Kopf peering: run as the only instance (the manifests run one replica "
                             "with Recreate, so never two at once)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("VMSHIFT_METRICS_PORT", "0")),
                        help="serve Prometheus metrics on this port (0: off)")
    parser.add_argument("--metrics-address", default=os.environ.get("VMSHIFT_METRICS_ADDRESS", "127.0.0.1"),
                        help="address the metrics endpoint binds (default 127.0.0.1; 0.0.0.0 in a pod)")
    parser.add_argument("--liveness", default=os.environ.get("VMSHIFT_LIVENESS") or None, metavar="URL",
                        help="serve Kopf's health endpoint for probes at this URL, e.g. http://0.0.0.0:8081/healthz "
                             "(answers once the operator has started)")
    parser.add_argument("--namespace", default=os.environ.get("VMSHIFT_NAMESPACE") or None,
                        help="the operator's own namespace, where the token Secrets live (default: the pod's)")
    parser.add_argument("--agent-token-secret", default=None, metavar="NAME",
                        help="make Secret NAME (key token) in the operator's namespace with a random agent token "
                             "if it is missing; the agents mount it and the Hosts reference it")
    parser.add_argument("--webhook-token-secret", default=None, metavar="NAME",
                        help="take the webhook's bearer token from Secret NAME (key token) in the operator's "
                             "namespace, made with a random token if missing")
    parser.add_argument("--agent-poll-seconds", type=float, default=None,
                        help="how often each Host's agent is polled (default 2)")
    parser.add_argument("--keep-finished-migrations", type=int, default=None,
                        help="finished migrations kept per VM (default 5)")
    parser.add_argument("--webhook-port", type=int, default=int(os.environ.get("VMSHIFT_WEBHOOK_PORT") or 0),
                        help="serve the Alertmanager webhook receiver (POST /alerts) on this port (0: off); the "
                             "bearer token comes from VMSHIFT_WEBHOOK_TOKEN or --webhook-token-file")
    parser.add_argument("--webhook-address", default=os.environ.get("VMSHIFT_WEBHOOK_ADDRESS", "0.0.0.0"),
                        help="address the webhook receiver binds (default 0.0.0.0)")
    parser.add_argument("--webhook-token-file", default=os.environ.get("VMSHIFT_WEBHOOK_TOKEN_FILE"),
                        help="file holding the webhook's bearer token (e.g. a mounted Secret)")
    parser.add_argument("--webhook-max-bytes", type=int, default=None,
                        help="largest webhook body accepted, in bytes (default 1 MiB)")
    parser.add_argument("--loop-lag-record", default=None, metavar="FILE",
                        help="also append every sample of the event loop's lag (every 10 ms) to FILE, one line "
                             "'<monotonic seconds> <lag seconds>' each, flushed once a second (for benchmarks)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    from vmshift.controllers.tokens import TokenSecretError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # Kopf logs every successful handler call at INFO; with thousands of objects that is noise.
    logging.getLogger("kopf.objects").addFilter(
        lambda record: not record.getMessage().endswith(" succeeded."))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.agent_poll_seconds is not None:
        os.environ["VMSHIFT_AGENT_POLL_SECONDS"] = str(args.agent_poll_seconds)
    if args.keep_finished_migrations is not None:
        os.environ["VMSHIFT_KEEP_FINISHED_MIGRATIONS"] = str(args.keep_finished_migrations)
    if args.loop_lag_record:
        os.environ["VMSHIFT_LOOP_LAG_RECORD"] = args.loop_lag_record
    if args.namespace:  # the one namespace the token Secrets are made and read in
        os.environ["VMSHIFT_NAMESPACE"] = args.namespace
    if args.agent_token_secret or args.webhook_token_secret:
        try:
            webhook_token = ensure_tokens(args)
        except TokenSecretError as exc:
            print(f"vmshift operator: {exc}", file=sys.stderr)
            return 2
        if webhook_token:
            os.environ["VMSHIFT_WEBHOOK_TOKEN"] = webhook_token
    if args.webhook_port:
        from vmshift.remediation.webhook import WebhookConfigError, load_token

        os.environ["VMSHIFT_WEBHOOK_PORT"] = str(args.webhook_port)
        os.environ["VMSHIFT_WEBHOOK_ADDRESS"] = args.webhook_address
        if args.webhook_token_file:
            os.environ["VMSHIFT_WEBHOOK_TOKEN_FILE"] = args.webhook_token_file
        if args.webhook_max_bytes is not None:
            os.environ["VMSHIFT_WEBHOOK_MAX_BYTES"] = str(args.webhook_max_bytes)
        try:
            load_token()
        except WebhookConfigError as exc:
            print(f"vmshift operator: {exc}", file=sys.stderr)
            return 2
    import vmshift.controllers.startup  # noqa: F401  - registers the handlers

    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    asyncio.run(kopf.operator(standalone=args.standalone, clusterwide=True, liveness_endpoint=args.liveness))
    return 0


def ensure_tokens(args: argparse.Namespace) -> str | None:
    """Make the token Secrets the flags name (when missing); return the webhook's token, if one was named."""
    import kubernetes

    from vmshift.controllers import kubeapi, tokens
    from vmshift.controllers.agents import AGENT_HOSTS_ANNOTATION

    namespace = tokens.operator_namespace()
    kubeapi.configure()
    core = kubernetes.client.CoreV1Api()
    log = logging.getLogger("vmshift.tokens")
    webhook_token = None
    for name, is_webhook in ((args.agent_token_secret, False), (args.webhook_token_secret, True)):
        if not name:
            continue
        # the fleet's own agent token serves every Host (a person binds other Secrets to named Hosts)
        annotations = {} if is_webhook else {AGENT_HOSTS_ANNOTATION: "*"}
        token, created = tokens.ensure_token_secret(core, namespace, name, annotations=annotations)
        log.info("%s Secret %s/%s", "made" if created else "using", namespace, name)
        if is_webhook:
            webhook_token = token
    return webhook_token
