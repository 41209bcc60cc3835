"""Benchmark: the fault-injection campaign: hundreds of randomized trials, 0 violations.

Each trial runs on the real product (the embedded control plane, one agent process per host
behind a TCP proxy on its migration port, the operator as its own process): it starts three
fresh hosts and one or two VMs, asks for migrations (or a drain racing them), injects one fault
(SIGKILL/SIGTERM of the operator, SIGKILL of the source or target agent and its restart, a restart
of the API server, a partition or a blackhole between the two agents at a chosen phase of the
stream, deletion of the migration or the VM, a drain racing manual migrations), heals, and checks
from the agents' own API that every VM runs on exactly one host (or is reported in doubt), never
on two at once, that every migration ended within its bound, that no reservation leaked and that
memory digests match. Trial i has seed S+i; its fault kind is the seed modulo the number of kinds
and everything else is drawn from the seed, so a seed in the table replays with ``--trials 1``.

    .venv/bin/python bench/chaos.py --trials 500 --seed 1        # the campaign
    .venv/bin/python bench/chaos.py --seed 4711 --trials 1        # replay one seed
    .venv/bin/python bench/chaos.py --trials 100 --kind partition # one fault kind only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chaos.harness import KINDS, Campaign, Kind, run_trials, table, violations_report  # noqa: E402

from vmshift.devcluster.cluster import ControlPlane, default_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=500, help="number of trials (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first trial (default 1)")
    parser.add_argument("--kind", choices=[k.value for k in KINDS], action="append", default=None,
                        help="only seeds of this fault kind (repeatable)")
    parser.add_argument("--lanes", type=int, default=1,
                        help="trials of host-local faults run side by side (operator and API server faults alone)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no trial after this many minutes; report the ones that ran")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the operator's and agents' logs also when no trial violated anything")
    args = parser.parse_args()
    kinds = {Kind(k) for k in args.kind} if args.kind else set(KINDS)
    seeds: list[int] = []
    seed = args.seed
    while len(seeds) < args.trials:
        if KINDS[seed % len(KINDS)] in kinds:
            seeds.append(seed)
        seed += 1
    plane = ControlPlane(default_dir(f"chaos-{os.getpid()}"), tie_to_parent=True)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="vmshift-chaos-"))
    log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    campaign = Campaign(plane, workdir, log=log)
    try:
        deadline = started + args.minutes * 60 if args.minutes else None
        results = run_trials(campaign, seeds, lanes=args.lanes, deadline=deadline)
    finally:
        campaign.close()
        plane.down()
    elapsed = time.monotonic() - started
    print()
    print(f"chaos campaign: {len(results)} trials, seeds {seeds[0]}..{seeds[len(results) - 1]}, {elapsed / 60:.1f} min "
          f"({elapsed / max(len(results), 1):.1f} s per trial, {args.lanes} lane(s))")
    print(table(results))
    report = violations_report(results)
    if report or args.keep_logs:
        print(f"\nlogs of the operator and the agents are kept in {workdir}")
    if report:
        print("\nviolations (replay one with: .venv/bin/python bench/chaos.py --trials 1 --seed SEED):")
        print(report)
    elif not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
