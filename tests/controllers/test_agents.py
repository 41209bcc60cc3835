"""The agent directory's trust and load boundaries: which Secret it reads, which credential it sends where,
what of an agent's reply reaches status, how a black-holed rack shares the pool, how polls back off."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from vmshift.controllers import agents as agents_module
from vmshift.controllers import kubeapi
from vmshift.controllers.agents import (
    AGENT_HOSTS_ANNOTATION,
    FAILURES_TO_UNREACHABLE,
    AgentConfigError,
    AgentDirectory,
    poll_delay,
    token_secret,
)
from vmshift.hypervisor.client import MAX_MESSAGE_CHARS, AgentError, HypervisorClient
from vmshift.hypervisor.launcher import AgentConfig, AgentProcess, start_agent

TOKEN = "test-token-0123456789"

SYSTEM = "vmshift-system"


# -- which Secret, which credential ------------------------------------------------------------------


def test_the_token_secret_must_live_in_the_operators_namespace() -> None:
    assert token_secret("h1", {"name": "t", "namespace": SYSTEM}, SYSTEM) == (SYSTEM, "t", "token")
    assert token_secret("h1", {"name": "t", "key": "k"}, SYSTEM) == (SYSTEM, "t", "k")
    with pytest.raises(AgentConfigError) as caught:
        token_secret("h1", {"name": "db-password", "namespace": "tenant-a", "key": "password"}, SYSTEM)
    assert caught.value.reason == "TokenSecretOutsideOperatorNamespace"
    assert "tenant-a/db-password" in caught.value.message and SYSTEM in caught.value.message
    with pytest.raises(AgentConfigError) as missing:
        token_secret("h1", None, SYSTEM)
    assert missing.value.reason == "AgentTokenMissing"


#: The annotation each test Secret carries (vmshift.io/agent-hosts), by Secret name; "*" otherwise.
SECRET_HOSTS: dict[str, str] = {"for-h2": "h2,h3", "unbound": ""}


@pytest.fixture
def secrets_read(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Every Secret the directory asks the API server for; each holds TOKEN."""
    read: list[tuple[str, str, str]] = []

    async def read_secret(namespace: str, name: str, key: str) -> tuple[str | None, dict[str, str]]:
        read.append((namespace, name, key))
        hosts = SECRET_HOSTS.get(name, "*")
        return TOKEN, {AGENT_HOSTS_ANNOTATION: hosts} if hosts else {}

    monkeypatch.setattr(kubeapi, "read_secret", read_secret)
    monkeypatch.setenv("VMSHIFT_NAMESPACE", SYSTEM)
    return read


async def test_a_secret_in_another_namespace_is_never_read(secrets_read: list[tuple[str, str, str]]) -> None:
    directory = AgentDirectory()
    spec = {"agent": {"endpoint": "http://collector.example:80",
                      "tokenSecretRef": {"name": "db-password", "namespace": "tenant-a", "key": "password"}}}
    with pytest.raises(AgentConfigError, match="only from its own namespace"):
        await directory.link("h1", spec)
    assert secrets_read == []
    await directory.close()


