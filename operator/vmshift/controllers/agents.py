"""The operator's directory of agents: one client per Host, and what each agent last reported.

Talks to agents only through HypervisorClient and reads agent tokens from Secrets in the operator's
own namespace only (``VMSHIFT_NAMESPACE``, default vmshift-system): a Host's author chooses its
endpoint, so the only credential ever sent there is the one its tokenSecretRef names in that
namespace, which only the operator's administrators can write; keeps in memory
the last HostInfo and VM list of every agent, so decisions read a snapshot instead of asking again.
The agents are the truth about where a guest runs: :meth:`AgentDirectory.locate` answers from them.
Reachability has hysteresis (several failed polls to go Unreachable, several good ones to come back),
so a host does not flap on one lost request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from vmshift.api.labels import AGENT_HOSTS_ANNOTATION
from vmshift.controllers import kubeapi
from vmshift.controllers.tokens import operator_namespace
from vmshift.controllers.views import AgentFacts
from vmshift.hypervisor.client import AgentError, HypervisorClient, clean, shared_pool
from vmshift.hypervisor.protocol import HostInfo, VmInfo, VmState

log = logging.getLogger("vmshift.agents")

#: Failed polls in a row before a host is Unreachable, and good ones before it is reachable again.
FAILURES_TO_UNREACHABLE = 3
SUCCESSES_TO_REACHABLE = 2
#: How long a token read from a Secret is reused before it is read again (rotation delay).
TOKEN_TTL = 300.0
#: How long a passed "every agent has answered" check is reused before hosts are looked at again.
SYNC_RECHECK_SECONDS = 0.5
#: The longest wait between two polls of an unreachable agent (VMSHIFT_AGENT_POLL_MAX_SECONDS).
MAX_POLL_BACKOFF_SECONDS = 16.0


def poll_delay(interval: float, failures: int, cap: float = MAX_POLL_BACKOFF_SECONDS) -> float:
    """Seconds until the next poll of an agent that failed ``failures`` polls in a row (pure).

    Every ``interval`` while it answers and while it is merely late (before it counts as
    Unreachable, so detection is not slowed); then doubling per failed poll, up to ``cap``; back to
    ``interval`` after the first answer (``failures`` is reset by a good poll).
    """
    if failures < FAILURES_TO_UNREACHABLE:
        return interval
    return max(interval, min(cap, interval * 2.0 ** (failures - FAILURES_TO_UNREACHABLE + 1)))

#: Annotation of a token Secret naming the Hosts that may use it: Host names separated by commas, or
#: ``*`` for every Host. The Secret's owner decides where its token may be sent, not a Host's author.
#: What of an agent's error message reaches a Host's status and events, at most.
MAX_ERROR_TEXT = 300


def sanitized(text: str) -> str:
    """Text from an agent (or whatever answers at a Host's endpoint) as a Host's status may hold it."""
    return clean(text, MAX_ERROR_TEXT)


#: VM states that mean "the guest lives here" (a tombstone or a half-received copy does not).
RESIDENT = frozenset({VmState.Defined, VmState.Running, VmState.Paused, VmState.Saved, VmState.Stopped})


class AgentConfigError(Exception):
    """The Host's agent settings cannot be used (no endpoint, token Secret missing)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class AgentLink:
    """One host's agent: its client, its last report, and the reachability bookkeeping."""

    host: str
    endpoint: str
    token: str
    client: HypervisorClient
    info: HostInfo | None = None
    vms: dict[str, VmInfo] = field(default_factory=dict)
    reported_at: float = 0.0
    failures: int = 0
    successes: int = 0
    reachable: bool = False
    last_error: str = ""
    boot_id: str | None = None
    #: Whether the agent answers ``GET /v1/report`` (an agent of an earlier release answers 404).
    combined: bool = True

    def facts(self) -> AgentFacts:
        if self.info is None:
            return AgentFacts(reachable=False)
        return AgentFacts(
            reachable=self.reachable,
            healthy=self.info.health.healthy,
            cpu_model=self.info.cpu_model,
            vendor=self.info.vendor,
            features=frozenset(self.info.features),
            stream_mbps=self.info.migration_stream_mbps,
        )


def token_secret(host: str, ref: Mapping[str, Any] | None, namespace: str) -> tuple[str, str, str]:
    """(namespace, name, key) of the Secret holding ``host``'s agent token (pure), or AgentConfigError.

    The Secret must live in the operator's ``namespace``: a Host author cannot make the operator read
    (and send to an endpoint of their choosing) a Secret anywhere else. Without a tokenSecretRef
    nothing is sent: the operator has no fleet-wide credential to fall back on.
    """
    if not ref or not ref.get("name"):
        raise AgentConfigError("AgentTokenMissing", f"Host {host} names no spec.agent.tokenSecretRef: create a "
                               f"Secret with the agent's token in namespace {namespace} and reference it; the "
                               f"operator sends no credential to an agent otherwise.")
    given = ref.get("namespace") or namespace
    if given != namespace:
        raise AgentConfigError("TokenSecretOutsideOperatorNamespace",
                               f"Host {host}: spec.agent.tokenSecretRef names Secret {given}/{ref['name']}, but "
                               f"the operator reads agent tokens only from its own namespace {namespace}: move the "
                               f"Secret there and set tokenSecretRef.namespace to {namespace}.")
    return namespace, str(ref["name"]), str(ref.get("key") or "token")


def check_secret_serves(host: str, secret: str, allowed: str) -> None:
    """AgentConfigError unless the Secret's ``vmshift.io/agent-hosts`` annotation (``allowed``) names
    ``host`` or is ``*`` (pure). Without it, the author of any Host could have another host's token
    sent to an endpoint of their choosing."""
    names = {n.strip() for n in allowed.split(",") if n.strip()}
    if "*" in names or host in names:
        return
    raise AgentConfigError("TokenSecretNotForHost",
                           f"Host {host}: Secret {secret} holds an agent token that is not meant for it: its "
                           f"annotation {AGENT_HOSTS_ANNOTATION} is {allowed or 'missing'}. An administrator of "
                           f"the Secret adds {host} to it (Host names separated by commas, or * for every Host).")


class AgentDirectory:
    """Every known agent, keyed by Host name."""

    def __init__(self) -> None:
        self._links: dict[str, AgentLink] = {}
        self._tokens: dict[tuple[str, str, str], tuple[float, str, str]] = {}
        #: Reads of a token Secret under way: the Hosts that share it wait for the one read.
        self._token_reads: dict[tuple[str, str, str], asyncio.Future[tuple[str | None, dict[str, str]]]] = {}
        self._sync_check: asyncio.Future[bool] | None = None
        self._session: aiohttp.ClientSession | None = None
        #: Which hosts' last reports hold a VM id (so locating a guest does not ask every host).
        self._facts: dict[str, AgentFacts] = {}
        #: Bumped whenever a host's facts change, so a fleet built before is known to be stale.
        self.facts_version = 0
        self._where: dict[str, set[str]] = {}
        self._sync_checked_at = 0.0
        #: Whether a sync check passed once in this process (logged the first time).
        self.synced_once = False
        #: The poll under way of each host, with the link it asks.
        self._polls: dict[str, tuple[AgentLink, asyncio.Future[bool]]] = {}
        #: The operator's namespace, where agent tokens are read (looked up at the first token read).
        self._namespace: str | None = None
        #: When the first and the last link were made (monotonic), for the log line of the first sync.
        self._linked = (float("inf"), 0.0)

    async def link(self, host: str, spec: Mapping[str, Any]) -> AgentLink:
        """The link to ``host``'s agent, (re)built when its endpoint or token changed."""
        agent = spec.get("agent") or {}
        endpoint = agent.get("endpoint")
        if not endpoint:
            raise AgentConfigError("NoAgentEndpoint", f"Host {host} has no spec.agent.endpoint: set the URL of "
                                   f"its agent, e.g. http://127.0.0.1:7001.")
        token = await self._token(host, agent.get("tokenSecretRef"))
        current = self._links.get(host)
        if current is None or current.endpoint != endpoint or current.token != token:
            if current is not None:
                self._reindex(host, current.vms, {})
                await current.client.close()
            client = HypervisorClient(endpoint, token, session=self._pool())
            current = AgentLink(host=host, endpoint=endpoint, token=token, client=client)
            now = time.monotonic()
            self._linked = (min(self._linked[0], now), now)
            self._links[host] = current
            self._set_facts(host, current.facts())
        return current

    async def _token(self, host: str, ref: Mapping[str, Any] | None) -> str:
        """The agent token, read from its Secret at most every TOKEN_TTL seconds (polls cost no API call).
        At a start every Host's supervisor asks at once: the ones sharing a Secret share one read of it."""
        if self._namespace is None:  # read once: 1,000 Hosts asked it (an environment and a file look-up) each
            self._namespace = operator_namespace()
        namespace, name, key = token_secret(host, ref, self._namespace)
        cached = self._tokens.get((namespace, name, key))
        if cached is None or time.monotonic() - cached[0] >= TOKEN_TTL:
            ref_key = (namespace, name, key)
            read = self._token_reads.get(ref_key)
            if read is None:
                read = asyncio.ensure_future(kubeapi.read_secret(namespace, name, key))
                self._token_reads[ref_key] = read
                read.add_done_callback(lambda _: self._token_reads.pop(ref_key, None))
            token, annotations = await asyncio.shield(read)
            if not token:
                raise AgentConfigError("AgentTokenMissing", f"Host {host}: Secret {namespace}/{name} (key {key}) "
                                       f"with the agent token does not exist or lacks the key; create it.")
            cached = (time.monotonic(), token, annotations.get(AGENT_HOSTS_ANNOTATION, ""))
            self._tokens[(namespace, name, key)] = cached
        check_secret_serves(host, f"{namespace}/{name}", cached[2])
        return cached[1]

    def get(self, host: str) -> AgentLink | None:
        return self._links.get(host)

    async def forget(self, host: str) -> None:
        link = self._links.pop(host, None)
        if self._facts.pop(host, None) is not None:
            self.facts_version += 1
        if link is not None:
            self._reindex(host, link.vms, {})
            await link.client.close()

    def strays(self, hosts: Container[str]) -> list[str]:
        """The linked hosts not in ``hosts``, by name."""
        return sorted(name for name in self._links if name not in hosts)

    async def poll(self, link: AgentLink) -> bool:
        """Ask the agent for its host info and VMs; update reachability. True if it answered.

        Polls of one link at the same time share one request: at a start, the first round and the
        Host's supervisor (1,000 of them, which Kopf starts at once after a restart) ask together."""
        running = self._polls.get(link.host)
        if running is None or running[0] is not link:
            task = asyncio.ensure_future(self._poll(link))
            entry = running = (link, task)

            def done(_: asyncio.Future[bool]) -> None:
                if self._polls.get(link.host) is entry:
                    del self._polls[link.host]

            self._polls[link.host] = entry
            task.add_done_callback(done)
        return await asyncio.shield(running[1])

    async def _poll(self, link: AgentLink) -> bool:
        try:
            info, vms = await self._report(link)
        except AgentError as exc:  # AgentUnreachableError included
            link.failures += 1
            link.successes = 0
            link.last_error = sanitized(str(exc))
            if link.failures >= FAILURES_TO_UNREACHABLE:
                link.reachable = False
            self._set_facts(link.host, link.facts())
            return False
        link.info = info
        self._reindex(link.host, link.vms, {vm.id: vm for vm in vms})
        link.vms = {vm.id: vm for vm in vms}
        link.reported_at = time.monotonic()
        link.failures = 0
        link.successes += 1
        link.last_error = ""
        if link.boot_id is None or link.successes >= SUCCESSES_TO_REACHABLE or link.reachable:
            link.reachable = True
        link.boot_id = info.boot_id
        self._set_facts(link.host, link.facts())
        return True

    @staticmethod
    async def _report(link: AgentLink) -> tuple[HostInfo, list[VmInfo]]:
        """The host and its VMs: one call (``GET /v1/report``), or two to an agent older than it."""
        if link.combined:
            try:
                report = await link.client.report()
                return report.host, report.vms
            except AgentError as exc:
                if exc.status != 404:
                    raise
                link.combined = False  # an agent of an earlier release: ask it as it understands
        return await link.client.host(), await link.client.list_vms()

    async def wait_synced(self, hosts: Callable[[], Iterable[str]], patience: float = 15.0) -> bool:
        """Wait until every host's agent has answered once or been declared unreachable.

        Until then the operator cannot know that a guest runs nowhere, so it must not place it.
        Every caller shares one check (10,000 VMs waiting must not each scan 1,000 hosts); a
        check that passed is reused for SYNC_RECHECK_SECONDS, one that ran out of patience is not.
        """
        check = self._sync_check
        stale = check is not None and check.done() and (
            check.cancelled() or check.exception() is not None or not check.result()
            or time.monotonic() - self._sync_checked_at > SYNC_RECHECK_SECONDS)
        if check is None or stale:
            check = self._sync_check = asyncio.ensure_future(self._until_synced(hosts, patience))
        return await asyncio.shield(check)

    async def _until_synced(self, hosts: Callable[[], Iterable[str]], patience: float) -> bool:
        deadline = time.monotonic() + patience
        try:
            while not all(self._settled(name) for name in hosts()):
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.2)
            if not self.synced_once:
                self.synced_once = True
                log.info("every agent has answered or is unreachable (%d hosts; the first link was made %.1f s "
                         "before, the last %.1f s before)", len(self._links),
                         time.monotonic() - self._linked[0], time.monotonic() - self._linked[1])
            return True
        finally:
            self._sync_checked_at = time.monotonic()

    def _settled(self, host: str) -> bool:
        link = self._links.get(host)
        return link is not None and (link.info is not None or link.failures >= FAILURES_TO_UNREACHABLE)

    def _set_facts(self, host: str, facts: AgentFacts) -> None:
        if self._facts.get(host) != facts:
            self._facts[host] = facts
            self.facts_version += 1

    def facts(self) -> Mapping[str, AgentFacts]:
        """What each agent last told, by host (kept current by poll, not rebuilt per call)."""
        return self._facts

    def _reindex(self, host: str, old: Mapping[str, VmInfo], new: Mapping[str, VmInfo]) -> None:
        for vm_id in old.keys() - new.keys():
            holders = self._where.get(vm_id)
            if holders is not None:
                holders.discard(host)
                if not holders:
                    del self._where[vm_id]
        for vm_id in new.keys() - old.keys():
            self._where.setdefault(vm_id, set()).add(host)

    def locate(self, vm_id: str) -> list[tuple[str, VmInfo]]:
        """Hosts whose agent last reported ``vm_id`` resident, with what they said."""
        found = []
        for name in sorted(self._where.get(vm_id, ())):
            link = self._links.get(name)
            vm = link.vms.get(vm_id) if link is not None else None
            if vm is not None and vm.state in RESIDENT:
                found.append((name, vm))
        return found

    def reports(self) -> dict[str, Mapping[str, VmInfo]]:
        """What every reachable agent last reported, by host: its guests by VM id."""
        return {name: link.vms for name, link in self._links.items() if link.reachable}

    def reported_by(self, vm_id: str) -> frozenset[str]:
        """Hosts whose agent's last report lists ``vm_id``, in any state (a half-received copy included)."""
        return frozenset(self._where.get(vm_id, ()))

    async def live_locate(self, vm_id: str, concurrency: int = 50) -> tuple[list[tuple[str, VmInfo]], list[str]]:
        """Ask every agent now (not its last report) whether it holds ``vm_id``: the hosts that do, with
        what they said, and the hosts whose agent did not answer (any of those may hold it too)."""
        gate = asyncio.Semaphore(concurrency)

        async def ask(link: AgentLink) -> tuple[str, VmInfo | None, bool]:
            async with gate:
                try:
                    return link.host, await link.client.get_vm(vm_id), True
                except AgentError as exc:
                    return link.host, None, exc.status == 404

        answers = await asyncio.gather(*(ask(link) for link in list(self._links.values())))
        found = [(host, info) for host, info, _ in answers if info is not None and info.state in RESIDENT]
        return found, sorted(host for host, _, answered in answers if not answered)

    def unreachable(self) -> list[str]:
        """The hosts whose agents do not answer now, by name."""
        return sorted(name for name, link in self._links.items() if not link.reachable)

    def _pool(self) -> aiohttp.ClientSession:
        """One connection pool for every agent (created on the operator's event loop), bounded per agent."""
        if self._session is None or self._session.closed:
            self._session = shared_pool()
        return self._session

    async def close(self) -> None:
        for link in self._links.values():
            await link.client.close()
        self._links.clear()
        if self._session is not None:
            await self._session.close()
