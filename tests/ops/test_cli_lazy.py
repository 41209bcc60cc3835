"""``vmshift SUBCOMMAND`` builds only that subcommand's parser, and parses exactly as the full one does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmshift.cli.main import SUBCOMMANDS, build_parser

ARGVS = [
    ["operator", "--standalone", "--metrics-port", "9999", "--agent-poll-seconds", "30"],
    ["operator"],
    ["crds", "--write"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a))
def test_one_subcommand_parses_as_the_full_parser_does(argv: list[str]) -> None:
    full = vars(build_parser().parse_args(argv))
    alone = vars(build_parser(argv[0]).parse_args(argv))
    assert {k: v for k, v in alone.items() if k != "func"} == {k: v for k, v in full.items() if k != "func"}
    assert alone["func"] is full["func"]


def test_an_unknown_or_missing_subcommand_still_lists_every_one() -> None:
    assert build_parser("no-such")._subparsers is not None
    with pytest.raises(SystemExit):
        build_parser("no-such").parse_args(["no-such"])
    names = set(build_parser(None)._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert names >= {"operator", "crds"} and names <= set(SUBCOMMANDS)


def test_the_operator_subcommand_imports_neither_the_demo_nor_the_dev_cluster() -> None:
    code = ("import sys; from vmshift.cli.main import build_parser; build_parser('operator'); "
            "print(sorted(m for m in sys.modules if m.startswith(('vmshift.cli.demo', 'vmshift.devcluster'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
