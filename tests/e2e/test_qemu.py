"""Real guests end to end: the operator moves a Linux guest that QEMU runs, through the agents' API.

Three agents with ``--driver qemu`` join the shared e2e fleet (two icelake hosts and an AMD one; their
only shared volume, ``csv-q``, keeps the other tests' VMs off them). One 96 MiB guest boots once and
then, in order: moves live when its ``spec.placement.host`` changes, moves quick, is refused a move to
the AMD host, stays on its source when its migration is deleted mid-transfer, stays on its
source when the target's QEMU is killed mid-transfer, stays on its source when pre-copy does not
converge and the policy's ladder has nothing after it (NotConverging), moves by post-copy when the
ladder ends in PostCopy, and moves with one longer pause when it ends in Quick. After every step the
guest's serial stream (its consoles on every host it ran on, in order) must show its counter going up
by one each tick, never restarting and never repeating, with every memory checksum the one the
host-side replay of its writes predicts; and exactly one host must hold it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.e2e.test_declared_fields import API, Watch
from tests.kube import wait_for
from vmshift.api.reasons import MigrationMode
from vmshift.devcluster.stack import HostPlan
from vmshift.hypervisor.client import AgentError, incoming_vm
from vmshift.hypervisor.protocol import IncomingMigrationRequest, MigrationStatus, VmDefinition, WorkloadSpec
from vmshift.hypervisor.qemu.cmdline import workload_params
from vmshift.hypervisor.qemu.console import CONSOLES
from vmshift.hypervisor.qemu.workload import RegionModel, Tick, parse_line

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

FINISHED = {"Succeeded", "Failed", "Cancelled"}
VOLUME = "csv-q"
MEMORY_MIB = 96
DIRTY_MIBPS = 2.5
WORKING_SET_MIB = 8
#: Deadlines, not expectations: a TCG boot takes 10-30 s on this machine, 150 s was seen under load.
BOOT_SECONDS = 400.0
MOVE_SECONDS = 300.0
#: The slow policy's link: the guest's first round (some 30 MiB of non-zero pages) takes tens of seconds.
SLOW_MBPS = 8
#: The ladder tests' link: the guest rewrites its 8 MiB region faster than this carries it (2.5 MiB/s against
#: 3 MB/s and a 1 ms switchover threshold), so QEMU never switches over by itself; round 0 takes ~10 s.
LADDER_MBPS = 24
#: The first host holds a converged switchover for the operator's go (QEMU's pause-before-switchover) at most
#: this long; the guest is paused meanwhile. The other hosts do not hold (the agents' default).
HOLD_SECONDS = 2.0


class Guest:
    """The one real guest of this module: where it runs and how to read its whole serial stream."""

    def __init__(self, fleet: Fleet, hosts: list[str], ns: str) -> None:
        self.fleet = fleet
        self.hosts = hosts
        self.ns = ns
        self.name = "real-1"
        self.uid = ""
        self.definition = VmDefinition(name=self.name, cpus=1, memory_mib=MEMORY_MIB, compatibility=True,
                                       workload=WorkloadSpec(dirty_rate_mib_ps=DIRTY_MIBPS,
                                                             working_set_mib=WORKING_SET_MIB))

    def guests_dir(self, host: str) -> Path:
        config = self.fleet.stack.agents[host].config
        return self.fleet.stack.workdir / "agents" / f"{host}.guests" if config.driver_dir is None \
            else config.driver_dir

    def stream(self) -> str:
        """Every console the guest printed on, oldest first (kept consoles by when the guest left that
        host; the live one last), concatenated: a line cut by a move goes on in the next file."""
        kept: list[tuple[int, Path]] = []
        live: list[Path] = []
        for host in self.hosts:
            directory = self.guests_dir(host)
            kept += [(int(p.stem), p) for p in (directory / CONSOLES / self.uid).glob("*.log")]
            serial = directory / self.uid / "serial.log"
            if serial.exists():
                live.append(serial)
        assert len(live) <= 1, f"the guest has a console on more than one host: {live}"
        return "".join(p.read_text(errors="replace") for _, p in sorted(kept)) + \
            "".join(p.read_text(errors="replace") for p in live)

    def ticks(self) -> list[Tick]:
        return [t for line in self.stream().splitlines() if isinstance(t := parse_line(line), Tick)]

    def check(self) -> int:
        """Assert the counter is 0, 1, 2, ... with the predicted checksums; return the last tick."""
        seen = self.ticks()
        assert seen, f"the guest printed no tick; its stream ends with:\n{self.stream()[-1500:]}"
        numbers = [t.n for t in seen]
        assert numbers == list(range(len(numbers))), f"the counter restarted, repeated or skipped: {numbers}"
        params = workload_params(self.definition)
        model = RegionModel(params.region_mib, params.dirty_kib)
        for tick in seen:
            assert tick.md5 == model.md5(tick.n), \
                f"tick {tick.n}: the guest's region checksum {tick.md5} is not the predicted {model.md5(tick.n)}"
        return numbers[-1]

    def ticks_past(self, last: int, within: float = BOOT_SECONDS) -> int:
        """Wait until the guest prints a tick after ``last`` (it runs), check the stream, return the last."""
        def newer() -> int | None:
            seen = self.ticks()
            return seen[-1].n if seen and seen[-1].n > last else None
        wait_for(newer, f"guest {self.name} to print a tick after {last}", within,
                 describe=lambda: self.stream()[-1500:])
        return self.check()

    def only_on(self, host: str) -> None:
        copies = self.fleet.copies(self.uid)
        assert list(copies) == [host], f"guest {self.name} should be held by {host} only, agents hold: {copies}"
        assert copies[host].state.value == "Running", copies[host]

    def migrate(self, name: str, target: str, **spec: Any) -> dict[str, Any]:
        self.fleet.apply(self.fleet.migration(self.ns, name, self.name, target, **spec))
        return self.fleet.wait_phase("vsmig", name, self.ns, FINISHED, timeout=MOVE_SECONDS)

    def ask_to_receive(self, source: str, target: str) -> AgentError | None:
        """Ask ``target``'s agent to reserve room for the guest live; its refusal (None: it accepted)."""
        async def call() -> AgentError | None:
            async with self.fleet.stack.agents[source].client() as src, \
                    self.fleet.stack.agents[target].client() as dst:
                vm = await src.get_vm(self.uid)
                try:
                    await dst.prepare_incoming(IncomingMigrationRequest(
                        migration_id=f"direct-{uuid.uuid4().hex[:8]}", vm=incoming_vm(vm, (await src.host()).vendor),
                        mode=MigrationMode.Live))
                except AgentError as exc:
                    return exc
                return None
        return asyncio.run(call())

    def agent_migration(self, host: str, migration_uid: str) -> MigrationStatus:
        async def call() -> MigrationStatus:
            async with self.fleet.stack.agents[host].client() as client:
                return await client.get_migration(migration_uid)
        return asyncio.run(call())


