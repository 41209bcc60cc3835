"""The limits of a virtual machine, in one place: the API (the CRD schemas), the agent protocol, the
import planner and the controllers all read them here, so what the API admits the agents accept.

Pure constants and one pure parser: no I/O, no imports from the rest of vmshift. A limit named here
is a contract: raise one only together with everything that reads it (the CRDs are regenerated from
the API models, which use these numbers).
"""

from __future__ import annotations

import re

#: Virtual processors of one VM (Hyper-V's limit for a generation 2 VM).
MAX_VM_CPUS = 240
#: Memory of one VM, in MiB (12 TiB, Hyper-V's limit for a generation 2 VM).
MAX_VM_MEMORY_MIB = 12 * 1024 * 1024
#: Size of one virtual disk, in GiB (64 TiB, the VHDX limit).
MAX_DISK_GIB = 65536
#: Virtual disks of one VM.
MAX_VM_DISKS = 64
#: How fast a simulated guest may write memory, in MiB/s (64 GiB/s: above any memory bus a guest
#: could saturate, and what the agent's guest model can simulate).
MAX_DIRTY_RATE_MIBPS = 65536

#: Drivers in one guest's inventory (the ``vmshift.io/initial-drivers`` annotation, an import's plan,
#: the agent's ``drivers`` list).
MAX_DRIVERS = 256
#: One driver's name, as an OS lists it (``netvsc``, ``vmware-tools``, ``megaraid_sas``, ``e1000e.sys``):
#: letters, digits, '.', '_' and '-', starting with a letter or digit.
MAX_DRIVER_NAME_LENGTH = 63
DRIVER_NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_DRIVER_NAME_LENGTH - 1}}}$"
_DRIVER_NAME_RE = re.compile(DRIVER_NAME_PATTERN)


class DriverListError(ValueError):
    """A driver inventory outside the limits; the message names what is wrong."""


def check_driver_names(names: list[str], *, where: str) -> list[str]:
    """``names`` when every name is a valid driver name and there are at most :data:`MAX_DRIVERS`;
    otherwise :class:`DriverListError` saying what is wrong, with ``where`` naming the source."""
    if len(names) > MAX_DRIVERS:
        raise DriverListError(f"{where} lists {len(names)} drivers; at most {MAX_DRIVERS} are allowed")
    bad = [n for n in names if len(n) > MAX_DRIVER_NAME_LENGTH or not _DRIVER_NAME_RE.match(n)]
    if bad:
        shown = ", ".join(repr(n[:40] + ("..." if len(n) > 40 else "")) for n in bad[:3])
        raise DriverListError(
            f"{where} has {len(bad)} invalid driver name(s): {shown}; a driver name is a letter or digit "
            f"followed by letters, digits, '.', '_' or '-', at most {MAX_DRIVER_NAME_LENGTH} characters in all")
    return names


def parse_driver_list(text: str, *, where: str) -> list[str]:
    """A comma-separated driver inventory (blank entries and surrounding spaces ignored), checked."""
    if len(text) > MAX_DRIVERS * (MAX_DRIVER_NAME_LENGTH + 1):
        raise DriverListError(f"{where} is {len(text)} characters long; at most "
                              f"{MAX_DRIVERS * (MAX_DRIVER_NAME_LENGTH + 1)} are allowed")
    return check_driver_names([d.strip() for d in text.split(",") if d.strip()], where=where)
