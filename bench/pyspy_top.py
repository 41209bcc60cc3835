"""Top entries of a py-spy profile in raw (collapsed) format: where the sampled CPU went.

    .venv/bin/python bench/pyspy_top.py PROFILE.txt [--top 25]

Each line of the raw format is ``frame;frame;...;frame COUNT`` (outermost first, as py-spy writes it
with ``--format raw``). Printed: the total samples, then the functions by samples on top of the
stack (self) and by samples anywhere in it (inclusive: each function once per stack), each with its
share of the total.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

#: "function (path/to/file.py:123)" -> "function (path/to/file.py)": lines of one function add up.
_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """A frame without its line number (pure)."""
    return _LINE.sub(")", frame.strip())


def parse(text: str) -> list[tuple[list[str], int]]:
    """The stacks (outermost first) and their sample counts of a raw py-spy profile (pure). A frame's
    name may hold a newline (a module's name made from a string): a line without a count continues on
    the next (joined without it). Text left without a count at the end raises ValueError naming where it began."""
    stacks = []
    pending, began = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending and not line.strip():
            continue
        began = began or number
        pending += line
        stack, _, count = pending.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append(([frame_name(f) for f in stack.split(";") if f.strip()], int(count)))
        pending, began = "", 0
    if pending.strip():
        raise ValueError(f"line {began} is not 'frame;frame;... COUNT': {pending[:80]!r}")
    return stacks


def tops(stacks: list[tuple[list[str], int]]) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, samples by leaf function (self) and by function anywhere in the stack (pure)."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        total += count
        if frames:
            own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own, inclusive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, own, inclusive = tops(parse(args.profile.read_text()))
    print(f"{args.profile}: {total} samples")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n top {args.top} by {title} samples")
        for name, count in counter.most_common(args.top):
            print(f"  {count * 100 / max(total, 1):5.1f} %  {count:7d}  {name[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
