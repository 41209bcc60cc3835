"""HypervisorClient: the async (aiohttp) client of an agent's management API, typed by protocol.py.

The only way the operator talks to a hypervisor. One method per API call; every refusal raises
AgentError(code, message, status) and every transport failure AgentUnreachableError, so callers
never parse HTTP. Holds one aiohttp session; use it as an async context manager or call close().

Whatever answers at an endpoint is untrusted until it parses: a reply is read up to
:data:`MAX_RESPONSE_BYTES`, and an error's text is reduced to one printable line of at most
:data:`MAX_MESSAGE_CHARS` (a body that is not the agent's JSON error is never quoted), because
these messages end up in status and events that many people can read.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from vmshift.api.reasons import MigrationMode
from vmshift.hypervisor.protocol import (
    API_PREFIX,
    AutoConvergeSettings,
    DiskSpec,
    DriverChange,
    HostInfo,
    HostReport,
    IncomingMigrationGrant,
    IncomingMigrationRequest,
    IncomingVm,
    LinkShareSettings,
    MigrationList,
    MigrationRequest,
    MigrationStatus,
    MigrationTarget,
    ResolveRequest,
    SensorChange,
    StartRequest,
    VmDefinition,
    VmInfo,
    VmList,
    WorkloadSpec,
)
from vmshift.precopy.convergence import DEFAULTS as CONVERGENCE

M = TypeVar("M", bound=BaseModel)

#: The largest reply the client reads (a list of VMs of a full host is far smaller).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: The longest error text kept from a reply, and the shape of an error code.
MAX_MESSAGE_CHARS = 1000
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")

#: Seconds to wait for an agent's TCP connection before the call fails as unreachable.
CONNECT_TIMEOUT_SECONDS = 3.0
#: Connections the operator's shared pool opens to one agent at most, so that a host that does not
#: answer holds a few of them and never the slots every other host needs.
CONNECTIONS_PER_AGENT = 8


def shared_pool() -> aiohttp.ClientSession:
    """A connection pool for many agents: bounded per agent, not in total (a total bound is what one
    black-holed rack fills, making every healthy host look unreachable). Create it on the loop that uses it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=CONNECTIONS_PER_AGENT))


