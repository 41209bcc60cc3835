"""The Alertmanager webhook receiver: token, size limit, payload errors, unknown hosts, what reaches the sink."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from vmshift.remediation.alerts import Alert
from vmshift.remediation.webhook import WebhookConfig, WebhookConfigError, load_token, make_app

TOKEN = "s3cret-token"


class Sink:
    def __init__(self, hosts: set[str], ready: bool = True) -> None:
        self.hosts = hosts
        self.is_ready = ready
        self.accepted: list[tuple[str, str, str]] = []
        self.unknowns: list[str] = []

    def ready(self) -> bool:
        return self.is_ready

    def hosts_named(self, alert: Alert) -> list[str]:
        host = alert.labels.get("host")
        return [host] if host in self.hosts else []

    def accept(self, host: str, alert: Alert) -> None:
        self.accepted.append((host, alert.alertname, alert.status))

    def unknown(self, alert: Alert) -> None:
        self.unknowns.append(alert.alertname)


def body(*alerts: dict[str, str], status: str = "firing") -> str:
    return json.dumps({
        "version": "4", "groupKey": "g", "status": status, "receiver": "vmshift",
        "alerts": [{"status": status, "labels": labels, "startsAt": "2030-01-01T00:00:00Z"} for labels in alerts],
    })


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, Sink]]:
    sink = Sink({"h1"})
    server = TestServer(make_app(WebhookConfig(TOKEN, max_bytes=4096), sink))
    async with TestClient(server) as c:
        yield c, sink


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_alerts_reach_the_sink_and_unknown_hosts_are_reported(client: tuple[TestClient, Sink]) -> None:
    c, sink = client
    response = await c.post("/alerts", data=body({"alertname": "FanFailure", "host": "h1"},
                                                 {"alertname": "FanFailure", "host": "nope"}), headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert answer == {"accepted": [{"alertname": "FanFailure", "host": "h1", "status": "firing"}],
                      "unknownHost": ["FanFailure"]}
    assert sink.accepted == [("h1", "FanFailure", "firing")] and sink.unknowns == ["FanFailure"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
async def test_calls_without_the_token_are_refused(client: tuple[TestClient, Sink], headers: dict[str, str]) -> None:
    c, sink = client
    response = await c.post("/alerts", data=body({"alertname": "FanFailure", "host": "h1"}), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert sink.accepted == []


@pytest.mark.parametrize(("data", "needle"), [
    ("{", "not JSON"),
    ("[]", "expected a JSON object"),
    (json.dumps({"version": "4"}), "groupKey"),
    (body({"alertname": "x", "host": "h1"}).replace('"4"', '"3"'), "version"),
    (json.dumps({"version": "4", "groupKey": "g", "status": "firing", "receiver": "r",
                 "alerts": [{"status": "bogus", "labels": {}, "startsAt": "2030-01-01T00:00:00Z"}]}),
     "alerts[0].status"),
])
async def test_malformed_payloads_get_400_naming_the_field(client: tuple[TestClient, Sink], data: str,
                                                           needle: str) -> None:
    c, sink = client
    response = await c.post("/alerts", data=data, headers=AUTH)
    assert response.status == 400
    assert needle in (await response.json())["error"]
    assert sink.accepted == [] and sink.unknowns == []


async def test_bodies_over_the_limit_get_413(client: tuple[TestClient, Sink]) -> None:
    c, sink = client
    response = await c.post("/alerts", data=b"x" * 5000, headers=AUTH)
    assert response.status == 413
    assert sink.accepted == []


async def test_not_ready_answers_503_so_alertmanager_retries() -> None:
    sink = Sink({"h1"}, ready=False)
    async with TestClient(TestServer(make_app(WebhookConfig(TOKEN), sink))) as c:
        response = await c.post("/alerts", data=body({"alertname": "FanFailure", "host": "h1"}), headers=AUTH)
        assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert (await c.get("/healthz")).status == 200


def test_the_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert load_token({"VMSHIFT_WEBHOOK_TOKEN": " abc \n"}) == "abc"
    file = tmp_path / "token"
    file.write_text("from-file\n")
    assert load_token({"VMSHIFT_WEBHOOK_TOKEN_FILE": str(file)}) == "from-file"
    assert load_token({}, str(file)) == "from-file"
    with pytest.raises(WebhookConfigError, match="needs a bearer token"):
        load_token({})
    with pytest.raises(WebhookConfigError, match="cannot read"):
        load_token({}, str(tmp_path / "missing"))


async def _in_pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    """A body sent chunked, a piece at a time, as a large notification arrives over TCP."""
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)


async def test_a_large_group_sent_in_pieces_is_read_whole() -> None:
    """500 alerts (about 150 KiB) arrive in many TCP reads: the receiver reads to the end, not one read's worth."""
    sink = Sink({f"h{i}" for i in range(500)})
    alerts = [{"alertname": "FanFailure", "host": f"h{i}", "rack": "r" * 200} for i in range(500)]
    data = body(*alerts).encode()
    assert len(data) > 100_000
    async with TestClient(TestServer(make_app(WebhookConfig(TOKEN), sink))) as c:
        response = await c.post("/alerts", data=_in_pieces(data, 4096), headers=AUTH)
        assert response.status == 200, await response.text()
        assert len((await response.json())["accepted"]) == 500
    assert len(sink.accepted) == 500


async def test_a_chunked_body_over_the_limit_gets_413_without_a_length() -> None:
    """No Content-Length to check up front: the limit holds while reading."""
    sink = Sink({"h1"})
    async with TestClient(TestServer(make_app(WebhookConfig(TOKEN, max_bytes=4096), sink))) as c:
        response = await c.post("/alerts", data=_in_pieces(b"x" * 20_000, 1000), headers=AUTH)
        assert response.status == 413
        assert "over the limit of 4096 bytes" in (await response.json())["error"]
    assert sink.accepted == []
