"""Completion answers in cobra's format, as kubectl asks a plugin (``kubectl_complete-vmshift``)."""

from __future__ import annotations

from collections.abc import Sequence

from vmshift.kubectl.completion import complete, script
from vmshift.kubectl.main import build_parser

CLUSTER = {"VirtualMachine": ["db-1", "web-1", "web-2"], "Host": ["h-a", "h-b"], "Namespace": ["default", "demo"],
           "Migrating": ["web-2"], "Context": ["kind-x"]}


def names(kind: str, words: Sequence[str]) -> list[str]:
    return CLUSTER[kind]


def ask(*words: str) -> list[str]:
    return complete(build_parser(), list(words), names).splitlines()


def test_commands_then_their_arguments() -> None:
    assert ask("") == ["cancel", "completion", "cordon", "drain", "history", "import", "migrate", "release", "status",
                       "top", "uncordon", "undrain", "why", ":4"]
    assert ask("dr") == ["drain", ":4"]
    assert ask("migrate", "web") == ["web-1", "web-2", ":4"]
    assert ask("-n", "demo", "migrate", "") == ["db-1", "web-1", "web-2", ":4"]
    assert ask("cancel", "") == ["web-2", ":4"]
    assert ask("drain", "h-") == ["h-a", "h-b", ":4"]
    assert ask("migrate", "web-1", "") == [":4"], "one VM per command"


def test_flag_values() -> None:
    assert ask("migrate", "web-1", "--to", "") == ["h-a", "h-b", ":4"]
    assert ask("migrate", "web-1", "--mode", "L") == ["Live", ":4"]
    assert ask("top", "-o", "") == ["json", "yaml", ":4"]
    assert ask("-n", "de") == ["default", "demo", ":4"]
    assert ask("--context", "") == ["kind-x", ":4"]
    assert ask("--kubeconfig", "") == [":0"], "the shell completes a file name"


def test_flags_and_files() -> None:
    flags = ask("drain", "--")
    assert "--dry-run" in flags and "--wait" in flags and "--no-wait" in flags and "--kubeconfig" in flags
    assert ask("import", "") == [":0"]


def test_scripts_call_the_plugin() -> None:
    assert "kubectl-vmshift __complete" in script("bash")
    assert script("zsh").startswith("#compdef kubectl-vmshift") and "bashcompinit" in script("zsh")