@pytest.fixture(scope="module")
def guest(fleet: Fleet) -> Iterator[Guest]:
    pool = f"q-{uuid.uuid4().hex[:5]}"
    plans = [HostPlan(f"{pool}-a", "icelake", cores=2, memory_mib=256, shared_volumes=(VOLUME,), driver="qemu",
                      labels={"pool": pool}, qemu_switchover_hold_seconds=HOLD_SECONDS),
             HostPlan(f"{pool}-b", "icelake", cores=2, memory_mib=256, shared_volumes=(VOLUME,), driver="qemu",
                      labels={"pool": pool}),
             HostPlan(f"{pool}-amd", "zen3", cores=2, memory_mib=256, shared_volumes=(VOLUME,), driver="qemu",
                      labels={"pool": pool})]
    fleet.stack.start_hosts(plans)
    names = [p.name for p in plans]
    ns = fleet.namespace()
    made = Guest(fleet, names, ns)
    try:
        for name in names:
            fleet.wait_phase("host", name, None, {"Ready"}, timeout=120)
        yield made
    finally:
        fleet.kube.kubectl("delete", "migrationpolicy", f"{ns}-slow", f"{ns}-ladder", "--ignore-not-found",
                           "--wait=false", check=False)
        fleet.kube.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False, timeout=150)
        fleet.stack.remove_hosts(names)


