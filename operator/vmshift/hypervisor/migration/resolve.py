"""The re-dial that resolves a switchover in doubt: the source asks the target whether it resumed the guest.

The source's side of RESOLVE (the target answers it in ``target.handle_connection``); what the source
does with the answer is ``SourceMigration._resolve``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time

from vmshift.hypervisor.migration.stream import StreamClosed, open_stream
from vmshift.hypervisor.migration.wire import MAX_CONTROL_BYTES, ProtocolError, Resolve, ResolveDecision, decode

log = logging.getLogger("vmshift.agent.migration")


async def resolve_with_target(host: str, port: int, migration_id: str, token: str,
                              give_up_after: float = 60.0) -> bool | None:
    """Ask the target whether it resumed the guest: True or False as it states, None when it cannot be
    asked within ``give_up_after`` seconds (refused connections and silence prove nothing: a partition
    looks the same as a dead host). A target that does not know the migration has restarted since,
    with whatever it ran: the guest cannot run there (False)."""
    deadline = time.monotonic() + give_up_after
    delay = 0.05
    while True:
        try:
            stream = await open_stream(host, port, within=2.0)
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                log.warning("migration %s: cannot reach the target for %.0f s (%s)", migration_id, give_up_after,
                            exc)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        try:
            await stream.send_message(Resolve(migration_id=migration_id, resolve_token=token))
            frame = await stream.read_frame(10.0, MAX_CONTROL_BYTES)
            answer = decode(frame.kind, frame.body)
            if isinstance(answer, ResolveDecision):
                return answer.known and answer.resumed
        except (StreamClosed, OSError, ProtocolError):
            pass
        finally:
            stream.close()
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(delay)
