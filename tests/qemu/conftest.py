"""Fixtures for the QEMU driver's tests: the guest image (built once from Debian's packages) and two
hosts' drivers that share one directory as their cluster shared volume ``csv1``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from vmshift.devcluster import guestimage
from vmshift.devcluster.guestimage import GuestImage
from vmshift.hypervisor.qemu.driver import QemuConfig, QemuDriver
from vmshift.hypervisor.qemu.workload import Tick, parse_line

#: TCG on two cores: a boot takes 20-30 s, and 150 s was seen with the load average at 20.
BOOT_SECONDS = 400.0


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return guestimage.ensure()


@dataclass
class Hosts:
    h1: QemuDriver
    h2: QemuDriver
    shared: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hosts(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hosts]:
    root = tmp_path_factory.mktemp("qemu")
    shared = root / "shared"
    (shared / "csv1").mkdir(parents=True)
    h1 = QemuDriver(QemuConfig(work_dir=root / "h1", shared_dir=shared, image=guest_image))
    h2 = QemuDriver(QemuConfig(work_dir=root / "h2", shared_dir=shared, image=guest_image))
    try:
        yield Hosts(h1, h2, shared)
    finally:
        await h1.close()
        await h2.close()


def console_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def ticks(text: str) -> list[Tick]:
    return [t for line in text.splitlines() if isinstance(t := parse_line(line), Tick)]


async def wait_for_tick(read: Callable[[], str], at_least: int, within: float = BOOT_SECONDS) -> list[Tick]:
    """Poll the guest's serial stream (``read``) until a tick >= ``at_least`` shows; fail with its tail."""
    deadline = time.monotonic() + within
    while True:
        text = await asyncio.to_thread(read)
        seen = ticks(text)
        if seen and seen[-1].n >= at_least:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"no tick >= {at_least} within {within:g} s; console ends with:\n{text[-1500:]}")
        await asyncio.sleep(0.2)
