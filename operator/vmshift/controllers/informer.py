"""List-then-watch caches of our custom resources, the way controller-runtime's informers keep them.

One :class:`Informer` per kind lists every object once (paged, one consistent snapshot), then
watches from that snapshot's resourceVersion, and re-lists when the server says the version is
gone (410). Each event feeds the kind's :class:`Store` s: projections of an object into compact
entries under keys, the same shape as a Kopf index (``store[key]`` is the list of entries objects
gave for that key). ``synced`` is set once the first listing is in, which is the barrier handlers
wait on before deciding anything.

Why not ``kopf.index``: Kopf holds every handler back until each listed object has been indexed,
with one toggle per object that every waiting object re-checks on every change. With 11,000
objects that gate alone kept the operator at 100 % CPU for minutes before the first VM was
handled. Here the barrier is one event per kind.

The reading runs in a daemon thread with the official client (the sync client must not block
Kopf's loop); entries are applied on the event loop, so stores are only touched from there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import orjson
from kubernetes.client.exceptions import ApiException

from vmshift import metrics
from vmshift.controllers import kubeapi

T = TypeVar("T")
Body = Mapping[str, Any]
Projection = Callable[[Body], Mapping[str, T]]

log = logging.getLogger("vmshift.informer")

#: Page size of the initial listing: a few hundred objects per response keeps memory flat.
PAGE = 500
#: Server-side watch timeout; the watch is re-opened from the last resourceVersion (not traffic).
WATCH_SECONDS = 300


class Store(Mapping[str, list[T]], Generic[T]):
    """Entries by key, one per object that projects onto the key (like a Kopf index)."""

    def __init__(self, project: Projection[T]) -> None:
        self._project = project
        self._by_key: dict[str, dict[str, T]] = {}
        self._keys_of: dict[str, tuple[str, ...]] = {}

    def put(self, uid: str, body: Body) -> None:
        self.drop(uid)
        projected = self._project(body)
        for key, entry in projected.items():
            self._by_key.setdefault(key, {})[uid] = entry
        if projected:
            self._keys_of[uid] = tuple(projected)

    def drop(self, uid: str) -> None:
        for key in self._keys_of.pop(uid, ()):
            bucket = self._by_key.get(key)
            if bucket is not None:
                bucket.pop(uid, None)
                if not bucket:
                    del self._by_key[key]

    def uids(self) -> set[str]:
        return set(self._keys_of)

    def entries(self) -> list[T]:
        return [entry for bucket in self._by_key.values() for entry in bucket.values()]

    def first(self, key: str) -> T | None:
        bucket = self._by_key.get(key)
        return next(iter(bucket.values())) if bucket else None

    def __getitem__(self, key: str) -> list[T]:
        return list(self._by_key[key].values())

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)


def values(store: Store[T]) -> list[T]:
    """Every entry of a store."""
    return store.entries()


def one(store: Store[T], key: str) -> T | None:
    """The entry under ``key`` (the first, for keys one object owns), or None."""
    return store.first(key)


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Newline-delimited records from a byte stream whose chunks split them anywhere (pure)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def typed(item: dict[str, Any], page: Body) -> None:
    """Give a listed item the ``apiVersion`` and ``kind`` a list response leaves out of its items (as
    Kopf's listing does): a handler handed the body posts events whose involvedObject names them."""
    kind = str(page.get("kind") or "")
    if kind.endswith("List"):
        item.setdefault("kind", kind.removesuffix("List"))
    if page.get("apiVersion"):
        item.setdefault("apiVersion", page["apiVersion"])


def compact(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without ``metadata.managedFields``, which nothing here reads (in place). They are
    half of a VM's JSON and, parsed, 60 % of its memory: at a first start the work queue holds
    every listed VM's body until its turn (10,000 VMs: ~310 MiB with them, ~130 MiB without), and
    memory freed by the interpreter after that peak is not given back to the system."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


class Gone(Exception):
    """The server no longer has the resourceVersion the watch asked from: list again."""


class Informer:
    """The cache of one kind, fed by list-then-watch in a thread, applied on the event loop."""

    def __init__(self, plural: str) -> None:
        self.plural = plural
        self.stores: list[Store[Any]] = []
        self.listeners: list[Callable[[str, Body], None]] = []
        self.relisted: list[Callable[[], None]] = []
        self.synced = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = ""  # the last resourceVersion seen (listing, event or bookmark)

    def index(self, project: Projection[T]) -> Store[T]:
        """Register a projection (decorator); the returned store is filled while the informer runs."""
        store: Store[T] = Store(project)
        self.stores.append(store)
        return store

    def listen(self, fn: Callable[[str, Body], None]) -> Callable[[str, Body], None]:
        """Call ``fn(event type, body)`` after each change is in the stores (decorator): a waker
        that reads the stores next sees what woke it."""
        self.listeners.append(fn)
        return fn

    def on_listed(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn()`` after each complete listing is in the stores (decorator): a listing after the
        watch lost its place drops objects without a DELETED event, so a listener that keeps its own
        state from events looks at the stores whole again."""
        self.relisted.append(fn)
        return fn

    # --- applied on the event loop -------------------------------------------------------------

    def apply(self, kind: str, body: Body) -> None:
        uid = str(body.get("metadata", {}).get("uid", ""))
        for store in self.stores:
            if kind == "DELETED":
                store.drop(uid)
            else:
                store.put(uid, body)
        for listener in self.listeners:
            listener(kind, body)

    def listed(self, uids: set[str]) -> None:
        """A listing (given page by page to ``apply``) is complete: forget what it did not hold."""
        for store in self.stores:
            for gone in store.uids() - uids:
                store.drop(gone)
        for fn in self.relisted:
            fn()
        if not self.synced.is_set():
            log.info("%s: %d listed", self.plural, len(uids))
        self.synced.set()

    # --- read in a thread -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.plural}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        """List, then watch from where the listing (or the last event) left off. A watch that ends
        or breaks is resumed from the last version seen; only a version the server no longer has
        (410 Gone) costs a new listing."""
        backoff = 1.0
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                self._version = version
                self._watch(version)
                version = self._version
                backoff = 1.0
            except Gone:
                log.info("%s: resourceVersion %s expired, listing again", self.plural, version)
                version = None
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: resourceVersion %s expired, listing again", self.plural, version)
                    version = None
                    continue
                self._pause(exc, backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # the API server restarting, a network blip: watch again
                version = self._version or None
                self._pause(exc, backoff)
                backoff = min(backoff * 2, 30.0)

    def _pause(self, exc: Exception, seconds: float) -> None:
        metrics.RECONCILE_ERRORS.labels(kind=f"informer/{self.plural}").inc()
        log.warning("%s: list/watch failed (%s); again in %.0f s", self.plural, exc, seconds)
        self._stopping.wait(seconds)

    def _list(self) -> str:
        """List page by page, each page applied as it comes (10,000 bodies are never held at once)."""
        uids: set[str] = set()
        token: str | None = None
        version = ""
        while True:
            page = kubeapi.list_page(self.plural, limit=PAGE, token=token)
            for item in page.get("items") or []:
                compact(item)
                typed(item, page)
                uids.add(str(item.get("metadata", {}).get("uid", "")))
                self._deliver(self.apply, "ADDED", item)
            meta = page.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                break
        self._deliver(self.listed, uids)
        return version

    def _watch(self, version: str) -> None:
        """Follow one watch request; ``self._version`` tracks the last version seen."""
        response = kubeapi.watch_stream(self.plural, version, WATCH_SECONDS)
        try:
            for line in lines(response.stream(65536, decode_content=True)):
                if self._stopping.is_set():
                    break
                event = orjson.loads(line)
                kind, obj = event.get("type"), compact(event.get("object") or {})
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message"))
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                self._version = str((obj.get("metadata") or {}).get("resourceVersion") or self._version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._deliver(self.apply, kind, obj)
        finally:
            response.release_conn()


async def wait_synced(informers: list[Informer]) -> None:
    for informer in informers:
        await informer.synced.wait()
