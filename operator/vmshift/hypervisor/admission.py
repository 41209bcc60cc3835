"""What an agent gives a connection before it has proved who it is: a bounded number of slots, for a bounded time.

Transport-level bookkeeping only (asyncio protocols and sockets); knows nothing of the API or the
migration protocol beyond "this connection has now authenticated". Without it, anyone who can reach
an agent's port can open connections until the agent runs out of memory or file descriptors (each
migration connection holds a 2 MiB receive buffer), or hold them open forever by sending nothing.

* The management API: a connection that has not sent a request with the right bearer token
  within :data:`AUTH_TIMEOUT` seconds of connecting is closed, and at most
  :data:`MAX_UNAUTHENTICATED` such connections exist at once; a new one past that closes the
  oldest (a real client sends its request at once, so a flood evicts only itself). Once a request
  authenticates, the connection is the operator's, bounded by keep-alive.
* The migration port: at most :data:`MAX_HANDSHAKES` connections may be in their opening
  handshake (magic, HELLO or RESOLVE, with its own timeout) at once; a new one past that ends the
  oldest handshake the same way.

The numbers can be changed with ``VMSHIFT_AGENT_MAX_UNAUTHENTICATED``, ``VMSHIFT_AGENT_AUTH_TIMEOUT``
and ``VMSHIFT_AGENT_MAX_HANDSHAKES`` in the agent's environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vmshift.agent")

#: Connections to the management API that have not authenticated yet, at most.
MAX_UNAUTHENTICATED = 64
#: Seconds a management-API connection has to send its first authenticated request.
AUTH_TIMEOUT = 10.0
#: Migration-port connections still in their opening handshake, at most.
MAX_HANDSHAKES = 32
#: Seconds between two log lines about refused connections (a flood must not flood the log too).
_LOG_EVERY = 10.0


def _env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default


class _Throttled:
    def __init__(self, what: str) -> None:
        self.what = what
        self.evicted = 0
        self._logged = 0.0

    def evict(self, limit: int) -> None:
        self.evicted += 1
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            log.warning("%s: %d unauthenticated connection(s) closed so far to admit newer ones (%d may wait "
                        "at once): someone is opening connections without authenticating", self.what,
                        self.evicted, limit)


def _close(transport: asyncio.BaseTransport) -> None:
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class ConnectionGuard:
    """The management API's unauthenticated connections: counted, bounded, and timed out."""

    def __init__(self, *, max_unauthenticated: int | None = None, auth_timeout: float | None = None) -> None:
        self.max_unauthenticated = max_unauthenticated or int(_env("VMSHIFT_AGENT_MAX_UNAUTHENTICATED",
                                                                   MAX_UNAUTHENTICATED))
        self.auth_timeout = auth_timeout or _env("VMSHIFT_AGENT_AUTH_TIMEOUT", AUTH_TIMEOUT)
        self._pending: OrderedDict[asyncio.BaseTransport, asyncio.TimerHandle] = OrderedDict()
        self._evictions = _Throttled("management API")

    @property
    def unauthenticated(self) -> int:
        return len(self._pending)

    @property
    def evicted(self) -> int:
        return self._evictions.evicted

    def admit(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: count it and start its clock; when the slots are full, close the oldest."""
        while len(self._pending) >= self.max_unauthenticated:
            oldest, handle = self._pending.popitem(last=False)
            handle.cancel()
            self._evictions.evict(self.max_unauthenticated)
            _close(oldest)
        loop = asyncio.get_running_loop()
        self._pending[transport] = loop.call_later(self.auth_timeout, self._expire, transport)

    def authenticated(self, transport: asyncio.BaseTransport | None) -> None:
        """A request on ``transport`` carried the right token: the connection leaves the pending set."""
        handle = self._pending.pop(transport, None) if transport is not None else None
        if handle is not None:
            handle.cancel()

    def closed(self, transport: asyncio.BaseTransport) -> None:
        handle = self._pending.pop(transport, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if self._pending.pop(transport, None) is not None:
            log.info("management API: closed a connection that sent no authenticated request in %.0f s",
                     self.auth_timeout)
            _close(transport)

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory (aiohttp's ``web.Server``) whose connections pass through this guard."""
        return lambda: _Guarded(factory(), self)


class _Guarded(asyncio.Protocol):
    """Delegates every callback to the real protocol; admits on connect and forgets on close."""

    def __init__(self, inner: asyncio.BaseProtocol, guard: ConnectionGuard) -> None:
        self._inner: Any = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._guard.admit(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.closed(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class HandshakeSlots:
    """The migration port's connections in their opening handshake: at most ``limit`` at once; a new
    one past that cancels the task of the oldest (which closes its socket)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or int(_env("VMSHIFT_AGENT_MAX_HANDSHAKES", MAX_HANDSHAKES))
        self._tasks: OrderedDict[asyncio.Task[Any], None] = OrderedDict()
        self._evictions = _Throttled("migration port")

    @property
    def in_handshake(self) -> int:
        return len(self._tasks)

    @property
    def evicted(self) -> int:
        return self._evictions.evicted

    def take(self, task: asyncio.Task[Any]) -> None:
        while len(self._tasks) >= self.limit:
            oldest, _ = self._tasks.popitem(last=False)
            self._evictions.evict(self.limit)
            oldest.cancel()
        self._tasks[task] = None

    def give_back(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
