"""Fleet builders and hypothesis strategies shared by the scheduling tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from vmshift.api.common import Selector
from vmshift.processor import guest_features, processor_info
from vmshift.scheduling.fleet import Disk, Fleet, HostView, VMView

MODELS = ["haswell", "broadwell", "skylake_avx512", "cascadelake", "icelake", "sapphirerapids", "zen2", "zen3",
          "zen4"]


def host(name: str, model: str = "icelake", **kw: Any) -> HostView:
    kw.setdefault("cores", 64)
    kw.setdefault("memory_mib", 262_144)
    kw.setdefault("shared_volumes", frozenset({"csv-1"}))
    return HostView.of(name, model, **kw)


def vm(name: str, *, on: HostView | None = None, namespace: str = "default", **kw: Any) -> VMView:
    """A VM; with ``on``, already started there (its processor fixed by that host)."""
    kw.setdefault("cpus", 2)
    kw.setdefault("memory_mib", 4096)
    kw.setdefault("disks", (Disk("root", 20, volume="csv-1"),))
    base = VMView(namespace=namespace, name=name, **kw)
    return base.started_on(on) if on is not None else base


@st.composite
def hosts(draw: st.DrawFn, count: int | None = None) -> list[HostView]:
    n = count if count is not None else draw(st.integers(1, 6))
    out = []
    for i in range(n):
        model = draw(st.sampled_from(MODELS))
        cores = draw(st.integers(4, 64))
        memory = draw(st.integers(4, 128)) * 1024
        out.append(
            HostView.of(
                f"h{i}",
                model,
                cores=cores,
                memory_mib=memory,
                allocated_cpus=draw(st.integers(0, cores)),
                allocated_memory_mib=draw(st.integers(0, memory // 1024)) * 1024,
                reserved_memory_mib=draw(st.sampled_from([0, 0, 2048])),
                shared_volumes=frozenset(draw(st.sets(st.sampled_from(["csv-1", "csv-2"])))),
                passthrough_luns=frozenset(draw(st.sets(st.sampled_from(["lun-1", "lun-2"])))),
                schedulable=draw(st.booleans() | st.just(True)),
                healthy=draw(st.sampled_from([True, True, True, False])),
                reachable=draw(st.sampled_from([True, True, True, False])),
                labels={"zone": draw(st.sampled_from(["a", "b"]))},
                max_concurrent_migrations=draw(st.integers(1, 4)),
                bandwidth_mbps=draw(st.sampled_from([1_000, 10_000, 25_000])),
            )
        )
    return out


@st.composite
def disks(draw: st.DrawFn) -> tuple[Disk, ...]:
    kinds = draw(st.lists(st.sampled_from(["csv-1", "csv-2", "lun-1", "lun-2", "local"]), max_size=2))
    out = []
    for i, kind in enumerate(kinds):
        if kind == "local":
            out.append(Disk(f"d{i}", 10, local=True))
        elif kind.startswith("lun"):
            out.append(Disk(f"d{i}", 10, passthrough_lun=kind))
        else:
            out.append(Disk(f"d{i}", 10, volume=kind))
    return tuple(out)


@st.composite
def vm_specs(draw: st.DrawFn, name: str, on: HostView | None) -> VMView:
    base = VMView(
        namespace=draw(st.sampled_from(["a", "b"])),
        name=name,
        cpus=draw(st.integers(1, 8)),
        memory_mib=draw(st.integers(1, 16)) * 1024,
        compatibility=draw(st.booleans()),
        disks=draw(disks()),
        priority=draw(st.sampled_from([0, 10, 100])),
        dirty_rate_mibps=draw(st.sampled_from([0.0, 20.0, 200.0, 900.0])),
        working_set_mib=draw(st.sampled_from([256.0, 1024.0])),
        host_selector=Selector.from_labels(draw(st.sampled_from([{}, {}, {"zone": "a"}]))),
        anti_affinity_group=draw(st.sampled_from([None, None, "g1"])),
    )
    if on is None:
        return base
    features = guest_features(on.cpu_model, base.compatibility)
    return VMView(**{**base.__dict__, "host": on.name, "guest_features": features,
                     "guest_vendor": processor_info(on.cpu_model).vendor, "guest_cpu_model": on.cpu_model})


@st.composite
def fleets(draw: st.DrawFn, max_vms: int = 8) -> Fleet:
    """Hosts (with random allocations) plus VMs started on them."""
    hs = draw(hosts())
    vms = []
    for i in range(draw(st.integers(0, max_vms))):
        where = draw(st.sampled_from(hs))
        vms.append(draw(vm_specs(f"vm-{i}", where)))
    return Fleet(hs, vms)
