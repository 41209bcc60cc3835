"""A QEMU host's save and restore in place (``POST /v1/vms/{id}/save`` and ``/restore``) with a real guest:
the refusals before QEMU is asked, the state file in the host's driver directory, the answers that need
no QEMU (saving a saved guest, restoring a running one), and the guest counting on after its restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.qemu.conftest import console_text, wait_for_tick
from vmshift.devcluster.guestimage import GuestImage
from vmshift.hypervisor.hostconfig import ApiError, HostConfig
from vmshift.hypervisor.protocol import DiskSpec, VmDefinition, VmState, WorkloadSpec
from vmshift.hypervisor.qemu.driver import QemuConfig, QemuDriver
from vmshift.hypervisor.qemuhost import SAVED_STATE, DrivenHost

pytestmark = [pytest.mark.qemu]

VM = "saver-1"
DEFINITION = VmDefinition(
    name=VM, cpus=1, memory_mib=96, compatibility=True,
    disks=[DiskSpec(name="root", size_gib=1, volume="csv1")],
    workload=WorkloadSpec(dirty_rate_mib_ps=0.5, working_set_mib=8),
)


async def test_save_and_restore_in_place_refuse_the_wrong_state_and_keep_the_guest_counting(
        guest_image: GuestImage, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "csv1").mkdir(parents=True)
    config = HostConfig(name="h1", cpu_model="icelake", cores=4, memory_mib=4096, bandwidth_mbps=1000,
                        shared_volumes=("csv1",), driver="qemu", driver_dir=tmp_path / "guests", shared_dir=shared)
    assert config.driver_dir is not None
    driver = QemuDriver(QemuConfig(work_dir=config.driver_dir, shared_dir=shared, image=guest_image))
    host = DrivenHost(config, driver)
    state_file = config.driver_dir / VM / SAVED_STATE
    try:
        await host.define(VM, DEFINITION)
        for action, call in (("save", host.save), ("restore", host.restore)):
            with pytest.raises(ApiError) as refused:
                await call(VM)
            assert (refused.value.status, refused.value.code) == (409, "InvalidState"), refused.value.message
            assert refused.value.message == f"cannot {action} VM {VM}: it is Defined"
        assert not state_file.exists(), "a refused save wrote a state file"

        await host.start(VM)
        await wait_for_tick(lambda: console_text(driver.console(VM)), 2)
        saved = await host.save(VM)
        assert saved.state is VmState.Saved, saved
        assert state_file.stat().st_size > 1024 * 1024, "the saved state is not in the host's driver directory"
        beat = driver.beat(VM)
        assert beat is not None and beat[0] >= 2, beat
        # the answer is the real guest's word (its last tick and region checksum), not the record's
        assert (saved.heartbeat, saved.digest) == (beat[0], beat[1][:16]), (saved, beat)
        again = await host.save(VM)
        assert again.state is VmState.Saved, "saving a saved guest is not a no-op"
        assert again.heartbeat == saved.heartbeat, (again, saved)

        restored = await host.restore(VM)
        assert restored.state is VmState.Running, restored
        assert restored.heartbeat >= beat[0], (restored, beat)
        await wait_for_tick(lambda: console_text(driver.console(VM)), beat[0] + 2)
        assert (await host.restore(VM)).state is VmState.Running, "restoring a running guest is not a no-op"

        await host.stop(VM)
        with pytest.raises(ApiError) as refused:
            await host.save(VM)
        assert refused.value.message == f"cannot save VM {VM}: it is Stopped"
    finally:
        await host.delete(VM, force=True)
        await driver.close()