def test_a_virtual_machine_boots_a_real_guest(guest: Guest) -> None:
    fleet = guest.fleet
    a = guest.hosts[0]
    fleet.apply(fleet.vm(guest.ns, guest.name, host=a, compatibility=True, memory=MEMORY_MIB, dirty=DIRTY_MIBPS,
                         working_set=WORKING_SET_MIB, disks=[{"name": "root", "sizeGiB": 1, "volume": VOLUME}]))
    fleet.wait_phase("vsvm", guest.name, guest.ns, {"Running"}, timeout=120)
    guest.uid = fleet.uid(guest.ns, guest.name)
    assert guest.ticks_past(1) >= 2
    info = fleet.agent_host(a)
    assert info.driver == "qemu" and info.accelerator in ("kvm", "tcg") and "Nehalem" in info.cpu_models, info
    vm = fleet.agent_vms(a)[0]
    assert vm.heartbeat >= 2, "the agent reports the real guest's counter as its heartbeat"
    guest.only_on(a)


def test_changing_the_placement_host_live_migrates_it_with_qemus_downtime(guest: Guest) -> None:
    fleet = guest.fleet
    a, b = guest.hosts[0], guest.hosts[1]
    last = guest.check()
    with Watch(fleet, f"{API}/namespaces/{guest.ns}/virtualmachinemigrations") as watch:
        fleet.kube.kubectl("patch", "vsvm", guest.name, "-n", guest.ns, "--type=merge",
                           "-p", json.dumps({"spec": {"placement": {"host": b}}}))

        def moved() -> dict[str, Any] | None:
            items = json.loads(fleet.kube.kubectl("get", "vsmig", "-n", guest.ns, "-o", "json").stdout)["items"]
            done = [m for m in items if (m.get("status") or {}).get("phase") in FINISHED]
            return done[0] if done else None
        migration = wait_for(moved, "the placement change's migration to finish", MOVE_SECONDS,
                             describe=lambda: fleet.stack.operator_log_tail(25))
        # the list answered before the watch's reader had the last event: stop the watch once it has it
        wait_for(lambda: any((o.get("status") or {}).get("phase") in FINISHED for o in watch.seen),
                 "the watch to see the migration finish", 30)
        seen = watch.stop()
    status = migration["status"]
    assert status["phase"] == "Succeeded", status
    assert status["mode"] == "Live"
    # The source (host a) held QEMU's converged switchover (pre-switchover) until the operator had written
    # SwitchingOver and given its go, as for simulated moves.
    phases = [str((o.get("status") or {}).get("phase")) for o in seen if (o.get("status") or {}).get("phase")]
    assert "SwitchingOver" in phases and phases.index("SwitchingOver") < phases.index("Succeeded"), phases
    assert status["switchoverAcknowledged"] is True, status
    fleet.wait_phase("vsvm", guest.name, guest.ns, {"Running"})
    assert fleet.status("vsvm", guest.name, guest.ns)["host"] == b
    agent = guest.agent_migration(a, migration["metadata"]["uid"])
    assert agent.downtime_ms is not None and agent.downtime_ms == int(agent.downtime_ms), \
        f"the source agent's downtime is QEMU's (whole milliseconds): {agent}"
    assert status["downtimeMs"] == agent.downtime_ms
    log_tail = fleet.stack.agents[a].log_tail(200)
    assert "QEMU moved VM" in log_tail and "QEMU goes on with the switchover (after the operator's go)" in log_tail
    print(f"\nlive move held for the go: QEMU downtime {agent.downtime_ms} ms, {agent.duration_ms} ms in all")
    guest.ticks_past(last)
    guest.only_on(b)
    fleet.unpin(guest.ns, guest.name)


def test_a_quick_migration_saves_on_the_shared_volume_and_restores_on_the_target(guest: Guest) -> None:
    a, b = guest.hosts[0], guest.hosts[1]
    last = guest.check()
    status = guest.migrate("quick", a, mode="Quick")
    assert status["phase"] == "Succeeded" and status["mode"] == "Quick", status
    assert status["downtimeMs"] > 0
    guest.ticks_past(last)
    guest.only_on(a)
    assert not [p for p in guest.guests_dir(b).glob(f"{guest.uid}/*")], "the source kept the guest's files"


def test_a_move_to_another_cpu_vendor_is_refused_before_qemu_is_asked(guest: Guest) -> None:
    a, amd = guest.hosts[0], guest.hosts[2]
    last = guest.check()
    status = guest.migrate("to-amd", amd)
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "IncompatibleProcessor", status
    assert not (guest.guests_dir(amd) / guest.uid).exists(), "the AMD host's QEMU was asked for the guest"
    # The AMD host's agent refuses too, asked directly as a careless operator would, before its QEMU is.
    refusal = guest.ask_to_receive(a, amd)
    assert refusal is not None and refusal.code == "IncompatibleProcessor" and "vendor" in refusal.message, refusal
    assert not (guest.guests_dir(amd) / guest.uid).exists(), "the AMD host's QEMU was asked for the guest"
    guest.ticks_past(last)
    guest.only_on(a)


