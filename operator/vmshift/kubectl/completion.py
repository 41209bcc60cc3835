"""Shell completion for ``kubectl vmshift``: kubectl's plugin protocol and bash/zsh scripts.

kubectl (1.26 and later) completes a plugin's arguments by running ``kubectl_complete-vmshift ARGS...
WORD`` and reading cobra's format: one candidate per line, then ``:DIRECTIVE`` (4: no file names;
0: the shell may complete file names). The scripts of ``kubectl-vmshift completion bash|zsh`` ask
the same question for the bare ``kubectl-vmshift`` command. :func:`complete` is pure apart from the
``names`` callable it is given, which lists VMs, hosts and namespaces from the cluster.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

#: cobra's ShellCompDirective values
DEFAULT = 0  # the shell may complete file names
NO_FILES = 4

Names = Callable[[str, Sequence[str]], list[str]]

#: Flags that take a value, and what the value is: a kind to list from the cluster, fixed words, or a file.
VALUE_FLAGS: dict[str, str | tuple[str, ...]] = {
    "--kubeconfig": "file", "--context": "Context", "-n": "Namespace", "--namespace": "Namespace",
    "-o": ("json", "yaml"), "--output": ("json", "yaml"), "--to": "Host", "--mode": ("Auto", "Live", "Quick"),
    "--max-downtime": ("50ms", "100ms", "300ms", "1s"), "--reason": (), "--name": (), "--volume": (),
}
#: What each command's positional argument names.
POSITIONAL: dict[str, str] = {
    "migrate": "VirtualMachine", "history": "VirtualMachine", "why": "VirtualMachine", "cancel": "Migrating",
    "drain": "Host", "undrain": "Host", "cordon": "Host", "uncordon": "Host", "release": "Host", "import": "file",
    "completion": "shell",
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--") or s == "-n"})


def complete(parser: argparse.ArgumentParser, words: Sequence[str], names: Names) -> str:
    """The candidates for the last of ``words`` (the word being typed, possibly empty)."""
    if not words:
        words = [""]
    before, current = list(words[:-1]), words[-1]
    commands = _subparsers(parser)
    command: str | None = None
    positionals = 0
    skip = False
    for word in before:
        if skip:
            skip = False
        elif word in VALUE_FLAGS:
            skip = True
        elif word.startswith("-"):
            continue
        elif command is None and word in commands:
            command = word
        elif command is not None:
            positionals += 1
    candidates: list[str]
    directive = NO_FILES
    previous = before[-1] if before else ""
    if previous in VALUE_FLAGS:
        value = VALUE_FLAGS[previous]
        if value == "file":
            return f":{DEFAULT}\n"
        candidates = list(value) if isinstance(value, tuple) else names(value, before)
    elif current.startswith("-"):
        candidates = _flags(commands[command] if command else parser)
    elif command is None:
        candidates = sorted(commands)
    elif positionals == 0:
        kind = POSITIONAL.get(command, "")
        if kind == "file":
            return f":{DEFAULT}\n"
        candidates = ["bash", "zsh"] if kind == "shell" else names(kind, before) if kind else []
    else:
        candidates = []
    chosen = [c for c in candidates if c.startswith(current)]
    return "".join(f"{c}\n" for c in chosen) + f":{directive}\n"


def _option(words: Sequence[str], *flags: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word in flags:
            return words[i + 1]
    return None


def cluster_names(kind: str, words: Sequence[str]) -> list[str]:
    """Names of ``kind`` in the cluster the words point at (their --kubeconfig, --context, -n); nothing on error."""
    import kubernetes

    from vmshift.kubectl.client import ApiServerError, Cluster
    from vmshift.kubectl.decide import active_migration

    kubeconfig = _option(words, "--kubeconfig")
    try:
        if kind == "Context":
            contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            return sorted(c["name"] for c in contexts)
        cluster = Cluster.connect(kubeconfig, _option(words, "--context"), _option(words, "-n", "--namespace"))
        if kind == "Namespace":
            page = kubernetes.client.CoreV1Api(cluster.api).list_namespace(_request_timeout=5)
            return sorted(str(n.metadata.name) for n in page.items if n.metadata)
        if kind == "Migrating":
            migrations = cluster.objects("VirtualMachineMigration")
            vms = {m["spec"]["vmName"] for m in migrations if active_migration(migrations, m["spec"]["vmName"])}
            return sorted(vms)
        return sorted(o["metadata"]["name"] for o in cluster.objects(kind))
    except (ApiServerError, kubernetes.config.ConfigException, OSError):
        return []


_BASH = """\
# bash completion for kubectl-vmshift (source <(kubectl-vmshift completion bash))
_kubectl_vmshift() {
    local cur="${COMP_WORDS[COMP_CWORD]}" out directive
    out=$(kubectl-vmshift __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) || return
    directive=${out##*:}
    COMPREPLY=($(compgen -W "$(printf '%s\\n' "$out" | grep -v '^:')" -- "$cur"))
    if [[ ${#COMPREPLY[@]} -eq 0 && "$directive" == 0 ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -F _kubectl_vmshift kubectl-vmshift
"""

_ZSH = """\
#compdef kubectl-vmshift
# zsh completion for kubectl-vmshift (source <(kubectl-vmshift completion zsh))
autoload -U +X bashcompinit && bashcompinit
""" + _BASH


def script(shell: str) -> str:
    return _ZSH if shell == "zsh" else _BASH
