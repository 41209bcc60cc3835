"""Times as the Kubernetes API writes them: the one place vmshift reads the wall clock for status and
turns a time into text or text into a time.

Pure apart from :func:`now`. Status fields hold RFC 3339 in UTC with a ``Z``: whole seconds like
``metav1.Time`` (conditions, most timestamps), or six fractional digits like ``metav1.MicroTime``
where two writes in one second must still order (a drain's ``startedAt`` is its id).
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


def rfc3339(when: datetime | float | None = None, *, micro: bool = False) -> str:
    """``when`` (a datetime, seconds since the epoch, or now) as RFC 3339 in UTC with a ``Z``:
    whole seconds (truncated), or with ``micro`` six fractional digits."""
    if when is None:
        moment = now()
    elif isinstance(when, datetime):
        moment = when.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime:
    """An API time (RFC 3339, ``Z`` or an offset) as an aware datetime; ValueError when it is not one."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def unix_seconds(value: str | datetime | None) -> float | None:
    """Seconds since the epoch of an API time (RFC 3339 text or a datetime), or None for none."""
    if value is None or value == "":
        return None
    when = value if isinstance(value, datetime) else parse(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def whole_seconds(when: datetime | None = None) -> datetime:
    """``when`` (or now) in UTC without its fraction: what a condition's lastTransitionTime holds."""
    return (when or now()).astimezone(UTC).replace(microsecond=0)
