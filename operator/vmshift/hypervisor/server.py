"""The agent process: the HTTP management API (aiohttp) and the migration listener around one Host.

Maps HTTP to Host methods and nothing more: bearer-token authentication (every path but the probes'
``/healthz`` and ``/readyz``), JSON parsing and validation against protocol.py, JSON error bodies for
every refusal, and the NDJSON event stream.
run_agent() is what ``vmshift agent`` runs; it never exits because of what a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from aiohttp import web
from pydantic import BaseModel, ValidationError

from vmshift.hypervisor.admission import ConnectionGuard, HandshakeSlots
from vmshift.hypervisor.host import ApiError, HostConfig, HypervisorHost
from vmshift.hypervisor.migration.target import handle_connection
from vmshift.hypervisor.protocol import (
    API_PREFIX,
    DriverChange,
    ErrorCode,
    HostReport,
    IncomingMigrationRequest,
    MigrationList,
    MigrationRequest,
    ResolveRequest,
    SensorChange,
    StartRequest,
    VmDefinition,
    VmList,
    error_body,
)

log = logging.getLogger("vmshift.agent")

MAX_BODY_BYTES = 1024 * 1024
#: Seconds an authenticated request has to send its whole body.
BODY_TIMEOUT = 30.0
#: Seconds an idle keep-alive connection stays open (the operator's pool keeps its own for 15 s).
KEEPALIVE_TIMEOUT = 75.0
#: At most this many NDJSON lines per second on an event stream.
EVENT_INTERVAL = 0.1

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HOST_KEY = web.AppKey("host", HypervisorHost)
TOKEN_KEY = web.AppKey("token", str)
GUARD_KEY = web.AppKey("guard", ConnectionGuard)
STOPPING_KEY = web.AppKey("stopping", asyncio.Event)
#: Answered without a token, for the kubelet's probes: they say "ok" or why not, and nothing about the host.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.model_dump_json().encode(), status=status, content_type="application/json")


def json_error(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="vmshift-agent"'} if status == 401 else None
    return web.Response(body=json.dumps(error_body(code, message)).encode(), status=status,
                        content_type="application/json", headers=headers)


_HTTP_CODES = {
    400: ErrorCode.BadRequest,
    404: ErrorCode.NotFound,
    405: ErrorCode.MethodNotAllowed,
    413: ErrorCode.PayloadTooLarge,
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, ErrorCode.BadRequest)
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path} (the API lives under {API_PREFIX})"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            message = f"request body too large (limit {MAX_BODY_BYTES} bytes)"
        else:
            message = exc.text or exc.reason
        return json_error(exc.status, code, message)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("internal error serving %s %s", request.method, request.path)
        return json_error(500, ErrorCode.Internal, f"internal error: {exc!r}")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PROBE_PATHS:
        return await handler(request)
    expected = f"Bearer {request.app[TOKEN_KEY]}".encode()
    given = request.headers.get("Authorization", "").encode("utf-8", "replace")
    if not hmac.compare_digest(given, expected):
        return json_error(401, ErrorCode.Unauthorized,
                          "missing or wrong bearer token: send 'Authorization: Bearer <token>' with the "
                          "agent's token")
    guard = request.app.get(GUARD_KEY)
    if guard is not None:
        guard.authenticated(request.transport)
    return await handler(request)


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 10
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


async def read_body(request: web.Request, model: type[M]) -> M:
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, ErrorCode.BadRequest, f"the request body did not arrive within {BODY_TIMEOUT:.0f} s") \
            from None
    if not raw.strip():
        raise ApiError(400, ErrorCode.BadRequest, f"{request.method} {request.path} needs a JSON body")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(400, ErrorCode.BadRequest, f"the body is not valid JSON: {describe_validation(exc)}") \
                from None
        raise ApiError(422, ErrorCode.Invalid, f"invalid {model.__name__}: {describe_validation(exc)}") from None


def _host(request: web.Request) -> HypervisorHost:
    return request.app[HOST_KEY]


# -- handlers ------------------------------------------------------------------------------------------


async def get_host(request: web.Request) -> web.StreamResponse:
    return json_response(_host(request).host_info())


async def list_vms(request: web.Request) -> web.StreamResponse:
    return json_response(VmList(vms=_host(request).list_vms()))


async def get_report(request: web.Request) -> web.StreamResponse:
    host = _host(request)
    return json_response(HostReport(host=host.host_info(), vms=host.list_vms()))


async def put_vm(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, VmDefinition)
    info, created = await _host(request).define(request.match_info["vm_id"], body)
    return json_response(info, 201 if created else 200)


async def get_vm(request: web.Request) -> web.StreamResponse:
    return json_response(_host(request).get_vm(request.match_info["vm_id"]))


async def delete_vm(request: web.Request) -> web.StreamResponse:
    force = request.query.get("force", "false").lower() in ("1", "true", "yes")
    await _host(request).delete(request.match_info["vm_id"], force=force)
    return web.Response(status=204)


async def vm_action(request: web.Request) -> web.StreamResponse:
    host = _host(request)
    vm_id = request.match_info["vm_id"]
    if request.match_info["action"] == "start" and request.can_read_body:
        start = await read_body(request, StartRequest)
        baseline = frozenset(start.baseline_features) if start.baseline_features is not None else None
        return json_response(await host.start(vm_id, baseline=baseline))
    action = {"start": host.start, "stop": host.stop, "save": host.save,
              "restore": host.restore}[request.match_info["action"]]
    return json_response(await action(vm_id))


async def put_drivers(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, DriverChange)
    return json_response(_host(request).change_drivers(request.match_info["vm_id"], body))


async def post_incoming(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, IncomingMigrationRequest)
    return json_response(await _host(request).prepare(body), 201)


async def post_migration(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, MigrationRequest)
    status, created = _host(request).start_migration(body)
    return json_response(status, 202 if created else 200)


async def list_migrations(request: web.Request) -> web.StreamResponse:
    return json_response(MigrationList(migrations=_host(request).list_migrations()))


async def get_migration(request: web.Request) -> web.StreamResponse:
    return json_response(_host(request).migration(request.match_info["migration_id"]).record.status())


async def delete_migration(request: web.Request) -> web.StreamResponse:
    return json_response(_host(request).cancel_migration(request.match_info["migration_id"]))


async def resolve_migration(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, ResolveRequest)
    return json_response(_host(request).resolve_migration(request.match_info["migration_id"], body.target_resumed))


async def switchover_migration(request: web.Request) -> web.StreamResponse:
    return json_response(_host(request).switchover_migration(request.match_info["migration_id"]))


async def migration_events(request: web.Request) -> web.StreamResponse:
    record = _host(request).migration(request.match_info["migration_id"]).record
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        while True:
            await response.write(record.status().model_dump_json().encode() + b"\n")
            if record.finished:
                break
            await record.wait_changed(1.0)
            if not record.finished:
                await record.wait_finished(EVENT_INTERVAL)
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    return response


async def post_sensors(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, SensorChange)
    return json_response(_host(request).change_sensors(body))


async def healthz(_: web.Request) -> web.StreamResponse:
    """Liveness: the event loop answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.StreamResponse:
    """Readiness: both listeners are up (the app serves only then) and the agent is not shutting down."""
    if request.app[STOPPING_KEY].is_set():
        return web.Response(status=503, text="shutting down\n")
    return web.Response(text="ok\n")


