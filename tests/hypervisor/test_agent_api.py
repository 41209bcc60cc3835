"""One real agent process and its management API: VMs, capacity, drivers, sensors, bad input."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from tests.hypervisor.conftest import TOKEN
from tests.hypervisor.helpers import poll, running_vm
from vmshift.drivers import io_ceilings
from vmshift.hypervisor.client import AgentError, AgentUnreachableError, HypervisorClient
from vmshift.hypervisor.launcher import AgentProcess
from vmshift.hypervisor.protocol import (
    ComponentFault,
    DriverChange,
    HealthSignal,
    SensorChange,
    Severity,
    VmDefinition,
    VmState,
)
from vmshift.processor import guest_features, processor_info

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def agent(pair: tuple[AgentProcess, AgentProcess]) -> AgentProcess:
    return pair[0]


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[HypervisorClient]:
    async with agent.client() as c:
        yield c


def vm_body(name: str, cpus: int = 1, memory_mib: int = 16, **extra: object) -> VmDefinition:
    return VmDefinition.model_validate({"name": name, "cpus": cpus, "memoryMiB": memory_mib, **extra})


async def raw(agent: AgentProcess, method: str, path: str, *, token: str | None = TOKEN,
              data: bytes | None = None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, \
            session.request(method, f"{agent.endpoint}{path}", data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_host_info_describes_the_host(client: HypervisorClient, agent: AgentProcess) -> None:
    host = await client.host()
    icelake = processor_info("icelake")
    assert (host.name, host.cpu_model, host.vendor) == (agent.config.name, "icelake", "Intel")
    assert set(host.features) == set(icelake.features)
    assert host.shared_volumes == ["csv1"] and host.passthrough_luns == ["lun7"]
    assert host.boot_id == agent.boot_id and host.migration_port == agent.migration_port
    assert host.health.healthy and host.sensors.fans and all(f.ok for f in host.sensors.fans)


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_every_call_needs_the_token(agent: AgentProcess, token: str | None) -> None:
    for method, path in [("GET", "/v1/host"), ("GET", "/v1/vms"), ("PUT", "/v1/vms/x"), ("POST", "/v1/sensors"),
                         ("POST", "/v1/migrations"), ("DELETE", "/v1/migrations/x"), ("GET", "/v1/nowhere")]:
        status, body = await raw(agent, method, path, token=token, data=b"{}")
        assert status == 401, (method, path, body)
        assert body["error"]["code"] == "Unauthorized"  # type: ignore[index]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_without_a_token_and_say_nothing_else(agent: AgentProcess, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{agent.endpoint}{path}") as response:
            assert (response.status, await response.text()) == (200, "ok\n")
        async with session.post(f"{agent.endpoint}{path}", data=b"{}") as response:
            assert response.status == 405, f"POST {path} answered {response.status}"
        # The probe paths open nothing else: a path below them still needs the token.
        async with session.get(f"{agent.endpoint}{path}/host") as response:
            assert response.status == 401


async def test_define_is_idempotent_and_start_fixes_the_feature_set(client: HypervisorClient) -> None:
    first = await client.define_vm("api-a", vm_body("a", cpus=2, memory_mib=32))
    again = await client.define_vm("api-a", vm_body("a", cpus=2, memory_mib=32))
    assert first.state is VmState.Defined and again.state is VmState.Defined and again.features == []
    running = await client.start_vm("api-a")
    assert set(running.features) == set(processor_info("icelake").features)
    compat = await running_vm(client, "api-b", compatibility=True)
    assert set(compat.features) == set(guest_features("icelake", True))
    assert "avx512f" not in compat.features and "sse4_2" in compat.features
    with pytest.raises(AgentError) as refused:
        await client.define_vm("api-a", vm_body("a", cpus=4, memory_mib=32))
    assert refused.value.status == 409 and "stop it" in refused.value.message
    await client.stop_vm("api-a")
    assert (await client.define_vm("api-a", vm_body("a", cpus=4, memory_mib=32))).cpus == 4
    for vm_id in ("api-a", "api-b"):
        await client.delete_vm(vm_id, force=True)


async def test_a_compatible_guest_starts_with_the_baseline_it_is_given(client: HypervisorClient) -> None:
    """The operator's fleet baseline (EVC-like) reaches the agent at start; the guest gets the part the
    host has, fixed until the next start."""
    fleet = processor_info("icelake").features & processor_info("haswell").features
    await client.define_vm("api-evc", vm_body("evc", compatibility=True))
    started = await client.start_vm("api-evc", baseline=fleet | {"not-a-real-flag"})
    assert set(started.features) == fleet, "exactly the baseline the host offers"
    assert "avx2" in started.features and "avx512f" not in started.features
    again = await client.start_vm("api-evc", baseline=processor_info("icelake").features)
    assert set(again.features) == fleet, "a running guest keeps its features"
    await client.stop_vm("api-evc")
    restarted = await client.start_vm("api-evc", baseline=processor_info("icelake").features)
    assert "avx512f" in restarted.features, "the new baseline takes effect at the next start"
    strict = await client.define_vm("api-strict", vm_body("strict"))
    assert strict.state is VmState.Defined
    assert set((await client.start_vm("api-strict", baseline=fleet)).features) == processor_info("icelake").features
    for vm_id in ("api-evc", "api-strict"):
        await client.delete_vm(vm_id, force=True)


async def test_define_refuses_what_the_host_cannot_hold(client: HypervisorClient) -> None:
    host = await client.host()
    for body, lacking in [(vm_body("big", memory_mib=host.memory_mib + 1), "MiB of memory"),
                          (vm_body("wide", cpus=host.cores + 1), "cpus")]:
        with pytest.raises(AgentError) as refused:
            await client.define_vm("api-too-big", body)
        assert (refused.value.status, refused.value.code) == (409, "InsufficientResources")
        assert lacking in refused.value.message
    assert "api-too-big" not in {vm.id for vm in await client.list_vms()}, "a refusal changes nothing"


async def test_save_restore_freezes_and_resumes_the_guest(client: HypervisorClient) -> None:
    await running_vm(client, "api-save", dirty=2, working_set=1)
    await poll(lambda: _beat_above(client, "api-save", 10), "the guest to run a while")
    saved = await client.save_vm("api-save")
    assert saved.state is VmState.Saved
    await asyncio.sleep(0.3)  # not waiting for anything: wall time passes, and a saved guest must not move
    later = await client.get_vm("api-save")
    assert (later.heartbeat, later.digest) == (saved.heartbeat, saved.digest), "a saved guest is frozen"
    restored = await client.restore_vm("api-save")
    assert restored.state is VmState.Running and restored.features == saved.features
    await poll(lambda: _beat_above(client, "api-save", saved.heartbeat), "the restored guest to beat again")
    with pytest.raises(AgentError) as refused:
        await client.delete_vm("api-save")
    assert refused.value.code == "InvalidState" and "force" in refused.value.message
    await client.delete_vm("api-save", force=True)
    with pytest.raises(AgentError) as gone:
        await client.get_vm("api-save")
    assert (gone.value.status, gone.value.code) == (404, "NotFound")


async def _beat_above(client: HypervisorClient, vm_id: str, beat: int) -> bool:
    return (await client.get_vm(vm_id)).heartbeat > beat


async def test_drivers_change_the_io_ceilings(client: HypervisorClient) -> None:
    await client.define_vm("api-drv", vm_body("drv", drivers=["vmxnet3", "pvscsi", "vmware-tools"]))
    before = await client.get_vm("api-drv")
    assert (before.io_ceilings.network_mbps, before.io_ceilings.disk_mbps) == io_ceilings(before.drivers)
    after = await client.change_drivers("api-drv", DriverChange(install=["vmbus", "netvsc", "storvsc"],
                                                                remove=["vmxnet3", "pvscsi", "vmware-tools"]))
    assert after.drivers == ["vmbus", "netvsc", "storvsc"]
    assert (after.io_ceilings.network_mbps, after.io_ceilings.disk_mbps) == io_ceilings(after.drivers)
    assert after.io_ceilings.network_mbps > before.io_ceilings.network_mbps
    await client.delete_vm("api-drv")


async def test_sensors_drive_health_and_heal(client: HypervisorClient) -> None:
    host = await client.set_sensors(SensorChange(fan=ComponentFault(index=1, failed=True)))
    assert not host.health.healthy
    assert [(p.signal, p.severity) for p in host.health.problems] == [(HealthSignal.Fan, Severity.Warning)]
    assert not host.sensors.fans[1].ok
    await client.set_sensors(SensorChange(power_supply=ComponentFault(index=0, failed=True)))
    await client.set_sensors(SensorChange(temperature_c=91))
    await client.set_sensors(SensorChange(corrected_memory_errors=60))
    host = await client.set_sensors(SensorChange(corrected_memory_errors=60))
    assert host.sensors.corrected_memory_errors == 120, "errors are counted, not set"
    assert host.sensors.corrected_memory_errors_per_hour == 120
    problems = {p.signal: p.severity for p in host.health.problems}
    # a failed supply is critical: the host has lost its power redundancy (vmshift.sensors.assess)
    assert problems == {HealthSignal.Fan: Severity.Warning, HealthSignal.PowerSupply: Severity.Critical,
                        HealthSignal.Temperature: Severity.Critical,
                        HealthSignal.CorrectedMemoryErrors: Severity.Warning}
    with pytest.raises(AgentError) as refused:
        await client.set_sensors(SensorChange(fan=ComponentFault(index=9, failed=True)))
    assert refused.value.status == 422 and "no fan 9" in refused.value.message
    healed = await client.set_sensors(SensorChange(heal=True))
    assert healed.health.healthy and healed.sensors.corrected_memory_errors == 0


@pytest.mark.parametrize(("method", "path", "data", "status", "code", "says"), [
    ("PUT", "/v1/vms/x", b"{not json", 400, "BadRequest", "not valid JSON"),
    ("PUT", "/v1/vms/x", b"", 400, "BadRequest", "needs a JSON body"),
    ("PUT", "/v1/vms/x", b'{"name": "x", "cpus": 0, "memoryMiB": 1}', 422, "Invalid", "cpus"),
    ("PUT", "/v1/vms/x", b'{"name": "x", "cpus": 1, "memoryMiB": 1, "colour": 1}', 422, "Invalid", "colour"),
    ("PUT", "/v1/vms/x", b"[1, 2]", 422, "Invalid", "VmDefinition"),
    ("PUT", "/v1/vms/bad%20id", b'{"name": "x", "cpus": 1, "memoryMiB": 1}', 400, "BadRequest", "invalid VM id"),
    ("POST", "/v1/vms/none/start", None, 404, "NotFound", "no VM"),
    ("GET", "/v1/migrations/none", None, 404, "NotFound", "no migration"),
    ("GET", "/v2/host", None, 404, "NotFound", "no such endpoint"),
    ("PATCH", "/v1/host", None, 405, "MethodNotAllowed", "PATCH"),
    ("POST", "/v1/sensors", b"{}", 422, "Invalid", "at least one"),
    ("POST", "/v1/migrations", b'{"migrationId": "m", "vmId": "v"}', 422, "Invalid", "target"),
    ("POST", "/v1/migrations/incoming", b'{"migrationId": "m", "vm": {}}', 422, "Invalid", "vm."),
    ("PUT", "/v1/vms/x", b"{" + b" " * (2 * 1024 * 1024) + b"}", 413, "PayloadTooLarge", "too large"),
])
async def test_bad_requests_get_clear_json_errors(agent: AgentProcess, method: str, path: str,
                                                  data: bytes | None, status: int, code: str, says: str) -> None:
    got, body = await raw(agent, method, path, data=data)
    error = body["error"]
    assert isinstance(error, dict)
    assert (got, error["code"]) == (status, code), body
    assert says in error["message"], body


async def _garbage(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 10)  # the agent answers or hangs up; it must not die
    except (OSError, TimeoutError):
        pass  # it hung up, maybe before we finished (ENOTCONN at write_eof, a reset at a write)
    finally:
        writer.close()


async def test_garbage_on_both_ports_does_not_hurt_the_agent(client: HypervisorClient, agent: AgentProcess) -> None:
    rng = random.Random(5)
    payloads = [bytes(rng.getrandbits(8) for _ in range(n)) for n in (1, 16, 4096, 70_000)]
    payloads += [b"VMSHIFT\x01" + b"\xff" * 64, b"VMSHIFT\x01\x01\x00\x00\x00\xff\xff\xff\x7f",
                 b"VMSHIFT\x01\x01\x00\x00\x00\x05\x00\x00\x00{}{}{", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100)]
    for port in (agent.api_port, agent.migration_port):
        await asyncio.gather(*(_garbage(port, p) for p in payloads))
    silent = [await asyncio.open_connection("127.0.0.1", agent.migration_port) for _ in range(3)]
    assert agent.alive, agent.log_tail()
    host = await client.host()
    assert host.boot_id == agent.boot_id
    for _reader, writer in silent:
        writer.close()


async def test_a_64_gib_guest_costs_the_agent_megabytes(spawn: Callable[..., AgentProcess]) -> None:
    agent = spawn("api-big", memory_mib=128 * 1024)
    async with agent.client() as client:
        base = _rss_mib(agent.pid)
        await running_vm(client, "big", memory_mib=64 * 1024, dirty=100, working_set=1024)
        await poll(lambda: _beat_above(client, "big", 100), "the 64 GiB guest to run for a second")
        vm = await client.get_vm("big")
        grown = _rss_mib(agent.pid) - base
        assert vm.memory_mib == 64 * 1024 and vm.state is VmState.Running
        assert grown < 64, f"a running 64 GiB guest grew the agent by {grown:.0f} MiB"


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_unreachable_agent_raises_a_distinct_error(spawn: Callable[..., AgentProcess]) -> None:
    agent = spawn("api-gone")
    boot = agent.boot_id
    agent.kill()
    async with HypervisorClient(agent.endpoint, TOKEN, timeout_seconds=2) as client:
        with pytest.raises(AgentUnreachableError):
            await client.host()
    again = spawn("api-gone")
    assert again.boot_id != boot, "a restarted agent has a new boot id"
