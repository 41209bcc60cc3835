"""The import's driver steps as decisions over a guest's driver inventory. Pure: no I/O.

InstallAgent, RemoveThirdPartyDrivers and InstallSyntheticDrivers each compute, from the drivers the
guest's agent reports, the :class:`DriverEdit` still to make (None when there is none), so a step
run twice does nothing; Verify's :func:`driver_problems` says what is left. The import controller
sends an edit to the agent holding the guest; the plan's messages simulate the same edits from the
source's drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmshift import drivers as catalog
from vmshift.api.vmimport import ImportStepName
from vmshift.conversion.plan import AGENT, ConversionPlan

#: Emulated drivers the synthetic step removes: the devices they drive are replaced by VMBus ones.
REPLACED_KINDS = frozenset({catalog.DeviceClass.Network, catalog.DeviceClass.Storage})


@dataclass(frozen=True)
class DriverEdit:
    """Drivers to install and to remove on one guest (the agent removes first, then installs)."""

    install: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


def agent_change(drivers: Sequence[str]) -> DriverEdit | None:
    """InstallAgent: install the vmshift guest agent unless it is there."""
    return None if AGENT in drivers else DriverEdit(install=[AGENT])


def third_party_change(drivers: Sequence[str]) -> DriverEdit | None:
    """RemoveThirdPartyDrivers: remove every third-party (or unknown) driver still installed."""
    removed = catalog.third_party(list(drivers))
    return DriverEdit(remove=removed) if removed else None


def emulated(drivers: Sequence[str]) -> list[str]:
    """The emulated network and storage drivers among ``drivers``, in order."""
    return [d for d in drivers if catalog.driver(d).kind is catalog.DriverKind.Emulated
            and catalog.driver(d).device in REPLACED_KINDS]


def synthetic_change(drivers: Sequence[str]) -> DriverEdit | None:
    """InstallSyntheticDrivers: install the missing synthetic drivers, remove the emulated NIC and storage ones."""
    install = [d for d in catalog.SYNTHETIC_SET if d not in drivers]
    remove = emulated(drivers)
    return DriverEdit(install=install, remove=remove) if install or remove else None


def driver_problems(drivers: Sequence[str]) -> list[str]:
    """What Verify finds wrong with a converted guest's drivers; empty when it runs on synthetic ones only."""
    problems = []
    missing = [d for d in (AGENT, *catalog.SYNTHETIC_SET) if d not in drivers]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    foreign = catalog.third_party(list(drivers))
    if foreign:
        problems.append(f"third-party drivers remain: {', '.join(foreign)}")
    old = emulated(drivers)
    if old:
        problems.append(f"emulated drivers remain: {', '.join(old)}")
    return problems


#: The steps that change drivers, and the decision of each.
DRIVER_STEPS: dict[ImportStepName, Callable[[Sequence[str]], DriverEdit | None]] = {
    ImportStepName.InstallAgent: agent_change,
    ImportStepName.RemoveThirdPartyDrivers: third_party_change,
    ImportStepName.InstallSyntheticDrivers: synthetic_change,
}


def apply_change(drivers: Sequence[str], change: DriverEdit) -> list[str]:
    """The inventory after ``change``, as the agent computes it: removals first, then installs appended."""
    result = [d for d in drivers if d not in set(change.remove)]
    result += [d for d in dict.fromkeys(change.install) if d not in result]
    return result


def describe_change(change: DriverEdit, *, done: bool = True) -> str:
    """'installed a and removed b' (``done``) or 'install a and remove b'."""
    install, remove = ("installed", "removed") if done else ("install", "remove")
    parts = []
    if change.install:
        parts.append(f"{install} {', '.join(change.install)}")
    if change.remove:
        parts.append(f"{remove} {', '.join(change.remove)}")
    return " and ".join(parts) or "change nothing"


def planned_messages(plan: ConversionPlan, report: Mapping[str, Any]) -> dict[ImportStepName, str]:
    """What each step after Inspect will do, for status before it runs: the planner's words for
    CreateVirtualMachine, and the driver changes simulated from the source's drivers."""
    ref = f"{plan.target.namespace}/{plan.target.name}"
    by_name = {s["name"]: s["message"] for s in report.get("steps") or []}
    drivers = list(plan.drivers_before)
    messages = {
        ImportStepName.CreateVirtualMachine: (
            f"{by_name.get(ImportStepName.CreateVirtualMachine.value, '')}\nThe guest starts with the source's "
            f"drivers ({', '.join(drivers) or 'none'}); InstallAgent, RemoveThirdPartyDrivers and "
            f"InstallSyntheticDrivers then act on it through its host's agent.").strip(),
    }
    for step, decide in DRIVER_STEPS.items():
        change = decide(drivers)
        if change is None:
            messages[step] = f"Nothing expected to do on the guest of {ref}: its drivers need no change here."
            continue
        messages[step] = f"Will {describe_change(change, done=False)} on the guest of {ref} once it runs."
        drivers = apply_change(drivers, change)
    network, disk = catalog.io_ceilings(drivers)
    messages[ImportStepName.Verify] = (
        f"Will check through the agent that {ref} runs with {', '.join(drivers)} and no third-party or emulated "
        f"network or storage driver, and read its I/O ceilings: expected network {plan.io_before.network_mbps} -> "
        f"{network} Mbit/s, disk {plan.io_before.disk_mbps} -> {disk} MB/s.")
    return messages
