"""select_policy precedence and determinism; choose_mode's live/quick choice and messages."""

from __future__ import annotations

from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.controllers.views import policy_view
from vmshift.scheduling.compatibility import Problem, check_target
from vmshift.scheduling.fleet import Disk, Fleet, VMView
from vmshift.scheduling.policy import MigrationPolicyView, Rung, choose_mode, select_policy

from .strategies import host, vm

CATCH_ALL = MigrationPolicyView("catch-all")
BY_TIER = MigrationPolicyView("by-tier", vm_selector={"tier": "db"})
BY_TIER_NS = MigrationPolicyView("by-tier-ns", vm_selector={"tier": "db"}, namespaces=("prod",))
BY_NS_LABEL = MigrationPolicyView("by-ns-label", namespace_selector={"env": "prod"})
BY_TWO = MigrationPolicyView("by-two", vm_selector={"tier": "db", "size": "big"})


def test_most_specific_wins() -> None:
    policies = [CATCH_ALL, BY_TIER, BY_TIER_NS, BY_NS_LABEL, BY_TWO]
    assert select_policy({"tier": "web"}, "dev", policies) is CATCH_ALL
    assert select_policy({"tier": "db"}, "dev", policies) is BY_TIER
    assert select_policy({"tier": "db"}, "prod", policies) is BY_TIER_NS
    assert select_policy({"tier": "web"}, "prod", policies, namespace_labels={"env": "prod"}) is BY_NS_LABEL
    # Two keys each: by-tier-ns has a namespace key, so it wins the tie over by-two.
    assert select_policy({"tier": "db", "size": "big"}, "prod", policies) is BY_TIER_NS
    assert select_policy({"tier": "db", "size": "big"}, "dev", policies) is BY_TWO


def test_equal_specificity_ties_by_name_and_request_wins() -> None:
    a = MigrationPolicyView("b-policy", vm_selector={"x": "1"})
    b = MigrationPolicyView("a-policy", vm_selector={"y": "1"})
    assert select_policy({"x": "1", "y": "1"}, "ns", [a, b]) is b
    assert select_policy({"x": "1", "y": "1"}, "ns", [a, b], requested="b-policy") is a
    assert select_policy({}, "ns", [a, b]) is None


@settings(max_examples=60, deadline=None)
@given(
    policies=st.lists(
        st.builds(
            MigrationPolicyView,
            name=st.sampled_from(["p1", "p2", "p3", "p4", "p5"]),
            namespaces=st.sampled_from([(), ("a",), ("a", "b")]),
            namespace_selector=st.dictionaries(st.sampled_from(["env"]), st.sampled_from(["prod", "dev"])),
            vm_selector=st.dictionaries(st.sampled_from(["tier", "size", "app"]), st.sampled_from(["1", "2"])),
        ),
        max_size=6,
        unique_by=lambda p: p.name,
    ),
    labels=st.dictionaries(st.sampled_from(["tier", "size", "app"]), st.sampled_from(["1", "2"])),
    namespace=st.sampled_from(["a", "b", "c"]),
    ns_labels=st.dictionaries(st.sampled_from(["env"]), st.sampled_from(["prod", "dev"])),
    seed=st.randoms(use_true_random=False),
)
def test_selection_ignores_input_order(
    policies: list[MigrationPolicyView], labels: dict[str, str], namespace: str, ns_labels: dict[str, str], seed: Random
) -> None:
    first = select_policy(labels, namespace, policies, namespace_labels=ns_labels)
    shuffled = list(policies)
    seed.shuffle(shuffled)
    assert select_policy(labels, namespace, shuffled, namespace_labels=ns_labels) == first
    if first is not None:
        assert all(labels.get(k) == v for k, v in first.vm_selector.items())


def _local_disk_case() -> tuple[VMView, list[Problem]]:
    src, dst = host("h1"), host("h2")
    v = vm("cache", on=src, disks=(Disk("root", 10, volume="csv-1"), Disk("tmp", 20, local=True)))
    return v, check_target(v, "h2", Fleet([src, dst], [v]), moving=True)


def test_auto_picks_live_when_it_can() -> None:
    src, dst = host("h1"), host("h2")
    v = vm("web", on=src, dirty_rate_mibps=50, working_set_mib=512)
    choice = choose_mode("Auto", v, None, check_target(v, "h2", Fleet([src, dst], [v]), moving=True),
                         bandwidth_mbps=10_000)
    assert choice.mode is MigrationMode.Live
    assert choice.message.startswith("Live migration chosen by Auto: expected about")


def test_auto_falls_back_to_quick_when_policy_allows() -> None:
    v, problems = _local_disk_case()
    quick = MigrationPolicyView("allow-quick", ladder=(Rung.PreCopy, Rung.Quick))
    choice = choose_mode(MigrationMode.Auto, v, quick, problems)
    assert choice.mode is MigrationMode.Quick
    assert "disk tmp is local to h1 and cannot move live" in choice.message
    assert "Policy allow-quick allows Quick" in choice.message


def test_auto_refuses_when_policy_forbids_quick_and_live_names_the_disk() -> None:
    v, problems = _local_disk_case()
    choice = choose_mode("Auto", v, MigrationPolicyView("strict"), problems)
    assert choice.mode is None and choice.reason is FailureReason.StorageNotShared
    assert "policy strict does not allow Quick" in choice.message
    live = choose_mode("Live", v, None, problems)
    assert live.mode is None and "(mode Live was requested)" in live.message
    assert choose_mode("Quick", v, None, problems).mode is MigrationMode.Quick


def test_hard_problem_refuses_every_mode() -> None:
    src, dst = host("h1", "icelake"), host("h2", "haswell")
    v = vm("web", on=src)
    problems = check_target(v, "h2", Fleet([src, dst], [v]), moving=True)
    for mode in ("Auto", "Live", "Quick"):
        assert choose_mode(mode, v, None, problems).reason is FailureReason.IncompatibleProcessor


def test_completion_timeout_is_per_gib() -> None:
    assert MigrationPolicyView("p", completion_timeout_per_gib_seconds=150).completion_timeout_seconds(6144) == 900


def test_precedence_wins_over_specificity_then_specificity_then_name() -> None:
    broad_high = MigrationPolicyView("z-broad", precedence=10)
    narrow = MigrationPolicyView("a-narrow", vm_selector={"tier": "db", "zone": "a"})
    narrow_too = MigrationPolicyView("b-narrow", vm_selector={"tier": "db", "zone": "a"})
    labels = {"tier": "db", "zone": "a"}
    assert select_policy(labels, "default", [narrow, broad_high, narrow_too]) is broad_high
    assert select_policy(labels, "default", [narrow_too, narrow]) is narrow
    one = MigrationPolicyView("one", vm_selector={"tier": "db"})
    assert select_policy(labels, "default", [one, narrow_too]) is narrow_too


def test_a_policy_spec_reads_the_api_defaults_and_its_own_settings() -> None:
    assert policy_view("p", {}) == MigrationPolicyView("p")  # the API model's defaults are the scheduler's
    view = policy_view("p", {"precedence": 7, "ladder": ["PreCopy", "AutoConverge", "Quick"], "allowQuick": True,
                             "autoConverge": {"initialPercent": 30, "stepPercent": 5, "maxPercent": 80},
                             "selector": {"vmSelector": {"matchLabels": {"tier": "db"}}, "namespaces": ["prod"]}})
    assert (view.precedence, view.throttle, view.allows_quick) == (7, (30, 5, 80), True)
    assert (view.vm_selector, view.namespaces) == ({"tier": "db"}, ("prod",))