class AgentError(Exception):
    """The agent refused a call: ``code`` (an ErrorCode word), ``message``, HTTP ``status``."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class AgentUnreachableError(AgentError):
    """The agent did not answer (connection refused or reset, timeout, garbled reply)."""

    def __init__(self, message: str) -> None:
        super().__init__("AgentUnreachable", message, 0)


class HypervisorClient:
    """Client of one agent at ``endpoint`` (e.g. ``http://127.0.0.1:8080``) with its bearer token."""

    def __init__(self, endpoint: str, token: str, *, timeout_seconds: float = 10.0,
                 connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
                 session: aiohttp.ClientSession | None = None) -> None:
        """``session``: a connection pool shared with other clients (the operator's 1,000 agents
        need not be 1,000 pools); the client then leaves closing it to its owner. A call fails after
        ``timeout_seconds`` in all, or ``connect_timeout_seconds`` without a TCP connection (an agent
        behind a black hole gives up its pool slot quickly)."""
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self._auth = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds,
                                              sock_connect=min(connect_timeout_seconds, timeout_seconds))
        self._shared = session
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HypervisorClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._shared is not None:
            return self._shared
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _call(self, method: str, path: str, result: type[M] | None, body: BaseModel | None = None,
                    params: dict[str, str] | None = None) -> M | None:
        url = f"{self.endpoint}{API_PREFIX}{path}"
        data = body.model_dump_json(exclude_none=True).encode() if body is not None else None
        headers = {**self._auth, "Content-Type": "application/json"} if data is not None else self._auth
        try:
            async with self._http().request(method, url, data=data, headers=headers, params=params,
                                            timeout=self._timeout) as response:
                raw = await _read_bounded(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AgentUnreachableError(f"agent {self.endpoint} did not answer {method} {path}: "
                                        f"{clean(repr(exc))}") from None
        if raw is None:
            raise AgentUnreachableError(f"agent {self.endpoint} sent a reply to {method} {path} larger than "
                                        f"{MAX_RESPONSE_BYTES} bytes")
        if status >= 400:
            raise _error(status, raw)
        if result is None:
            return None
        try:
            return result.model_validate_json(raw)
        except ValidationError as exc:
            raise AgentUnreachableError(f"agent {self.endpoint} sent an unexpected reply to {method} {path}: "
                                        f"{_shape(exc)}") from None

    async def _get(self, method: str, path: str, result: type[M], body: BaseModel | None = None,
                   params: dict[str, str] | None = None) -> M:
        value = await self._call(method, path, result, body, params)
        assert value is not None
        return value

    # -- host ---------------------------------------------------------------------------------------

    async def host(self) -> HostInfo:
        """GET /v1/host."""
        return await self._get("GET", "/host", HostInfo)

    async def report(self) -> HostReport:
        """GET /v1/report: the host and its VMs in one call."""
        return await self._get("GET", "/report", HostReport)

    async def set_sensors(self, change: SensorChange) -> HostInfo:
        """POST /v1/sensors: fail or heal simulated hardware."""
        return await self._get("POST", "/sensors", HostInfo, change)

    # -- VMs ------------------------------------------------------------------------------------------

    async def list_vms(self) -> list[VmInfo]:
        return (await self._get("GET", "/vms", VmList)).vms

    async def get_vm(self, vm_id: str) -> VmInfo:
        return await self._get("GET", f"/vms/{vm_id}", VmInfo)

    async def define_vm(self, vm_id: str, definition: VmDefinition) -> VmInfo:
        """PUT /v1/vms/{vmId} (idempotent)."""
        return await self._get("PUT", f"/vms/{vm_id}", VmInfo, definition)

    async def start_vm(self, vm_id: str, *, baseline: frozenset[str] | None = None) -> VmInfo:
        """Start a guest; ``baseline``: the features it may see in compatibility mode (unset: x86_64_v2)."""
        body = StartRequest(baseline_features=sorted(baseline)) if baseline is not None else None
        return await self._get("POST", f"/vms/{vm_id}/start", VmInfo, body)

    async def stop_vm(self, vm_id: str) -> VmInfo:
        return await self._get("POST", f"/vms/{vm_id}/stop", VmInfo)

    async def save_vm(self, vm_id: str) -> VmInfo:
        return await self._get("POST", f"/vms/{vm_id}/save", VmInfo)

    async def restore_vm(self, vm_id: str) -> VmInfo:
        return await self._get("POST", f"/vms/{vm_id}/restore", VmInfo)

    async def delete_vm(self, vm_id: str, *, force: bool = False) -> None:
        await self._call("DELETE", f"/vms/{vm_id}", None, params={"force": "true"} if force else None)

    async def change_drivers(self, vm_id: str, change: DriverChange) -> VmInfo:
        """PUT /v1/vms/{vmId}/drivers: what the guest's conversion agent installs and removes."""
        return await self._get("PUT", f"/vms/{vm_id}/drivers", VmInfo, change)

    # -- migrations ---------------------------------------------------------------------------------

    async def prepare_incoming(self, request: IncomingMigrationRequest) -> IncomingMigrationGrant:
        """POST /v1/migrations/incoming on the target: reserve room, get a one-time ticket."""
        return await self._get("POST", "/migrations/incoming", IncomingMigrationGrant, request)

    async def start_migration(self, request: MigrationRequest) -> MigrationStatus:
        """POST /v1/migrations on the source (idempotent by migrationId)."""
        return await self._get("POST", "/migrations", MigrationStatus, request)

    async def list_migrations(self) -> list[MigrationStatus]:
        return (await self._get("GET", "/migrations", MigrationList)).migrations

    async def get_migration(self, migration_id: str) -> MigrationStatus:
        return await self._get("GET", f"/migrations/{migration_id}", MigrationStatus)

    async def cancel_migration(self, migration_id: str) -> MigrationStatus:
        """DELETE /v1/migrations/{id}: abort before the commit point (AgentError PastCommitPoint after)."""
        return await self._get("DELETE", f"/migrations/{migration_id}", MigrationStatus)

    async def resolve_migration(self, migration_id: str, target_resumed: bool) -> MigrationStatus:
        """POST /v1/migrations/{id}/resolve: settle a source in doubt with the target's statement."""
        return await self._get("POST", f"/migrations/{migration_id}/resolve", MigrationStatus,
                               ResolveRequest(target_resumed=target_resumed))

    async def switchover(self, migration_id: str) -> MigrationStatus:
        """POST /v1/migrations/{id}/switchover: the go for a switchover the source holds."""
        return await self._get("POST", f"/migrations/{migration_id}/switchover", MigrationStatus)

    async def watch_migration(self, migration_id: str) -> AsyncIterator[MigrationStatus]:
        """GET /v1/migrations/{id}/events: each status line until the migration ends."""
        url = f"{self.endpoint}{API_PREFIX}/migrations/{migration_id}/events"
        try:
            async with self._http().get(url, headers=self._auth,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as response:
                if response.status >= 400:
                    raise _error(response.status, await _read_bounded(response) or b"")
                async for line in response.content:
                    if line.strip():
                        yield MigrationStatus.model_validate_json(line)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AgentUnreachableError(f"agent {self.endpoint} broke the event stream of migration "
                                        f"{migration_id}: {exc!r}") from None

    async def wait_migration(self, migration_id: str, timeout_seconds: float = 300.0,
                             poll_seconds: float = 0.05) -> MigrationStatus:
        """Poll until the migration has finished on this agent; AgentError Timeout if it does not."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            status = await self.get_migration(migration_id)
            if status.phase.finished:
                return status
            if time.monotonic() > deadline:
                raise AgentError("Timeout", f"migration {migration_id} still {status.phase.value} after "
                                 f"{timeout_seconds:g} s (round {status.round}, {status.percent:.0f} %)", 0)
            await asyncio.sleep(poll_seconds)


def clean(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters (pure)."""
    flat = re.sub(r"[^\x20-\x7e]+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _shape(exc: ValidationError) -> str:
    """What was wrong with a reply, by field, without quoting it."""
    wrong = [f"{'.'.join(str(p) for p in e['loc']) or 'body'} ({e['type']})" for e in exc.errors()[:5]]
    return clean(f"{exc.error_count()} problem(s): {', '.join(wrong)}")


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, or None past MAX_RESPONSE_BYTES."""
    if response.content_length is not None and response.content_length > MAX_RESPONSE_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, raw: bytes) -> AgentError:
    """The agent's JSON error, its text cleaned; anything else is described, never quoted."""
    try:
        body: Any = json.loads(raw)
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return AgentError(f"HTTP{status}", f"HTTP {status} with a body that is not an agent error ({len(raw)} "
                          f"bytes): is this endpoint a vmshift agent?", status)
    return AgentError(code if _CODE.match(code) else f"HTTP{status}", clean(message), status)


def incoming_vm(vm: VmInfo, vendor: str | None = None) -> IncomingVm:
    """The target's view of a VM about to arrive, from the source's VmInfo."""
    return IncomingVm(
        vm_id=vm.id, name=vm.name, namespace=vm.namespace, cpus=vm.cpus, memory_mib=vm.memory_mib,
        compatibility=vm.compatibility,
        disks=[DiskSpec.model_validate(d.model_dump()) for d in vm.disks],
        workload=WorkloadSpec.model_validate(vm.workload.model_dump()),
        drivers=list(vm.drivers), features=list(vm.features), vendor=vendor,
    )


async def begin_migration(source: HypervisorClient, target: HypervisorClient, vm_id: str, migration_id: str,
                          mode: MigrationMode = MigrationMode.Live, *,
                          threshold_ms: float = CONVERGENCE.threshold_ms, max_rounds: int = CONVERGENCE.max_rounds,
                          stall_rounds: int = CONVERGENCE.stall_rounds,
                          auto_converge: AutoConvergeSettings | None = None, fallback_to_quick: bool = False,
                          fallback_to_postcopy: bool = False, max_downtime_ms: float | None = None,
                          bandwidth_mbps: float | None = None,
                          timeout_seconds: float | None = None, reservation_seconds: float | None = None,
                          target_address: tuple[str, int] | None = None,
                          switchover_wait_seconds: float = 0.0,
                          link_share: LinkShareSettings | None = None) -> MigrationStatus:
    """Both calls of a migration: reserve on the target, then start on the source.

    ``target_address`` overrides where the source connects (tests put a proxy there).
    """
    vm = await source.get_vm(vm_id)
    source_host = await source.host()
    grant = await target.prepare_incoming(IncomingMigrationRequest(
        migration_id=migration_id, vm=incoming_vm(vm, source_host.vendor), mode=mode,
        reservation_seconds=reservation_seconds))
    host, port = target_address or (grant.host, grant.port)
    return await source.start_migration(MigrationRequest(
        migration_id=migration_id, vm_id=vm_id, mode=mode,
        target=MigrationTarget(host=host, port=port, ticket=grant.ticket,
                               bandwidth_mbps=grant.bandwidth_mbps),
        threshold_ms=threshold_ms, max_rounds=max_rounds, stall_rounds=stall_rounds,
        auto_converge=auto_converge or AutoConvergeSettings(), fallback_to_quick=fallback_to_quick,
        fallback_to_postcopy=fallback_to_postcopy, max_downtime_ms=max_downtime_ms, bandwidth_mbps=bandwidth_mbps,
        timeout_seconds=timeout_seconds,
        switchover_wait_seconds=switchover_wait_seconds, link_share=link_share))