async def test_the_operators_own_credential_is_never_sent_to_a_spec_endpoint(
        secrets_read: list[tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A Host without tokenSecretRef gets no credential, even when the operator's environment has one."""
    monkeypatch.setenv("VMSHIFT_AGENT_TOKEN", "the-operators-fleet-wide-secret")
    directory = AgentDirectory()
    with pytest.raises(AgentConfigError) as caught:
        await directory.link("h1", {"agent": {"endpoint": "http://collector.example:80"}})
    assert caught.value.reason == "AgentTokenMissing"
    assert directory.get("h1") is None
    await directory.close()


async def test_a_token_goes_only_to_the_hosts_its_secret_names(secrets_read: list[tuple[str, str, str]]) -> None:
    """Another host's token cannot be sent to an endpoint a Host's author chose."""
    directory = AgentDirectory()

    async def use(host: str, secret: str) -> str:
        spec = {"agent": {"endpoint": f"http://{host}.example:80", "tokenSecretRef": {"name": secret}}}
        try:
            await directory.link(host, spec)
        except AgentConfigError as exc:
            return exc.reason
        return "ok"

    assert await use("h2", "for-h2") == "ok"
    assert await use("h3", "for-h2") == "ok"
    assert await use("h1", "for-h2") == "TokenSecretNotForHost"
    assert await use("h1", "unbound") == "TokenSecretNotForHost"
    assert await use("h1", "shared") == "ok"  # annotated *
    await directory.close()


# -- what of a reply reaches status ------------------------------------------------------------------


@pytest.fixture
async def impostor() -> AsyncIterator[str]:
    """An endpoint that is not an agent: an HTML error page with a secret in it, and a hostile JSON error."""
    async def html(_: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>upstream said: password=hunter2 " + "x" * 100_000 + "</html>",
                            content_type="text/html")

    async def hostile(_: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "Evil\ncode<script>", "message": "line1\n\x1b[31m" + "y" * 50_000}},
                                 status=409)

    app = web.Application()
    app.router.add_get("/v1/host", html)
    app.router.add_get("/v1/vms", hostile)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_an_endpoint_that_is_not_an_agent_is_described_not_quoted(impostor: str) -> None:
    async with HypervisorClient(impostor, TOKEN) as client:
        with pytest.raises(AgentError) as page:
            await client.host()
        with pytest.raises(AgentError) as error:
            await client.list_vms()
    assert "hunter2" not in str(page.value) and "<html>" not in str(page.value)
    assert page.value.code == "HTTP502" and "not an agent error" in page.value.message
    assert error.value.code == "HTTP409", "a code that is not a CamelCase word is not passed on"
    assert len(error.value.message) <= MAX_MESSAGE_CHARS
    assert "\n" not in error.value.message and "\x1b" not in error.value.message


async def test_a_failed_poll_keeps_a_short_clean_error(impostor: str, secrets_read: list[Any]) -> None:
    directory = AgentDirectory()
    link = await directory.link("h1", {"agent": {"endpoint": impostor,
                                                 "tokenSecretRef": {"name": "t", "namespace": SYSTEM}}})
    assert not await directory.poll(link)
    assert len(link.last_error) <= agents_module.MAX_ERROR_TEXT and "hunter2" not in link.last_error
    await directory.close()


# -- load: a black-holed rack and backoff ------------------------------------------------------------


@pytest.fixture
def black_holes() -> Iterator[Callable[[int], list[str]]]:
    """Endpoints that take connections and never answer (an agent whose host hangs, or a filtered rack)."""
    opened: list[socket.socket] = []

    def make(count: int) -> list[str]:
        endpoints = []
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            opened.append(s)
            endpoints.append(f"http://127.0.0.1:{s.getsockname()[1]}")
        return endpoints

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = start_agent(AgentConfig(name="pool-healthy"), TOKEN, tmp_path_factory.mktemp("agents"))
    yield agent
    agent.stop()


