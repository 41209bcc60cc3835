"""An agent behind a proxy, NAT or Service tells its peers the address they can dial, not its own port."""

from __future__ import annotations

from pathlib import Path

from vmshift.hypervisor.launcher import AgentConfig, start_agent
from vmshift.hypervisor.protocol import IncomingMigrationRequest, IncomingVm, MigrationMode


async def test_the_advertised_migration_port_is_what_grants_and_host_info_name(tmp_path: Path) -> None:
    agent = start_agent(AgentConfig(name="behind-proxy", advertise_migration_port=40999), None, tmp_path)
    try:
        assert agent.migration_port != 40999, "the listener binds a port of its own"
        async with agent.client() as client:
            assert (await client.host()).migration_port == 40999
            grant = await client.prepare_incoming(IncomingMigrationRequest(
                migration_id="m-1", mode=MigrationMode.Live,
                vm=IncomingVm(vm_id="v-1", name="v-1", namespace="t", cpus=1, memory_mib=16, features=[])))
            assert grant.port == 40999
    finally:
        agent.stop()
