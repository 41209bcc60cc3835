"""The Alertmanager webhook receiver: an aiohttp server that authenticates, limits and parses, then hands alerts on.

HTTP only: no Kubernetes calls and no decisions. Each alert of a valid payload goes to an
:class:`AlertSink` (the remediation controller), which says which Hosts it names and records it.

The contract, as Alertmanager's ``webhook_config`` expects it (``url: http://<operator>:<port>/alerts``,
``http_config.authorization.credentials`` or ``credentials_file`` holding the token):

* ``POST /alerts`` with ``Authorization: Bearer <token>`` and the standard v4 JSON payload.
* 401 without the right token (compared in constant time), 413 over the size limit, 400 for a body
  that is not a valid v4 payload (the message names the bad field); nothing is recorded then.
* 503 while the operator has not loaded its view of the fleet yet (Alertmanager retries).
* 200 otherwise, with a JSON summary. An alert that names no known Host is not an error: the sink
  turns it into an event.
* ``GET /healthz`` answers 200 without authentication (liveness probes).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from vmshift import metrics
from vmshift.remediation.alerts import Alert, AlertPayloadError, parse_alertmanager_payload

log = logging.getLogger("vmshift.webhook")

#: Default size limit of one webhook body: far above what Alertmanager sends for one group.
DEFAULT_MAX_BYTES = 1024 * 1024
#: Default limit of alerts in one body.
DEFAULT_MAX_ALERTS = 1000
_READ_CHUNK = 64 * 1024


class WebhookConfigError(Exception):
    """The receiver cannot start as configured (no token); the message says what to set."""


@dataclass(frozen=True)
class WebhookConfig:
    token: str
    max_bytes: int = DEFAULT_MAX_BYTES
    max_alerts: int = DEFAULT_MAX_ALERTS


class AlertSink(Protocol):
    """Where accepted alerts go."""

    def ready(self) -> bool:
        """Whether the sink knows the fleet yet (until then the receiver answers 503)."""

    def hosts_named(self, alert: Alert) -> list[str]:
        """The known Hosts the alert names (by the host label of any RemediationPolicy)."""

    def accept(self, host: str, alert: Alert) -> None:
        """Record the alert about ``host`` and wake whatever acts on it."""

    def unknown(self, alert: Alert) -> None:
        """An alert that names no known Host: report it (an event), do nothing else."""


def load_token(env: Mapping[str, str] | None = None, path: str | None = None) -> str:
    """The receiver's bearer token: ``VMSHIFT_WEBHOOK_TOKEN``, else the file ``path`` (or
    ``VMSHIFT_WEBHOOK_TOKEN_FILE``), surrounding whitespace stripped."""
    env = os.environ if env is None else env
    token = (env.get("VMSHIFT_WEBHOOK_TOKEN") or "").strip()
    file = path or env.get("VMSHIFT_WEBHOOK_TOKEN_FILE")
    if not token and file:
        try:
            token = Path(file).read_text().strip()
        except OSError as exc:
            raise WebhookConfigError(f"cannot read the webhook token file {file}: {exc.strerror}") from None
    if not token:
        raise WebhookConfigError(
            "the Alertmanager webhook receiver needs a bearer token: set VMSHIFT_WEBHOOK_TOKEN or "
            "VMSHIFT_WEBHOOK_TOKEN_FILE (or --webhook-token-file); it refuses to run unauthenticated"
        )
    return token


def _problem(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _authorized(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, read to its end, or None as soon as it passes ``limit`` bytes.

    One ``content.read(n)`` returns what has arrived so far, which for a large group (hundreds of
    alerts, chunked or simply split over TCP reads) is only its beginning.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(config: WebhookConfig, sink: AlertSink) -> web.Application:
    """The receiver as an aiohttp application (tests drive it with aiohttp's test client)."""

    async def alerts(request: web.Request) -> web.Response:
        if not _authorized(request, config.token):
            log.warning("webhook call from %s refused: missing or wrong bearer token", request.remote)
            return _problem(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                            **{"WWW-Authenticate": 'Bearer realm="vmshift"'})
        if request.content_length is not None and request.content_length > config.max_bytes:
            return _problem(413, f"the body ({request.content_length} bytes) is over the limit of "
                                 f"{config.max_bytes} bytes")
        body = await read_limited(request, config.max_bytes)
        if body is None:
            return _problem(413, f"the body is over the limit of {config.max_bytes} bytes")
        try:
            payload = parse_alertmanager_payload(body, max_alerts=config.max_alerts)
        except AlertPayloadError as exc:
            log.warning("webhook call refused: %s", exc)
            return _problem(400, str(exc))
        if not sink.ready():
            return _problem(503, "the operator is still loading its view of the fleet; retry shortly",
                            **{"Retry-After": "5"})
        accepted: list[dict[str, str]] = []
        unknown: list[str] = []
        for alert in payload.alerts:
            hosts = sink.hosts_named(alert)
            if not hosts:
                sink.unknown(alert)
                unknown.append(alert.alertname or "(no alertname)")
                continue
            for host in hosts:
                sink.accept(host, alert)
                accepted.append({"alertname": alert.alertname, "host": host, "status": alert.status})
        log.info("webhook: %d alert(s) recorded, %d naming no known host (receiver %s, group %s)",
                 len(accepted), len(unknown), payload.receiver, payload.group_key)
        return web.json_response({"accepted": accepted, "unknownHost": unknown})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.WEBHOOK_REQUESTS.labels(code=str(exc.status)).inc()
            raise
        metrics.WEBHOOK_REQUESTS.labels(code=str(response.status)).inc()
        return response

    # client_max_size bounds what aiohttp itself buffers; the handler stops reading past max_bytes.
    app = web.Application(client_max_size=config.max_bytes + 1, middlewares=[count])
    app.router.add_post("/alerts", alerts)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(config: WebhookConfig, sink: AlertSink, address: str, port: int) -> web.AppRunner:
    """Start the receiver on ``address:port``; the caller keeps the runner and calls ``cleanup()``."""
    runner = web.AppRunner(make_app(config, sink), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, port)
    await site.start()
    log.info("Alertmanager webhook receiver listens on http://%s:%d/alerts", address, port)
    return runner
