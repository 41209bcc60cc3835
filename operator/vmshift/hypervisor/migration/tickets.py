"""One-time HMAC tickets: a target issues one per incoming migration, the source presents it in HELLO.

Pure apart from the clock: no I/O. A ticket binds a migration id, a VM id and an expiry to this
host's secret, so only the operator that asked the target for it can point a source at the target.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time


class TicketIssuer:
    """One-time HMAC tickets that let one source stream one migration into this host."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, migration_id: str, vm_id: str, expires: int) -> str:
        message = f"{migration_id}\n{vm_id}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def issue(self, migration_id: str, vm_id: str, ttl_seconds: float) -> str:
        expires = int(time.time() + ttl_seconds) + 1
        return f"{expires}.{self._mac(migration_id, vm_id, expires)}"

    def check(self, ticket: str, migration_id: str, vm_id: str) -> bool:
        expires_text, _, mac = ticket.partition(".")
        if not expires_text.isdigit() or len(expires_text) > 12 or not mac:
            return False
        expires = int(expires_text)
        good = hmac.compare_digest(mac.encode(), self._mac(migration_id, vm_id, expires).encode())
        return good and time.time() <= expires
