"""The operator's API calls ride out an API server restart instead of failing the daemon that made them.

Found by the chaos campaign (bench/chaos.py, apiserver-restart seeds): a status patch during a
restart of the API server raised ClientConnectorError out of the migration daemon, Kopf restarted
the daemon only after 60 s, and the migration was reported finished a minute late.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import kubernetes
import pytest
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from vmshift.controllers import kubeapi


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def api_at() -> AsyncIterator[int]:
    """kubeapi pointed at http://127.0.0.1:<port>, where the test serves (or does not yet)."""
    port = _free_port()
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{port}"
    saved = dict(kubeapi._clients)
    kubeapi._clients.clear()
    kubeapi._clients.update({"config": config, "custom": None})
    try:
        yield port
    finally:
        await kubeapi.close()
        kubeapi._clients.clear()
        kubeapi._clients.update(saved)


async def _serve(port: int, handler: web.RequestHandler) -> web.AppRunner:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_a_patch_waits_for_an_api_server_that_is_restarting(api_at: int) -> None:
    seen: list[dict[str, object]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({})

    async def restart_later() -> web.AppRunner:
        await asyncio.sleep(1.0)  # refused connections until then
        return await _serve(api_at, handler)

    starting = asyncio.create_task(restart_later())
    await kubeapi.patch_status("virtualmachinemigrations", "ns", "m", {"phase": "Succeeded"})
    runner = await starting
    await runner.cleanup()
    assert seen == [{"status": {"phase": "Succeeded"}}]


async def test_unavailable_is_tried_again_and_a_refusal_is_not(api_at: int) -> None:
    answers = [503, 503, 200, 422]
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({}, status=answers.pop(0))

    runner = await _serve(api_at, handler)
    try:
        await kubeapi.patch("hosts", None, "h1", {"metadata": {"annotations": {"a": "b"}}})
        assert calls == 3
        with pytest.raises(ApiException) as refused:
            await kubeapi.patch("hosts", None, "h1", {"spec": {}})
        assert refused.value.status == 422 and calls == 4
    finally:
        await runner.cleanup()


async def test_it_gives_up_after_its_deadline(api_at: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubeapi, "RETRY_SECONDS", 0.5)
    with pytest.raises(Exception) as failed:
        await kubeapi.get("hosts", None, "h1")
    assert "Connect" in type(failed.value).__name__ or "connect" in str(failed.value).lower()