async def test_a_black_holed_rack_does_not_make_healthy_hosts_unreachable(
        healthy: AgentProcess, black_holes: Callable[[int], list[str]], secrets_read: list[Any]) -> None:
    directory = AgentDirectory()
    ref = {"tokenSecretRef": {"name": "t", "namespace": SYSTEM}}
    good = await directory.link("healthy", {"agent": {"endpoint": healthy.endpoint, **ref}})
    stuck = [await directory.link(f"rack-{i}", {"agent": {"endpoint": e, **ref}})
             for i, e in enumerate(black_holes(30))]
    # every black-holed agent is asked ten things at once (polls, VM reconciles, migrations)
    hanging = [asyncio.create_task(link.client.list_vms()) for link in stuck for _ in range(10)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    try:
        answered = await asyncio.wait_for(directory.poll(good), timeout=5)
        took = time.monotonic() - started
    finally:
        for task in hanging:
            task.cancel()
        await asyncio.gather(*hanging, return_exceptions=True)
        await directory.close()
    assert answered and took < 2, f"the healthy agent answered={answered} after {took:.1f} s"


def test_polls_of_an_unreachable_agent_back_off_to_a_cap_and_reset_on_success() -> None:
    delays = [poll_delay(2.0, failures, cap=16.0) for failures in range(10)]
    assert delays[:FAILURES_TO_UNREACHABLE] == [2.0] * FAILURES_TO_UNREACHABLE, "detection is not slowed"
    assert delays[FAILURES_TO_UNREACHABLE:] == [4.0, 8.0, 16.0, 16.0, 16.0, 16.0, 16.0]
    assert poll_delay(2.0, 0, cap=16.0) == 2.0  # a good poll resets failures to 0
    assert poll_delay(5.0, 50, cap=1.0) == 5.0, "never faster than the normal interval"


async def test_hosts_sharing_a_token_secret_at_a_start_read_it_once(
        secrets_read: list[tuple[str, str, str]]) -> None:
    """1,000 Host supervisors start at once: one read of their shared Secret, not 1,000."""
    directory = AgentDirectory()
    specs = {f"h{i}": {"agent": {"endpoint": f"http://h{i}.example:80", "tokenSecretRef": {"name": "fleet"}}}
             for i in range(50)}
    links = await asyncio.gather(*(directory.link(host, spec) for host, spec in specs.items()))
    assert len(secrets_read) == 1, secrets_read
    assert all(link.token == TOKEN for link in links)
    await directory.close()


# -- one call per poll -------------------------------------------------------------------------------


async def test_a_poll_is_one_call_and_an_agent_of_an_earlier_release_gets_the_two_it_knows(
        healthy: AgentProcess, secrets_read: list[Any]) -> None:
    """1,000 agents polled twice each were 2,000 requests a round (the first round gates every VM's
    adoption); the report gives host and VMs in one. An agent without it (404) is asked as before."""
    directory = AgentDirectory()
    ref = {"tokenSecretRef": {"name": "t", "namespace": SYSTEM}}
    real = await directory.link("real", {"agent": {"endpoint": healthy.endpoint, **ref}})
    assert await directory.poll(real) and real.combined and real.info is not None
    info = real.info.model_dump(mode="json", by_alias=True)
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response(info if request.path.endswith("/host") else {"vms": []})

    app = web.Application()
    app.router.add_get("/v1/host", answer)
    app.router.add_get("/v1/vms", answer)
    older = TestServer(app)
    await older.start_server()
    try:
        link = await directory.link("older", {"agent": {"endpoint": str(older.make_url("")).rstrip("/"), **ref}})
        assert await directory.poll(link) and link.info is not None and not link.combined
        assert await directory.poll(link)
        assert asked == ["/v1/host", "/v1/vms"] * 2, "the report is asked once, then never again"
    finally:
        await older.close()
        await directory.close()


async def test_the_report_is_what_host_and_vms_answer(healthy: AgentProcess) -> None:
    async with HypervisorClient(healthy.endpoint, TOKEN) as client:
        report = await client.report()
        host, vms = await client.host(), await client.list_vms()
    assert report.host.name == host.name == "pool-healthy" and report.host.boot_id == host.boot_id
    assert report.vms == vms


async def test_polls_of_one_agent_at_the_same_time_share_one_request(
        healthy: AgentProcess, secrets_read: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart Kopf starts 1,000 Host supervisors at once while the first round asks the same
    agents: each agent is asked once, and every caller gets its answer."""
    directory = AgentDirectory()
    ref = {"tokenSecretRef": {"name": "t", "namespace": SYSTEM}}
    link = await directory.link("real", {"agent": {"endpoint": healthy.endpoint, **ref}})
    real = link.client.report
    asked = [0]

    async def report() -> Any:
        asked[0] += 1
        await asyncio.sleep(0.05)
        return await real()

    monkeypatch.setattr(link.client, "report", report)
    try:
        answers = await asyncio.gather(*(directory.poll(link) for _ in range(5)))
        assert answers == [True] * 5 and asked[0] == 1 and link.successes == 1
        assert await directory.poll(link) and asked[0] == 2, "a poll after the shared one asks again"
    finally:
        await directory.close()
