"""Invalid manifests are refused at apply time by the real kube-apiserver, with the field named.

End to end: each case goes through `kubectl apply` to the embedded control plane with crds/
installed; the error must name the offending field's path (and, for CEL rules, carry the rule's
message), and nothing may change: a refused create leaves no object, a refused update leaves the
stored spec as it was.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.api.manifests import INVALID, MODELS, VALID, Invalid
from tests.kube import Kube

pytestmark = pytest.mark.e2e


def _where(manifest: dict[str, Any]) -> list[str]:
    """kubectl arguments naming the object: resource.group, name and namespace."""
    plural = MODELS[manifest["kind"]].resource.plural
    args = [f"{plural}.vmshift.io", manifest["metadata"]["name"]]
    if "namespace" in manifest["metadata"]:
        args += ["-n", manifest["metadata"]["namespace"]]
    return args


def test_there_are_enough_cases() -> None:
    assert len(INVALID) >= 25
    assert len({c.id for c in INVALID}) == len(INVALID)
    assert {c.manifest["kind"] for c in INVALID} == set(MODELS)


@pytest.mark.parametrize("manifest", VALID, ids=lambda m: m["metadata"]["name"])
def test_the_valid_bases_are_accepted(api: Kube, manifest: dict[str, Any]) -> None:
    """Each invalid case is a valid base with one thing broken; the bases themselves must pass."""
    api.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest))


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_refused_naming_the_field(api: Kube, case: Invalid) -> None:
    before = case.before_named()
    stored: dict[str, Any] | None = None
    if before is not None:
        api.kubectl("apply", "-f", "-", input=json.dumps(before))
        stored = api.get_json(*_where(before))

    manifest = case.named()
    proc = api.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)

    assert proc.returncode != 0, f"{case.id}: the API server accepted it:\n{proc.stdout}"
    path = re.compile(r"(?<![\w.\]])" + re.escape(case.field) + r"(?=[:\"])")
    assert path.search(proc.stderr), f"{case.id}: expected the error to name {case.field!r}, got:\n{proc.stderr}"
    if case.message:
        assert case.message in proc.stderr, f"{case.id}: expected {case.message!r} in:\n{proc.stderr}"

    after = api.kubectl("get", *_where(manifest), "-o", "json", check=False)
    if stored is None:
        assert after.returncode != 0 and "NotFound" in after.stderr, f"{case.id}: an object was created"
    else:
        assert json.loads(after.stdout)["spec"] == stored["spec"], f"{case.id}: the stored spec changed"
