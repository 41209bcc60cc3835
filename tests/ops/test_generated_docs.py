"""docs/api.md and the Argo CD ConfigMap are what `vmshift docs --write` makes from the code now."""

from __future__ import annotations

import re

from tests.ops.argocd import REPO
from vmshift.api.crdgen import KINDS, openapi_schema
from vmshift.cli.docs import check
from vmshift.cli.main import main


def test_generated_files_are_up_to_date() -> None:
    diffs = check(REPO)
    assert not diffs, "run `vmshift docs --write` and commit:\n" + "".join(diffs)[:4000]


def test_the_cli_check_passes_on_this_checkout() -> None:
    assert main(["docs", "--root", str(REPO)]) == 0


def test_the_api_reference_lists_every_spec_field_of_every_kind() -> None:
    text = (REPO / "docs" / "api.md").read_text()
    for kind in KINDS:
        assert f"## {kind.__name__}\n" in text
        for field in openapi_schema(kind)["properties"]["spec"].get("properties", {}):
            assert f"| `spec.{field}`" in text, f"{kind.__name__}: spec.{field} is missing from docs/api.md"


def test_nothing_in_the_repository_cites_a_file_outside_it() -> None:
    tracked = [p for p in REPO.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part in ("__pycache__", "node_modules") for part in p.relative_to(REPO).parts)]
    outside = re.compile(r"DESIGN\.md|\.\./shared|/work/shared")
    offenders = [str(p.relative_to(REPO)) for p in tracked if p.suffix in (".py", ".md", ".yaml", ".yml", ".lua",
                                                                           ".toml", ".json", "")
                 and p.name != "test_generated_docs.py" and outside.search(p.read_text(errors="replace"))]
    assert not offenders, f"these files cite something outside the repository: {offenders}"
