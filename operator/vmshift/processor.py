"""Processor models, vendors and feature sets from archspec's microarchitecture data.

Pure: no I/O. The one place that turns a CPU model name (``icelake``, ``zen3``) into a vendor and
a feature set, and that defines what a guest sees in processor compatibility mode. The agents,
the scheduler and the API's enum all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import archspec.cpu

#: The generic level whose features a guest sees when ``processor.compatibility`` is on. Like
#: Hyper-V's processor compatibility mode it hides every instruction-set extension newer than a
#: baseline, so the guest can move between generations of one vendor (never across vendors).
COMPATIBILITY_BASELINE = "x86_64_v2"

_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


@dataclass(frozen=True)
class ProcessorInfo:
    """What a host's processor offers: the model, its vendor and its feature flags."""

    model: str
    vendor: str
    features: frozenset[str]


@cache
def cpu_models() -> tuple[str, ...]:
    """Every concrete x86-64 microarchitecture archspec knows, from a vendor we can host."""
    return tuple(
        name
        for name, target in archspec.cpu.TARGETS.items()
        if target.family.name == "x86_64" and target.vendor in _VENDORS
    )


@cache
def processor_info(model: str) -> ProcessorInfo:
    """The vendor and full feature set of ``model``; ValueError names the model if unknown."""
    if model not in cpu_models():
        raise ValueError(
            f"unknown CPU model {model!r}: expected one of archspec's x86-64 microarchitectures "
            f"such as haswell, cascadelake, icelake, sapphirerapids, zen2, zen3, zen4"
        )
    target = archspec.cpu.TARGETS[model]
    return ProcessorInfo(model=model, vendor=_VENDORS[target.vendor], features=frozenset(target.features))


@cache
def baseline_features() -> frozenset[str]:
    """The features a guest in compatibility mode sees, on a host of either vendor."""
    return frozenset(archspec.cpu.TARGETS[COMPATIBILITY_BASELINE].features)


def guest_features(host_model: str, compatibility: bool, baseline: frozenset[str] | None = None) -> frozenset[str]:
    """The feature set a guest started on ``host_model`` is fixed to for its lifetime.

    In compatibility mode the guest sees ``baseline`` (the operator computes it from the hosts the
    VM may run on, like vSphere's EVC) or, when none is given, the :data:`COMPATIBILITY_BASELINE`
    level; never a feature the host lacks.
    """
    host = processor_info(host_model)
    if compatibility:
        return (baseline if baseline is not None else baseline_features()) & host.features
    return host.features


def missing_features(guest: frozenset[str] | set[str], target_model: str) -> list[str]:
    """Features the guest was started with that ``target_model`` lacks, sorted (empty: fits)."""
    return sorted(set(guest) - processor_info(target_model).features)
