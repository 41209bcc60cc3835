"""crds/ is exactly what the generator makes from the API models (run `vmshift crds --write`)."""

from __future__ import annotations

from tests.api.manifests import REPO
from vmshift.api import crdgen


def test_crds_directory_matches_the_models() -> None:
    diffs = crdgen.check(REPO / "crds")
    assert not diffs, (
        "crds/ differs from the API models; run `vmshift crds --write` and commit the result:\n" + "".join(diffs)
    )
