"""Move, drain and inspect vmshift virtual machines from kubectl.

The entry points ``kubectl-vmshift`` (run by kubectl as ``kubectl vmshift``) and
``kubectl_complete-vmshift`` (asked by kubectl's shell completion, kubectl 1.26 and later).
Glue only: argument parsing, completion and the choice of command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vmshift.kubectl import completion

#: Exit status of a bad command line (argparse's own), kept here so --help and completion load nothing else.
EXIT_USAGE = 2

DESCRIPTION = """\
Move virtual machines between hosts, take hosts in and out of service, and see
why a VM runs where it does. vmshift's operator does the work; these commands
create and change its objects (VirtualMachineMigration, Host, VirtualMachineImport)
and show you how it goes."""

EPILOG = """\
examples:
  kubectl vmshift migrate web-1 --to h-haswell-1       move web-1 live and watch it
  kubectl vmshift migrate db-1 --mode Quick --no-wait  start a quick migration, return at once
  kubectl vmshift drain h-icelake-1 --dry-run          what a drain would do, changing nothing
  kubectl vmshift drain h-icelake-1                    maintenance: move every VM away
  kubectl vmshift why db-1                             which hosts could take db-1, and why not
  kubectl vmshift top                                  the fleet at a glance

Exit status: 0 done; 1 the migration, drain or import failed, was cancelled or is
blocked; 2 a bad command line, or an unknown VM, host or file; 130 you pressed
Ctrl-C and cancelled the migration.

Shell completion: install kubectl_complete-vmshift on PATH (the package does) for
"kubectl vmshift <TAB>", or: source <(kubectl-vmshift completion bash)"""


def _global_options(parser: argparse.ArgumentParser) -> None:
    """kubectl's connection flags and -o, accepted before or after the command (suppressed defaults, so a
    subcommand never overwrites a value given before it)."""
    group = parser.add_argument_group("cluster options")
    group.add_argument("--kubeconfig", default=argparse.SUPPRESS, metavar="FILE",
                       help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    group.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context to use")
    group.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                       help="namespace of the VMs (default: the context's, else default)")


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("json", "yaml"), default=argparse.SUPPRESS,
                        help="print data instead of a table")


def _wait_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                        help=f"follow {what} until it ends (default: yes on a terminal, no in a pipe or script)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl vmshift", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, func: str, help: str, *,
                aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", aliases=list(aliases))
        _global_options(p)
        p.set_defaults(func=func)  # the name of a function of vmshift.kubectl.commands, imported when run
        return p

    p = command("migrate", "migrate", "move a VM to another host, and watch the transfer")
    p.add_argument("vm", metavar="VM", help="the VirtualMachine to move")
    p.add_argument("--to", metavar="HOST", help="the target host (default: the best compatible host)")
    p.add_argument("--mode", default="Auto", metavar="MODE",
                   help="Live (pre-copy, a pause of milliseconds), Quick (save, copy, restore) or Auto "
                        "(the VM's setting, then its policy's); default Auto")
    p.add_argument("--max-downtime", metavar="DURATION",
                   help="the longest pause allowed, like 50ms or 0.5s (default: the VM's or its policy's)")
    p.add_argument("--reason", help="why the VM moves, shown in the migration and its events")
    _wait_option(p, "the migration")

    p = command("cancel", "cancel", "cancel a migration in flight (the VM stays where it was)")
    p.add_argument("name", metavar="VM|MIGRATION", help="a VM being moved, or a VirtualMachineMigration")

    p = command("history", "history", "list a VM's past and current migrations")
    p.add_argument("vm", metavar="VM")
    _output_option(p)

    p = command("drain", "drain", "put a host in maintenance and move every VM away")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan the operator would follow (order, targets, bandwidth, expected time, "
                        "blocked VMs) and change nothing")
    _output_option(p)
    _wait_option(p, "the drain")

    p = command("undrain", "undrain", "take a host out of maintenance")
    p.add_argument("host", metavar="HOST")
    p = command("cordon", "cordon", "stop placing VMs on a host (VMs there keep running)")
    p.add_argument("host", metavar="HOST")
    p = command("uncordon", "uncordon", "let a cordoned host take VMs again")
    p.add_argument("host", metavar="HOST")
    p = command("release", "release", "return a host quarantined by a RemediationPolicy to service")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--reason", default="released-by-kubectl-vmshift",
                   help="value of the release annotation (e.g. fan-replaced)")

    p = command("why", "why_command", "explain where a VM runs and which hosts could take it")
    p.add_argument("vm", metavar="VM")
    _output_option(p)

    p = command("top", "top", "the fleet at a glance: hosts and the VMs being moved", aliases=("status",))
    _output_option(p)

    p = command("import", "import_command",
                "import an OVF, an OVA or a physical machine's inventory as a new VM")
    p.add_argument("file", metavar="FILE", help="an .ovf descriptor, an .ova package or an inventory .yaml")
    p.add_argument("--name", help="name of the new VM (default: from the file name)")
    p.add_argument("--volume", help="shared volume for the converted disks (default: the one most hosts mount)")
    p.add_argument("--compatibility", action="store_true",
                   help="start the VM in processor compatibility mode (movable across CPU generations)")
    _wait_option(p, "the import")

    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                       description="Print a shell completion script: source <(kubectl-vmshift completion bash)")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["__complete"]:
        return complete_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "completion":
        sys.stdout.write(completion.script(args.shell))
        return 0
    from vmshift.kubectl import commands
    from vmshift.kubectl.client import ApiServerError, Cluster
    from vmshift.kubectl.output import Output

    out = Output(getattr(args, "output", None))
    try:
        cluster = Cluster.connect(getattr(args, "kubeconfig", None), getattr(args, "context", None),
                                  getattr(args, "namespace", None))
    except ApiServerError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    ctx = commands.Context(cluster=cluster, out=out, args=args)
    try:
        func: Callable[[commands.Context], int] = getattr(commands, args.func)
        return commands.run(func, ctx)
    except KeyboardInterrupt:
        return 130


def complete_main(argv: Sequence[str] | None = None) -> int:
    """``kubectl_complete-vmshift ARGS... WORD``: the candidates for WORD, cobra's way (one per line, then
    ``:DIRECTIVE``), as kubectl's completion asks a plugin."""
    words = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(completion.complete(build_parser(), words, completion.cluster_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