def create_app(host: HypervisorHost, token: str, guard: ConnectionGuard | None = None) -> web.Application:
    """The aiohttp application of one agent; ``guard`` learns which connections authenticated."""
    if not token:
        raise ValueError("the agent needs a non-empty bearer token")
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[errors_middleware, auth_middleware])
    app[HOST_KEY] = host
    app[TOKEN_KEY] = token
    if guard is not None:
        app[GUARD_KEY] = guard
    app[STOPPING_KEY] = asyncio.Event()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    p = API_PREFIX
    app.router.add_get(f"{p}/host", get_host)
    app.router.add_get(f"{p}/vms", list_vms)
    app.router.add_get(f"{p}/report", get_report)
    app.router.add_put(f"{p}/vms/{{vm_id}}", put_vm)
    app.router.add_get(f"{p}/vms/{{vm_id}}", get_vm)
    app.router.add_delete(f"{p}/vms/{{vm_id}}", delete_vm)
    app.router.add_post(f"{p}/vms/{{vm_id}}/{{action:start|stop|save|restore}}", vm_action)
    app.router.add_put(f"{p}/vms/{{vm_id}}/drivers", put_drivers)
    app.router.add_post(f"{p}/migrations/incoming", post_incoming)
    app.router.add_post(f"{p}/migrations", post_migration)
    app.router.add_get(f"{p}/migrations", list_migrations)
    app.router.add_get(f"{p}/migrations/{{migration_id}}", get_migration)
    app.router.add_get(f"{p}/migrations/{{migration_id}}/events", migration_events)
    app.router.add_delete(f"{p}/migrations/{{migration_id}}", delete_migration)
    app.router.add_post(f"{p}/migrations/{{migration_id}}/resolve", resolve_migration)
    app.router.add_post(f"{p}/migrations/{{migration_id}}/switchover", switchover_migration)
    app.router.add_post(f"{p}/sensors", post_sensors)
    return app


