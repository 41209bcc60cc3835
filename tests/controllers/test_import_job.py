"""An import's inspection runs off the event loop: a slow descriptor must not freeze the operator."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from tests.conversion.conftest import shared_dir
from vmshift.controllers import imports
from vmshift.controllers.imports import ImportJob
from vmshift.controllers.indexes import Store


async def test_parsing_the_source_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    slow_parse = 1.0
    real = imports.make_plan
    threads: list[str] = []

    def slow_make_plan(*args: Any) -> Any:  # stands for a large OVA being hashed
        threads.append(threading.current_thread().name)
        time.sleep(slow_parse)
        return real(*args)

    monkeypatch.setattr(imports, "make_plan", slow_make_plan)
    ovf = (shared_dir() / "testdata" / "ovf" / "vmware.ovf").read_text()
    job = ImportJob(name="imp", namespace="ns", meta={"uid": "u-1", "generation": 1},  # type: ignore[arg-type]
                    spec={"source": {"ovf": {"inline": ovf}},  # type: ignore[arg-type]
                          "target": {"name": "vm", "volume": "csv-1"}},
                    status={}, body={}, stopped=asyncio.Event(), index=Store(lambda body: {}),  # type: ignore[arg-type]
                    logger=logging.getLogger("test"))
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    plan = await job._ensure_plan()
    beat.cancel()
    assert plan.cpus == 2
    assert threads and threads[0] != threading.main_thread().name, "make_plan ran on the event loop's thread"
    assert ticks >= 10, f"the event loop ran only {ticks} times during a {slow_parse:.0f} s parse"
