"""Processor compatibility as QEMU CPU models: which model a guest starts with, and what QEMU offers.

Pure: no I/O. Compatibility mode runs the fleet baseline (archspec's ``x86_64_v2``, which QEMU's
``Nehalem`` model provides: SSE4.2, POPCNT, CMPXCHG16B, no AVX), so a guest moves between any
hosts of one vendor; full mode runs the QEMU model named after the host's microarchitecture. The
agent's compatibility check still compares archspec feature sets (processor.py); this module only
spells the choice the way QEMU does.
"""

from __future__ import annotations

from typing import Any

from vmshift.hypervisor.driver import CpuChoice, CpuModelOffer
from vmshift.processor import guest_features

#: The QEMU model of the compatibility baseline (processor.COMPATIBILITY_BASELINE, x86_64_v2).
BASELINE_MODEL = "Nehalem"

#: archspec microarchitecture → the QEMU model of that generation (QEMU 7.2's names).
QEMU_MODELS: dict[str, str] = {
    "nehalem": "Nehalem",
    "westmere": "Westmere",
    "sandybridge": "SandyBridge",
    "ivybridge": "IvyBridge",
    "haswell": "Haswell-noTSX",
    "broadwell": "Broadwell-noTSX",
    "skylake": "Skylake-Client",
    "skylake_avx512": "Skylake-Server",
    "cascadelake": "Cascadelake-Server",
    "cooperlake": "Cooperlake",
    "icelake": "Icelake-Server",
    "sapphirerapids": "SapphireRapids",
    "zen": "EPYC",
    "zen2": "EPYC-Rome",
    "zen3": "EPYC-Milan",
    "zen4": "EPYC-Genoa",
}


def choose(host_model: str, compatibility: bool) -> CpuChoice:
    """The QEMU model and the archspec features a guest started on ``host_model`` gets.

    ValueError names the host model when QEMU has no model of its generation.
    """
    features = guest_features(host_model, compatibility)
    if compatibility:
        return CpuChoice(model=BASELINE_MODEL, features=features)
    model = QEMU_MODELS.get(host_model)
    if model is None:
        raise ValueError(f"QEMU has no CPU model for host CPU {host_model!r} (known: "
                         f"{', '.join(sorted(QEMU_MODELS))}); turn on processor compatibility for this VM, which "
                         f"runs the {BASELINE_MODEL} baseline")
    return CpuChoice(model=model, features=features)


def offers(definitions: list[dict[str, Any]]) -> list[CpuModelOffer]:
    """QEMU's ``query-cpu-definitions`` answer as offers, sorted by name."""
    out = []
    for item in definitions:
        missing = tuple(str(f) for f in item.get("unavailable-features") or ())
        out.append(CpuModelOffer(name=str(item["name"]), usable=not missing, unavailable_features=missing))
    return sorted(out, key=lambda o: o.name)


def for_incoming(features: frozenset[str], compatibility: bool) -> CpuChoice:
    """The CPU an arriving guest must get: the model it was started with, found from the archspec
    features it runs with (the agents' migration request carries those, not QEMU's name).

    ValueError when no model QEMU knows gives exactly these features.
    """
    if compatibility:
        return CpuChoice(model=BASELINE_MODEL, features=features)
    for host_model, model in QEMU_MODELS.items():
        try:
            known = guest_features(host_model, False)
        except ValueError:  # a generation this archspec does not know
            continue
        if known == features:
            return CpuChoice(model=model, features=features)
    raise ValueError(f"no QEMU CPU model gives the {len(features)} features the guest runs with (known models: "
                     f"{', '.join(sorted(QEMU_MODELS))}); it cannot be received by a QEMU host")
