"""What an agent gives connections that have not authenticated: bounded slots, bounded time (real agent process)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from vmshift.hypervisor.launcher import AgentProcess

LIMIT = 8
AUTH_TIMEOUT = 2.0


@pytest.fixture
def guarded(spawn: Callable[..., AgentProcess], monkeypatch: pytest.MonkeyPatch) -> AgentProcess:
    """One agent with small limits (the agent reads them from its environment)."""
    monkeypatch.setenv("VMSHIFT_AGENT_MAX_UNAUTHENTICATED", str(LIMIT))
    monkeypatch.setenv("VMSHIFT_AGENT_AUTH_TIMEOUT", str(AUTH_TIMEOUT))
    monkeypatch.setenv("VMSHIFT_AGENT_MAX_HANDSHAKES", str(LIMIT))
    return spawn("admission")


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def _open(port: int, count: int, into: list[socket.socket]) -> list[socket.socket]:
    made = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        made.append(s)
    into.extend(made)
    return made


def _closed_by_agent(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True


def _count_closed(conns: list[socket.socket], at_least: int, within: float) -> int:
    deadline = time.monotonic() + within
    while True:
        closed = sum(_closed_by_agent(s) for s in conns)
        if closed >= at_least or time.monotonic() > deadline:
            return closed
        time.sleep(0.05)


async def test_idle_api_connections_are_bounded_and_the_api_still_answers(guarded: AgentProcess,
                                                                         sockets: list[socket.socket]) -> None:
    idle = _open(guarded.api_port, 5 * LIMIT, sockets)
    # the oldest are closed as newer ones arrive: no more than LIMIT wait at once
    closed = _count_closed(idle, 4 * LIMIT, within=AUTH_TIMEOUT / 2)
    assert closed >= 4 * LIMIT, f"only {closed} of {len(idle)} idle connections were closed; at most {LIMIT} may wait"
    async with guarded.client() as client:  # a fresh connection that authenticates at once is served
        assert (await client.host()).name == "admission"
    # and the ones left are closed once their time to authenticate is over
    assert _count_closed(idle, len(idle), within=AUTH_TIMEOUT + 3) == len(idle)


def test_a_connection_that_sends_headers_slowly_is_closed(guarded: AgentProcess,
                                                          sockets: list[socket.socket]) -> None:
    [slow] = _open(guarded.api_port, 1, sockets)
    slow.send(b"GET /v1/host HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    started = time.monotonic()
    assert _count_closed([slow], 1, within=AUTH_TIMEOUT + 3) == 1, "a half-sent request held its connection open"
    assert time.monotonic() - started >= AUTH_TIMEOUT - 0.5


def test_a_wrong_token_does_not_keep_a_connection(guarded: AgentProcess, sockets: list[socket.socket]) -> None:
    [conn] = _open(guarded.api_port, 1, sockets)
    conn.setblocking(True)
    conn.send(b"GET /v1/host HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n")
    assert b" 401 " in conn.recv(4096).split(b"\r\n", 1)[0]
    conn.setblocking(False)
    assert _count_closed([conn], 1, within=AUTH_TIMEOUT + 3) == 1


def test_migration_port_handshakes_are_bounded(guarded: AgentProcess, sockets: list[socket.socket]) -> None:
    """Each migration connection holds a 2 MiB buffer: a flood of silent ones must not pile up."""
    idle = _open(guarded.migration_port, 6 * LIMIT, sockets)
    closed = _count_closed(idle, 5 * LIMIT, within=2.0)  # well inside the 5 s handshake timeout
    assert closed >= 5 * LIMIT, f"only {closed} of {len(idle)} silent migration connections were closed"
    assert guarded.alive


def test_an_authenticated_connection_is_kept_past_the_deadline(guarded: AgentProcess,
                                                               sockets: list[socket.socket]) -> None:
    """The operator's pooled keep-alive connections authenticate once and stay (bounded by keep-alive only)."""
    [conn] = _open(guarded.api_port, 1, sockets)
    conn.setblocking(True)
    conn.settimeout(10)
    request = (f"GET /v1/host HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {guarded.token}\r\n\r\n").encode()
    for _ in range(2):
        conn.send(request)
        head = conn.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += conn.recv(65536)
        time.sleep(AUTH_TIMEOUT + 1)  # the deadline of an unauthenticated connection passes
