"""select_policy precedence and determinism; choose_mode's live/quick choice and messages."""

from __future__ import annotations

from pathlib import Path
from random import Random

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.api.common import Selector
from vmshift.api.migrationpolicy import MigrationPolicyStatus
from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.controllers.views import policy_view
from vmshift.scheduling.compatibility import Problem, check_target
from vmshift.scheduling.fleet import Disk, Fleet, VMView
from vmshift.scheduling.policy import (
    LISTED_VMS,
    MigrationPolicyView,
    PolicySubject,
    Rung,
    choose_mode,
    downtime_budget_ms,
    governed,
    migration_policy_status,
    select_policy,
)

from .strategies import host, vm

sel = Selector.from_labels

CATCH_ALL = MigrationPolicyView("catch-all")
BY_TIER = MigrationPolicyView("by-tier", vm_selector=sel({"tier": "db"}))
BY_TIER_NS = MigrationPolicyView("by-tier-ns", vm_selector=sel({"tier": "db"}), namespaces=("prod",))
BY_NS_LABEL = MigrationPolicyView("by-ns-label", namespace_selector=sel({"env": "prod"}))
BY_TWO = MigrationPolicyView("by-two", vm_selector=sel({"tier": "db", "size": "big"}))


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
    a = MigrationPolicyView("b-policy", vm_selector=sel({"x": "1"}))
    b = MigrationPolicyView("a-policy", vm_selector=sel({"y": "1"}))
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
            namespace_selector=st.dictionaries(st.sampled_from(["env"]), st.sampled_from(["prod", "dev"])).map(sel),
            vm_selector=st.dictionaries(st.sampled_from(["tier", "size", "app"]),
                                        st.sampled_from(["1", "2"])).map(sel),
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
        assert first.vm_selector.matches(labels)


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
    narrow = MigrationPolicyView("a-narrow", vm_selector=sel({"tier": "db", "zone": "a"}))
    narrow_too = MigrationPolicyView("b-narrow", vm_selector=sel({"tier": "db", "zone": "a"}))
    labels = {"tier": "db", "zone": "a"}
    assert select_policy(labels, "default", [narrow, broad_high, narrow_too]) is broad_high
    assert select_policy(labels, "default", [narrow_too, narrow]) is narrow
    one = MigrationPolicyView("one", vm_selector=sel({"tier": "db"}))
    assert select_policy(labels, "default", [one, narrow_too]) is narrow_too


def test_a_policy_spec_reads_the_api_defaults_and_its_own_settings() -> None:
    assert policy_view("p", {}) == MigrationPolicyView("p")  # the API model's defaults are the scheduler's
    view = policy_view("p", {"precedence": 7, "ladder": ["PreCopy", "AutoConverge", "Quick"], "allowQuick": True,
                             "autoConverge": {"initialPercent": 30, "stepPercent": 5, "maxPercent": 80},
                             "selector": {"vmSelector": {"matchLabels": {"tier": "db"}}, "namespaces": ["prod"]}})
    assert (view.precedence, view.throttle, view.allows_quick) == (7, (30, 5, 80), True)
    assert (view.vm_selector, view.namespaces) == (sel({"tier": "db"}), ("prod",))


SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "migrationpolicies.yaml"


def _sample_policies() -> list[MigrationPolicyView]:
    docs = [d for d in yaml.safe_load_all(SAMPLES.read_text()) if d]
    return [policy_view(d["metadata"]["name"], d["spec"]) for d in docs]


def test_the_batch_sample_selects_by_match_expressions_only() -> None:
    """batch-and-analytics has matchExpressions only: it must not select (and allow Quick for) every VM."""
    policies = _sample_policies()
    batch = next(p for p in policies if p.name == "batch-and-analytics")
    assert batch.vm_selector.describe() == "app in (analytics,batch)"
    assert select_policy({"app": "batch"}, "ns", policies) is batch
    assert select_policy({"app": "analytics"}, "ns", policies) is batch
    web = select_policy({"app": "web"}, "ns", policies)
    assert web is not None and web.name == "default" and not web.allows_quick
    assert select_policy({}, "ns", policies) is not batch


def test_match_expressions_count_toward_specificity() -> None:
    by_expr = policy_view("by-expr", {"selector": {"vmSelector": {"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["db"]}, {"key": "zone", "operator": "Exists"}]}}})
    assert select_policy({"tier": "db", "zone": "a"}, "ns", [BY_TIER, by_expr]) is by_expr
    assert select_policy({"tier": "db"}, "ns", [BY_TIER, by_expr]) is BY_TIER


def test_a_namespace_selector_matches_the_namespace_labels() -> None:
    prod = policy_view("prod-ns", {"selector": {"namespaceSelector": {"matchExpressions": [
        {"key": "env", "operator": "NotIn", "values": ["dev", "test"]}]}}, "precedence": 5})
    assert select_policy({}, "a", [prod], namespace_labels={"env": "prod"}) is prod
    assert select_policy({}, "a", [prod], namespace_labels={"env": "dev"}) is None
    assert select_policy({}, "a", [prod], namespace_labels={}) is prod  # NotIn holds without the label


def test_governed_names_each_vm_under_the_policy_that_wins_it() -> None:
    policies = [CATCH_ALL, BY_TIER, BY_NS_LABEL]
    vms = [PolicySubject("dev", "db-1", {"tier": "db"}), PolicySubject("prod", "web-1", {"tier": "web"}),
           PolicySubject("dev", "web-2", {"tier": "web"}), PolicySubject("dev", "pinned", {}, requested="by-tier")]
    answer = governed(policies, vms, {"prod": {"env": "prod"}})
    assert answer == {"catch-all": ["dev/web-2"], "by-tier": ["dev/db-1", "dev/pinned"], "by-ns-label": ["prod/web-1"]}


def test_the_policy_status_says_what_it_governs_and_is_a_valid_status() -> None:
    status = migration_policy_status(BY_TIER, [f"ns/vm-{i:02}" for i in range(25)], 3, {})
    parsed = MigrationPolicyStatus.model_validate(status)  # every key is in the model
    assert parsed.selectedVirtualMachines == 25 and len(parsed.selected) == LISTED_VMS
    ready = next(c for c in parsed.conditions if c.type == "Ready")
    assert (ready.status, ready.reason, ready.observedGeneration) == ("True", "Accepted", 3)
    assert "governs 25 VM(s)" in ready.message and "and 5 more" in ready.message
    empty = MigrationPolicyStatus.model_validate(migration_policy_status(BY_TIER, [], 3, status))
    ready = next(c for c in empty.conditions if c.type == "Ready")
    assert ready.reason == "NoVirtualMachinesSelected" and "tier=db" in ready.message
    assert empty.selectedVirtualMachines == 0 and empty.selected == []


def test_the_downtime_budget_sent_to_the_agent() -> None:
    tight = MigrationPolicyView("tight", max_downtime_ms=40)
    assert downtime_budget_ms(None, None, tight) == 40.0  # the policy's budget reaches the agent
    assert downtime_budget_ms(None, 25, tight) == 25.0  # the VM's overrides it
    assert downtime_budget_ms(10, 25, tight) == 10.0  # the migration's overrides both
    assert downtime_budget_ms(None, None, None) == 300.0  # no policy: the API default
