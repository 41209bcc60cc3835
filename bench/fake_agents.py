"""A test double of the agent API for the scale benchmark only: one process answering for many hosts.

Each simulated host lives under a path prefix (``http://127.0.0.1:PORT/<host>``), so the operator
sees one endpoint per Host as with real agents. Guests have no memory here: a migration "succeeds"
after a fixed delay. Bodies are built with the real protocol models, so the operator parses exactly
what a real agent sends. Never used by tests or the demo, which run real agents.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from vmshift.api.reasons import MigrationMode, MigrationPhase
from vmshift.drivers import io_ceilings
from vmshift.hypervisor.protocol import (
    FanStatus,
    Health,
    HostInfo,
    IncomingMigrationGrant,
    MigrationList,
    MigrationRole,
    MigrationStatus,
    PowerSupplyStatus,
    Resources,
    Sensors,
    VmInfo,
    VmState,
    WorkloadInfo,
    error_body,
)
from vmshift.processor import guest_features, processor_info

MIGRATION_SECONDS = 0.5


@dataclass
class FakeHost:
    name: str
    cpu_model: str
    cores: int
    memory_mib: int
    vms: dict[str, VmInfo] = field(default_factory=dict)


@dataclass
class World:
    hosts: dict[str, FakeHost] = field(default_factory=dict)
    migrations: dict[str, tuple[float, str, str, str, MigrationMode]] = field(default_factory=dict)
    requests: int = 0

    def host_info(self, host: FakeHost) -> dict[str, Any]:
        info = processor_info(host.cpu_model)
        cpus = sum(v.cpus for v in host.vms.values())
        memory = sum(v.memory_mib for v in host.vms.values())
        return HostInfo(
            name=host.name, cpu_model=host.cpu_model, vendor=info.vendor, features=sorted(info.features),
            cores=host.cores, memory_mib=host.memory_mib, migration_bandwidth_mbps=10_000, shared_volumes=["csv-1"],
            passthrough_luns=[], allocated=Resources(cpus=cpus, memory_mib=memory),
            reserved=Resources(cpus=0, memory_mib=0), vms=len(host.vms),
            sensors=Sensors(fans=[FanStatus(index=0, ok=True), FanStatus(index=1, ok=True)],
                            power_supplies=[PowerSupplyStatus(index=0, ok=True), PowerSupplyStatus(index=1, ok=True)],
                            temperature_c=24.0, corrected_memory_errors=0),
            health=Health(healthy=True, problems=[]), boot_id="fake", migration_port=1,
        ).model_dump(mode="json", by_alias=True)


def vm_info(vm_id: str, name: str, namespace: str, cpus: int, memory: int, cpu_model: str,
            compatibility: bool) -> VmInfo:
    drivers = ["vmbus", "netvsc", "storvsc"]
    net, disk = io_ceilings(drivers)
    return VmInfo.model_validate({
        "id": vm_id, "name": name, "namespace": namespace, "state": VmState.Running,
        "features": sorted(guest_features(cpu_model, compatibility)), "digest": "0" * 16, "heartbeat": 1,
        "drivers": drivers, "ioCeilings": {"networkMbps": net, "diskMBps": disk}, "memoryMiB": memory,
        "cpus": cpus, "compatibility": compatibility, "disks": [],
        "workload": WorkloadInfo(dirty_rate_mib_ps=0, working_set_mib=0, hot_fraction=0.95).model_dump(by_alias=True),
        "throttlePercent": 0,
    })


def app(world: World) -> web.Application:
    routes = web.RouteTableDef()

    def host_of(request: web.Request) -> FakeHost:
        world.requests += 1
        host = world.hosts.get(request.match_info["host"])
        if host is None:
            raise web.HTTPNotFound()
        return host

    def not_found(message: str) -> web.Response:
        return web.json_response(error_body("NotFound", message), status=404)

    def dump(model: Any) -> web.Response:
        return web.json_response(model.model_dump(mode="json", by_alias=True))

    #: Each host's answers as last sent, with the VM ids they were made for: guests here never change
    #: in place (a define adds one, a delete or a finished migration moves one), so the ids say when one
    #: is stale. One process stands in for 1,000 agents that each answer on their own machine: the
    #: polls' cost here is not the operator's, and on two shared cores it delayed the agents' answers.
    answers: dict[tuple[str, str], tuple[tuple[str, ...], bytes]] = {}

    def cached(request: web.Request, what: str) -> web.Response:
        """``GET /v1/host``, ``/v1/vms`` or ``/v1/report`` of the host asked, made again only when stale."""
        host = host_of(request)
        ids = tuple(host.vms)
        hit = answers.get((host.name, what))
        if hit is None or hit[0] != ids:
            vms = [vm.model_dump(mode="json", by_alias=True) for vm in host.vms.values()]
            body: dict[str, Any] = {"vms": vms}
            if what != "vms":
                body = world.host_info(host) if what == "host" else {"host": world.host_info(host), "vms": vms}
            hit = answers[(host.name, what)] = (ids, json.dumps(body).encode())
        return web.Response(body=hit[1], content_type="application/json")

    @routes.get("/{host}/v1/host")
    async def get_host(request: web.Request) -> web.Response:
        return cached(request, "host")

    @routes.get("/{host}/v1/report")
    async def report(request: web.Request) -> web.Response:
        return cached(request, "report")

    @routes.get("/{host}/v1/vms")
    async def list_vms(request: web.Request) -> web.Response:
        return cached(request, "vms")

    @routes.get("/{host}/v1/vms/{vm}")
    @routes.post("/{host}/v1/vms/{vm}/{action}")  # start/stop/save/restore: guests here have no life cycle
    async def get_vm(request: web.Request) -> web.Response:
        vm = host_of(request).vms.get(request.match_info["vm"])
        if vm is None:
            return not_found("no such VM")
        return dump(vm)

    @routes.put("/{host}/v1/vms/{vm}")
    async def define(request: web.Request) -> web.Response:
        host = host_of(request)
        body = await request.json()
        vm = vm_info(request.match_info["vm"], body["name"], body.get("namespace", "default"), body["cpus"],
                     body["memoryMiB"], host.cpu_model, body.get("compatibility", False))
        host.vms.setdefault(vm.id, vm)
        return dump(host.vms[vm.id])

    @routes.delete("/{host}/v1/vms/{vm}")
    async def delete(request: web.Request) -> web.Response:
        host_of(request).vms.pop(request.match_info["vm"], None)
        return web.json_response({})

    @routes.post("/{host}/v1/migrations/incoming")
    async def incoming(request: web.Request) -> web.Response:
        host = host_of(request)
        return dump(IncomingMigrationGrant(ticket=host.name, host="127.0.0.1", port=1, bandwidth_mbps=10_000))

    @routes.post("/{host}/v1/migrations")
    async def start(request: web.Request) -> web.Response:
        host = host_of(request)
        body = await request.json()
        mid = body["migrationId"]
        world.migrations.setdefault(mid, (time.monotonic(), host.name, body["target"]["ticket"], body["vmId"],
                                          MigrationMode(body.get("mode", "Live"))))
        return dump(_status(world, mid, host.name))

    @routes.get("/{host}/v1/migrations/{mid}")
    async def get_migration(request: web.Request) -> web.Response:
        host = host_of(request)
        mid = request.match_info["mid"]
        if mid not in world.migrations:
            return not_found("no such migration")
        return dump(_status(world, mid, host.name))

    @routes.get("/{host}/v1/migrations")
    async def list_migrations(request: web.Request) -> web.Response:
        host_of(request)
        return dump(MigrationList(migrations=[]))

    a = web.Application()
    a.add_routes(routes)
    return a


def _status(world: World, mid: str, asked: str) -> MigrationStatus:
    started, source, target, vm_id, mode = world.migrations[mid]
    done = time.monotonic() - started >= MIGRATION_SECONDS
    if done and vm_id in world.hosts[source].vms:
        world.hosts[target].vms[vm_id] = world.hosts[source].vms.pop(vm_id)
    return MigrationStatus(
        migration_id=mid, vm_id=vm_id, role=MigrationRole.source if asked == source else MigrationRole.target,
        mode=mode, phase=MigrationPhase.Succeeded if done else MigrationPhase.Transferring,
        transferred_mib=256.0 if done else 128.0, percent=100.0 if done else 50.0,
        downtime_ms=1.0 if done else None, duration_ms=MIGRATION_SECONDS * 1000 if done else None,
        committed=done, source_digest="0" * 16, target_digest="0" * 16 if done else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="JSON file: {hosts: [...], vms: [...]}")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    world = World()
    for h in spec["hosts"]:
        world.hosts[h["name"]] = FakeHost(h["name"], h["cpu"], h["cores"], h["memoryMiB"])
    for v in spec["vms"]:
        host = world.hosts[v["host"]]
        host.vms[v["uid"]] = vm_info(v["uid"], v["name"], v["namespace"], v["cpus"], v["memoryMiB"],
                                     host.cpu_model, True)

    async def serve() -> None:
        runner = web.AppRunner(app(world), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await asyncio.to_thread(Path(args.port_file).write_text, str(port))
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
