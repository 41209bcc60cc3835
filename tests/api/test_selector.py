"""The one label-selector matcher (vmshift.api.common.Selector): Kubernetes' semantics, term by term."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmshift.api.common import EVERYTHING, LabelSelector, Requirement, Selector, SelectorOperator

In, NotIn, Exists, DoesNotExist = (SelectorOperator.In, SelectorOperator.NotIn, SelectorOperator.Exists,
                                   SelectorOperator.DoesNotExist)


@pytest.mark.parametrize(("operator", "values", "labels", "expected"), [
    (In, {"a", "b"}, {"k": "a"}, True),
    (In, {"a", "b"}, {"k": "c"}, False),
    (In, {"a"}, {}, False),  # In needs the key
    (NotIn, {"a"}, {"k": "b"}, True),
    (NotIn, {"a"}, {"k": "a"}, False),
    (NotIn, {"a"}, {}, True),  # NotIn holds when the key is absent, as in Kubernetes
    (Exists, set(), {"k": ""}, True),
    (Exists, set(), {"other": "x"}, False),
    (DoesNotExist, set(), {}, True),
    (DoesNotExist, set(), {"k": "x"}, False),
])
def test_each_operator_has_kubernetes_semantics(operator: SelectorOperator, values: set[str],
                                                labels: dict[str, str], expected: bool) -> None:
    assert Requirement("k", operator, frozenset(values)).matches(labels) is expected


def test_match_labels_and_expressions_must_all_hold() -> None:
    selector = LabelSelector.model_validate({
        "matchLabels": {"tier": "db"},
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["batch", "analytics"]},
                             {"key": "legacy", "operator": "DoesNotExist"}],
    }).selector()
    assert selector.matches({"tier": "db", "app": "batch"})
    assert not selector.matches({"tier": "db", "app": "web"})
    assert not selector.matches({"tier": "web", "app": "batch"})
    assert not selector.matches({"tier": "db", "app": "batch", "legacy": "yes"})
    assert selector.unmet({"tier": "web", "app": "web"}) == ["tier=db", "app in (analytics,batch)"]
    assert selector.unmet_keys({"tier": "web", "legacy": "1", "app": "batch"}) == ["legacy", "tier"]
    assert selector.describe() == "tier=db, app in (analytics,batch), !legacy"
    assert selector.size == 3


def test_the_empty_selector_selects_everything() -> None:
    assert Selector.of(None) is EVERYTHING and EVERYTHING.empty
    assert EVERYTHING.matches({}) and EVERYTHING.matches({"a": "b"})
    assert LabelSelector().selector() == EVERYTHING
    assert EVERYTHING.describe() == "everything"


labels_st = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2", "3"]), max_size=3)
requirement_st = st.builds(
    lambda key, op, values: Requirement(key, op, frozenset(values) if op in (In, NotIn) else frozenset()),
    st.sampled_from(["a", "b", "c"]), st.sampled_from(list(SelectorOperator)),
    st.sets(st.sampled_from(["1", "2", "3"]), min_size=1, max_size=2),
)


@given(labels=labels_st, wanted=labels_st, requirements=st.lists(requirement_st, max_size=3))
def test_a_selector_is_the_conjunction_of_its_terms(labels: dict[str, str], wanted: dict[str, str],
                                                    requirements: list[Requirement]) -> None:
    selector = Selector(tuple(sorted(wanted.items())), tuple(requirements))
    each = [Selector.from_labels({k: v}).matches(labels) for k, v in wanted.items()]
    each += [r.matches(labels) for r in requirements]
    assert selector.matches(labels) is all(each)
    assert (selector.unmet(labels) == []) is selector.matches(labels)
    # NotIn v is the negation of In v; DoesNotExist of Exists
    for r in requirements:
        opposite = {In: NotIn, NotIn: In, Exists: DoesNotExist, DoesNotExist: Exists}[r.operator]
        assert Requirement(r.key, opposite, r.values).matches(labels) is not r.matches(labels)


@given(labels=labels_st, requirements=st.lists(requirement_st, max_size=3))
def test_the_api_model_and_the_matcher_agree(labels: dict[str, str], requirements: list[Requirement]) -> None:
    model = LabelSelector.model_validate({"matchExpressions": [
        {"key": r.key, "operator": r.operator.value, "values": sorted(r.values)} for r in requirements]})
    assert model.matches(labels) is Selector((), tuple(requirements)).matches(labels)