def _slow_policy(guest: Guest) -> None:
    fleet = guest.fleet
    name = f"{guest.ns}-slow"
    if fleet.get("migrationpolicy", name):
        return
    fleet.apply({"apiVersion": "vmshift.io/v1alpha1", "kind": "MigrationPolicy", "metadata": {"name": name},
                 "spec": {"selector": {"namespaces": [guest.ns]}, "precedence": 1000, "bandwidthMbps": SLOW_MBPS,
                          "maxDowntimeMs": 300}})

    def governs() -> dict[str, Any] | None:
        status = fleet.status("migrationpolicy", name)
        return status if status.get("selectedVirtualMachines") == 1 else None
    wait_for(governs, f"MigrationPolicy {name} to govern the guest", 60)


def _slow_move_transferring(guest: Guest, name: str) -> int:
    """Start migration ``name`` of the guest from its first host to its second under the slow policy and wait
    until it transfers; the guest's tick before it started."""
    _slow_policy(guest)
    last = guest.check()
    guest.fleet.apply(guest.fleet.migration(guest.ns, name, guest.name, guest.hosts[1]))

    def moving() -> dict[str, Any] | None:
        status = guest.fleet.status("vsmig", name, guest.ns)
        assert status.get("phase") not in FINISHED, f"migration {name} ended before it could be interrupted: {status}"
        progress = status.get("progress") or {}
        return status if status.get("phase") == "Transferring" and progress else None
    wait_for(moving, f"migration {name} to transfer", MOVE_SECONDS)
    return last


def test_deleting_the_migration_mid_transfer_leaves_the_guest_on_its_source(guest: Guest) -> None:
    fleet = guest.fleet
    a, b = guest.hosts[0], guest.hosts[1]
    last = _slow_move_transferring(guest, "cancelled")
    uid = fleet.get("vsmig", "cancelled", guest.ns)["metadata"]["uid"]
    fleet.kube.kubectl("delete", "vsmig", "cancelled", "-n", guest.ns, "--wait=true", "--timeout=120s", timeout=150)
    agent = guest.agent_migration(a, uid)
    assert agent.phase.value == "Cancelled", agent
    wait_for(lambda: not (guest.guests_dir(b) / guest.uid).exists() or None,
             "the target to discard its incoming QEMU", 60)
    guest.ticks_past(last)
    guest.only_on(a)