# -- the process ---------------------------------------------------------------------------------------


def bind_socket(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(256)
    sock.setblocking(False)
    return sock


async def serve_migrations(host: HypervisorHost, sock: socket.socket, slots: HandshakeSlots | None = None) -> None:
    """Accept connections on the migration port forever; each is served in its own task, and at most
    ``slots.limit`` of them may be in their opening handshake at once (admission.py)."""
    loop = asyncio.get_running_loop()
    slots = slots or HandshakeSlots()
    connections: set[asyncio.Task[None]] = set()
    while True:
        try:
            conn, _address = await loop.sock_accept(sock)
        except OSError as exc:  # out of file descriptors, and the like: keep listening
            log.warning("migration port: accept failed: %s", exc)
            await asyncio.sleep(0.1)
            continue
        task = asyncio.create_task(_serve_migration_connection(host, conn, slots))
        task.add_done_callback(_closer(conn))  # also when evicted before it ran
        slots.take(task)
        connections.add(task)
        task.add_done_callback(connections.discard)


def _closer(conn: socket.socket) -> Callable[[asyncio.Task[None]], None]:
    return lambda _task: conn.close()


class _HandshakeHost:
    """The host as one migration connection sees it: looking up its migration ends the handshake
    (the opening frame has arrived), which gives the connection's handshake slot back."""

    def __init__(self, host: HypervisorHost, release: Callable[[], None]) -> None:
        self._host = host
        self._release = release

    def find_incoming(self, migration_id: str) -> Any:
        self._release()
        return self._host.find_incoming(migration_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


async def _serve_migration_connection(host: HypervisorHost, conn: socket.socket, slots: HandshakeSlots) -> None:
    task = asyncio.current_task()
    assert task is not None

    def release() -> None:
        slots.give_back(task)

    try:
        await handle_connection(cast(HypervisorHost, _HandshakeHost(host, release)), host.tickets, conn)
    finally:
        release()
        conn.close()


def tune_allocator() -> None:
    """Keep megabyte-sized buffers on the heap instead of fresh mmap()s (glibc only).

    The migration stream allocates and frees a few 1 MiB buffers per frame; with glibc's default
    threshold each would be a new mapping whose pages fault in one by one, which costs more than the
    copy itself and caps the stream far below the link.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    with contextlib.suppress(AttributeError):
        libc.mallopt(m_mmap_threshold, 64 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)


def write_ready_file(path: Path, content: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


async def run_agent(config: HostConfig, token: str, *, listen: str = "127.0.0.1", api_port: int = 0,
                    migration_port: int = 0, ready_file: Path | None = None,
                    exit_with_parent: bool = False) -> int:
    """Run one agent until SIGTERM/SIGINT (or its parent's death, if asked); return the exit code."""
    tune_allocator()
    host = await make_host(config)
    loop = asyncio.get_running_loop()
    migration_sock = bind_socket(listen, migration_port)
    bound_migration_port = int(migration_sock.getsockname()[1])
    # What peers are told (grants, WELCOME's resolvePort, /v1/host): the advertised port if one is set.
    host.migration_port = config.advertise_migration_port or bound_migration_port
    api_sock = bind_socket(listen, api_port)
    actual_api_port = api_sock.getsockname()[1]
    guard = ConnectionGuard()
    app = create_app(host, token, guard)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT)
    await runner.setup()
    assert runner.server is not None
    api_server = await loop.create_server(guard.wrap(runner.server), sock=api_sock)
    listener = asyncio.create_task(serve_migrations(host, migration_sock), name="migration-listener")
    host.start_background()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(stop)) if exit_with_parent else None
    endpoint_host = config.advertise_host
    if ready_file is not None:
        write_ready_file(ready_file, {
            "name": config.name, "pid": os.getpid(), "apiPort": actual_api_port,
            "migrationPort": bound_migration_port, "advertisedMigrationPort": host.migration_port,
            "bootId": host.boot_id,
            "endpoint": f"http://{endpoint_host}:{actual_api_port}",
        })
    log.info("agent %s (%s, %d cores, %d MiB) serving the API on %s:%d and migrations on port %d "
             "(advertised to peers as %s:%d)", config.name, config.cpu_model, config.cores, config.memory_mib,
             listen, actual_api_port, bound_migration_port, config.advertise_host, host.migration_port)
    await stop.wait()
    log.info("agent %s shutting down", config.name)
    app[STOPPING_KEY].set()
    await host.shutdown()
    listener.cancel()
    if watcher is not None:
        watcher.cancel()
    api_server.close()
    with contextlib.suppress(Exception):
        await runner.cleanup()
    migration_sock.close()
    return 0


async def make_host(config: HostConfig) -> HypervisorHost:
    """The host of ``config.driver``: the simulated guests, or real ones under QEMU (its guest image is
    built into the cache first if it is not there yet; the accelerator is chosen and logged now)."""
    if config.driver == "simulated":
        return HypervisorHost(config)
    if config.driver != "qemu":
        raise ValueError(f"unknown driver {config.driver!r}: use simulated or qemu")
    from vmshift.devcluster import guestimage
    from vmshift.hypervisor.qemu.driver import QemuConfig, QemuDriver
    from vmshift.hypervisor.qemuhost import DrivenHost

    if config.driver_dir is None or config.shared_dir is None:
        raise ValueError("the qemu driver needs --driver-dir and --shared-dir")
    image = await asyncio.to_thread(guestimage.ensure)
    for volume in config.shared_volumes:
        (config.shared_dir / volume).mkdir(parents=True, exist_ok=True)
    driver = QemuDriver(QemuConfig(work_dir=config.driver_dir, shared_dir=config.shared_dir, image=image,
                                   accel=config.accel, listen_host=config.advertise_host))
    host = DrivenHost(config, driver)
    await host.discover()
    return host


async def _watch_parent(stop: asyncio.Event) -> None:
    parent = os.getppid()
    alive = True
    while alive:
        await asyncio.sleep(1.0)
        alive = os.getppid() == parent
    log.warning("the parent process %d died; shutting down", parent)
    stop.set()
