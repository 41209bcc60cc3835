"""The command line: kubectl's flags before or after the command, the help a user reads, plain output in pipes."""

from __future__ import annotations

import argparse
import io

import pytest

from vmshift.kubectl import commands
from vmshift.kubectl.client import ApiServerError
from vmshift.kubectl.decide import EXIT_FAILED, EXIT_USAGE, UsageError
from vmshift.kubectl.main import build_parser, main
from vmshift.kubectl.output import Output


def test_connection_flags_go_before_or_after_the_command() -> None:
    parser = build_parser()
    after = parser.parse_args(["migrate", "web-1", "-n", "demo", "--context", "kind-x", "--to", "h2"])
    before = parser.parse_args(["-n", "demo", "--context", "kind-x", "migrate", "web-1", "--to", "h2"])
    for args in (after, before):
        assert (args.namespace, args.context, args.vm, args.to, args.func) == ("demo", "kind-x", "web-1", "h2",
                                                                                  "migrate")
    assert not hasattr(parser.parse_args(["top"]), "namespace"), "an absent flag must not overwrite one given earlier"
    assert parser.parse_args(["migrate", "x"]).wait is None, "no --wait/--no-wait: decided by the terminal"
    assert parser.parse_args(["migrate", "x", "--no-wait"]).wait is False
    assert parser.parse_args(["status"]).func == "top"


def test_every_command_names_a_function_of_the_commands_module() -> None:
    parser = build_parser()
    for argv in (["migrate", "v"], ["cancel", "v"], ["history", "v"], ["drain", "h"], ["undrain", "h"],
                 ["cordon", "h"], ["uncordon", "h"], ["release", "h"], ["why", "v"], ["top"], ["import", "f.ovf"]):
        assert callable(getattr(commands, parser.parse_args(argv).func)), argv


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert capsys.readouterr().out.startswith("usage: kubectl vmshift")


def test_a_bad_flag_value_exits_2_from_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["top", "-o", "xml"])
    assert exit_.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err


def test_output_in_a_pipe_is_plain_and_on_a_terminal_coloured() -> None:
    plain, errors = io.StringIO(), io.StringIO()
    out = Output(stdout=plain, stderr=errors, force_terminal=False)
    out.line("Succeeded", style="green")
    out.table(["HOST", "PHASE"], [["h1", "Ready"]])
    out.error("there is no Host named h9")
    assert plain.getvalue() == "Succeeded\nHOST  PHASE\nh1    Ready\n"
    assert errors.getvalue() == "error: there is no Host named h9\n"
    coloured = io.StringIO()
    Output(stdout=coloured, force_terminal=True).line("Succeeded", style="green")
    assert "\x1b[" in coloured.getvalue()


def test_tables_as_data() -> None:
    buffer = io.StringIO()
    Output("yaml", stdout=buffer, force_terminal=False).table(["HOST", "PHASE"], [["h1", "Ready"]])
    assert buffer.getvalue() == "- HOST: h1\n  PHASE: Ready\n"


def test_errors_become_a_sentence_and_an_exit_status() -> None:
    errors = io.StringIO()
    ctx = commands.Context(cluster=None, out=Output(stdout=io.StringIO(), stderr=errors, force_terminal=False),  # type: ignore[arg-type]
                           args=argparse.Namespace())

    def bad_input(_: commands.Context) -> int:
        raise UsageError("--mode 'x' is not a migration mode: use Auto, Live or Quick")

    def forbidden(_: commands.Context) -> int:
        raise ApiServerError("not allowed to create VirtualMachineMigration ns/web-*: forbidden", 403)

    assert commands.run(bad_input, ctx) == EXIT_USAGE
    assert commands.run(forbidden, ctx) == EXIT_FAILED
    assert errors.getvalue().splitlines() == [
        "error: --mode 'x' is not a migration mode: use Auto, Live or Quick",
        "error: not allowed to create VirtualMachineMigration ns/web-*: forbidden"]


def test_an_api_server_that_cannot_be_reached_is_a_sentence_not_a_traceback() -> None:
    import socket

    import kubernetes

    from vmshift.kubectl.client import Cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    config = kubernetes.client.Configuration()
    config.host = f"https://127.0.0.1:{port}"
    config.retries = 0
    cluster = Cluster(api=kubernetes.client.ApiClient(config), namespace="ns")
    for call in (lambda: cluster.get("Host", "h1"), lambda: cluster.get("VirtualMachine", "v"),
                 lambda: cluster.objects("Host"), lambda: cluster.delete("VirtualMachineMigration", "m")):
        with pytest.raises(ApiServerError, match="the API server cannot be reached"):
            call()