def _target_qemu(agent_pid: int, vm_uid: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == agent_pid and f"guest={vm_uid}".encode() in cmdline:
            return int(entry.name)
    return None


def test_the_target_qemu_killed_mid_transfer_leaves_the_guest_on_its_source(guest: Guest) -> None:
    fleet = guest.fleet
    a, b = guest.hosts[0], guest.hosts[1]
    last = _slow_move_transferring(guest, "target-killed")
    pid = _target_qemu(fleet.stack.agents[b].pid, guest.uid)
    assert pid is not None, "no incoming QEMU of the guest runs under the target's agent"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    status = fleet.wait_phase("vsmig", "target-killed", guest.ns, FINISHED, timeout=MOVE_SECONDS)
    assert status["phase"] == "Failed", status
    assert time.monotonic() - killed < 60, "the failure took long to be seen"
    guest.ticks_past(last)
    guest.only_on(a)


def _ladder_policy(guest: Guest, ladder: list[str], **spec: Any) -> str:
    """The guest's policy in place of the slow one: one round on the ladder's first rung, then ``ladder``."""
    fleet = guest.fleet
    name = f"{guest.ns}-ladder"
    fleet.kube.kubectl("delete", "migrationpolicy", f"{guest.ns}-slow", "--ignore-not-found", "--wait=true",
                       "--timeout=60s", timeout=90)
    fleet.apply({"apiVersion": "vmshift.io/v1alpha1", "kind": "MigrationPolicy", "metadata": {"name": name},
                 "spec": {"selector": {"namespaces": [guest.ns]}, "precedence": 1000, "bandwidthMbps": LADDER_MBPS,
                          "maxDowntimeMs": 300, "maxRounds": 1, "stallRounds": 1, "ladder": ladder, **spec}})
    generation = fleet.get("migrationpolicy", name)["metadata"]["generation"]

    def governs() -> dict[str, Any] | None:  # this ladder, not the one an earlier test applied
        status = fleet.status("migrationpolicy", name)
        current = status.get("observedGeneration") == generation and status.get("selectedVirtualMachines") == 1
        return status if current else None
    wait_for(governs, f"MigrationPolicy {name} (generation {generation}) to govern the guest", 60)
    return name


def test_a_move_that_does_not_converge_fails_and_the_guest_runs_on_its_source(guest: Guest) -> None:
    fleet = guest.fleet
    a, b = guest.hosts[0], guest.hosts[1]
    _ladder_policy(guest, ["PreCopy"])
    last = guest.check()
    status = guest.migrate("not-converging", b)
    failure = status.get("failure") or {}
    assert status["phase"] == "Failed" and failure.get("reason") == "NotConverging", status
    assert "the limit of 1 rounds was reached" in failure.get("message", ""), failure
    agent = guest.agent_migration(a, fleet.get("vsmig", "not-converging", guest.ns)["metadata"]["uid"])
    assert agent.round >= 2 and not agent.committed and not agent.postcopy, agent
    wait_for(lambda: not (guest.guests_dir(b) / guest.uid).exists() or None,
             "the target to discard its incoming QEMU", 60)
    guest.ticks_past(last)
    guest.only_on(a)


def test_a_ladder_ending_in_postcopy_moves_the_guest_by_post_copy(guest: Guest) -> None:
    fleet = guest.fleet
    a, b = guest.hosts[0], guest.hosts[1]
    _ladder_policy(guest, ["PreCopy", "PostCopy"])
    last = guest.check()
    fleet.apply(fleet.migration(guest.ns, "postcopy", guest.name, b))
    seen: set[str] = set()

    def done() -> dict[str, Any] | None:
        status = fleet.status("vsmig", "postcopy", guest.ns)
        seen.add(str(status.get("phase")))
        return status if status.get("phase") in FINISHED else None
    status = wait_for(done, "the post-copy move to finish", MOVE_SECONDS)
    assert status["phase"] == "Succeeded", status
    assert status.get("strategy") == "PostCopy", status
    agent = guest.agent_migration(a, fleet.get("vsmig", "postcopy", guest.ns)["metadata"]["uid"])
    assert agent.postcopy and agent.committed and agent.downtime_ms is not None, agent
    assert status["downtimeMs"] == agent.downtime_ms
    assert "switching to post-copy" in fleet.stack.agents[a].log_tail(300)
    print(f"\npost-copy move: phases seen {sorted(seen)}, QEMU downtime {agent.downtime_ms} ms, "
          f"{agent.duration_ms} ms in all, {agent.round} rounds")
    fleet.wait_phase("vsvm", guest.name, guest.ns, {"Running"})
    guest.ticks_past(last)
    guest.only_on(b)


def test_a_ladder_ending_in_quick_lets_qemu_pause_the_guest_for_the_rest(guest: Guest) -> None:
    fleet = guest.fleet
    a, b = guest.hosts[0], guest.hosts[1]
    source, target = (b, a) if guest.fleet.copies(guest.uid).get(b) else (a, b)
    # the rest (the 8 MiB region and what the kernel dirtied) would cross 3 MB/s in about 3 s: within 20 s
    _ladder_policy(guest, ["PreCopy", "Quick"], allowQuick=True, maxDowntimeMs=20_000)
    last = guest.check()
    status = guest.migrate("quick-fallback", target)
    assert status["phase"] == "Succeeded", status
    assert status.get("strategy") == "Quick" and status["mode"] == "Quick", status
    agent = guest.agent_migration(source, fleet.get("vsmig", "quick-fallback", guest.ns)["metadata"]["uid"])
    # QEMU lifts its bandwidth cap for the last copy: the pause is the uncapped link's, within the budget
    assert agent.downtime_ms is not None and agent.downtime_ms <= 20_000, agent
    assert status["downtimeMs"] == agent.downtime_ms
    assert "falling back to quick" in fleet.stack.agents[source].log_tail(300)
    print(f"\nquick fallback: QEMU downtime {agent.downtime_ms} ms, {agent.duration_ms} ms in all")
    guest.ticks_past(last)
    guest.only_on(target)


def test_the_target_qemu_killed_in_post_copy_fails_the_move_and_leaves_the_guest_paused_for_a_person(
        guest: Guest) -> None:
    """Post-copy's risk (the last test: the guest is lost). Once switched, the guest runs on the target and its
    memory is split between the hosts; the target's QEMU killed then leaves it running nowhere. The source's
    agent sees QEMU's ``postcopy-paused``: the migration fails TargetLost saying so, the source's QEMU is kept
    paused (never resumed: its memory there is stale), the VM's status and a Warning event say so, and a
    person's spec.running: false stops it."""
    fleet = guest.fleet
    source, target = (guest.hosts[1], guest.hosts[0]) if fleet.copies(guest.uid).get(guest.hosts[1]) \
        else (guest.hosts[0], guest.hosts[1])
    # At 8 Mbit/s (the cap holds in post-copy too) the rest takes many seconds to pull: time to kill the target.
    _ladder_policy(guest, ["PreCopy", "PostCopy"], bandwidthMbps=SLOW_MBPS)
    guest.check()
    fleet.apply(fleet.migration(guest.ns, "postcopy-lost", guest.name, target))
    uid = wait_for(lambda: fleet.get("vsmig", "postcopy-lost", guest.ns).get("metadata", {}).get("uid"),
                   "the migration to exist", 30)

    def switched() -> MigrationStatus | None:
        try:
            agent = guest.agent_migration(source, uid)
        except AgentError:
            return None  # not started on the source yet
        assert not agent.phase.finished, f"the move ended before it could be interrupted: {agent}"
        if not agent.postcopy:
            return None
        # Asked is not done: until the target runs the guest, a lost target makes QEMU fail the transfer and
        # run the guest on the source again (an ordinary failure, tests/hypervisor/test_qemu_source.py).
        there = fleet.copies(guest.uid).get(target)
        return agent if there is not None and there.state.value == "Running" else None
    wait_for(switched, "the guest to run on the target in post-copy", MOVE_SECONDS, interval=0.1)
    pid = _target_qemu(fleet.stack.agents[target].pid, guest.uid)
    assert pid is not None, "no QEMU of the guest runs under the target's agent"
    os.kill(pid, signal.SIGKILL)
    status = fleet.wait_phase("vsmig", "postcopy-lost", guest.ns, FINISHED, timeout=MOVE_SECONDS)
    failure = status.get("failure") or {}
    assert status["phase"] == "Failed" and failure.get("reason") == "TargetLost", status
    message = failure["message"]
    for words in ("during post-copy", "split between the hosts", "kept paused", "not resumed",
                  f"runs on neither {source} nor {target}"):
        assert words in message, f"{words!r} is not in the failure's message: {message}"
    assert "keeps running" not in message and "runs on the source" not in message.replace(
        "does not run on the source", ""), message
    agent = guest.agent_migration(source, uid)
    assert agent.postcopy and not agent.committed, agent
    assert fleet.copies(guest.uid)[source].state.value == "Paused", fleet.copies(guest.uid)
    vm = fleet.status("vsvm", guest.name, guest.ns)
    assert vm["phase"] == "Failed" and vm["reason"] == "PostCopyLost" and "split" in vm["message"], vm
    ready = next(c for c in vm["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PostCopyLost", ready
    events = json.loads(fleet.kube.kubectl(
        "get", "events", "-n", guest.ns, "--field-selector",
        f"involvedObject.name={guest.name},reason=MigrationFailed", "-o", "json").stdout)["items"]
    assert any("split between the hosts" in e["message"] for e in events), events
    serial = guest.guests_dir(source) / guest.uid / "serial.log"
    printed = serial.read_text(errors="replace")
    time.sleep(3)
    assert serial.read_text(errors="replace") == printed, "the guest ran on again on the source"
    print(f"\npost-copy target lost: {message}")
    # A person decides: stop it.
    fleet.kube.kubectl("patch", "vsvm", guest.name, "-n", guest.ns, "--type=merge",
                       "-p", json.dumps({"spec": {"running": False}}))
    fleet.wait_phase("vsvm", guest.name, guest.ns, {"Stopped"}, timeout=120)
    assert fleet.copies(guest.uid)[source].state.value == "Stopped", fleet.copies(guest.uid)
