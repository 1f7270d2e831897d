"""Mutation testing of the bundled specs: the table, the score and the wall time.

Usage: python benchmarks/mutate.py [--runs N] [--impl TARGET]

Times whole ``xentcheck mutate`` processes on the bundled specs (the default: each mutant stops
at the first spec that kills it) and with ``--every-spec`` (every applicable spec runs, so
every killer is listed), and prints the median wall time and largest peak RSS of N runs of
each, then the table of one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import command, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--impl", default=None, help="mutate this implementation's outputs")
    args = parser.parse_args()
    base = [*command(), "mutate", "--quiet"]
    if args.impl:
        base += ["--impl", args.impl]
    print(f"{'command':<40} {'median s':>9} {'peak MB':>8}")
    for extra in ([], ["--every-spec"]):
        seconds, peak = timed([*base, *extra], args.runs)
        shown = " ".join(["xentcheck mutate", *extra])
        print(f"{shown:<40} {seconds:>9.2f} {peak:>8.0f}")
    print()
    table = subprocess.run([*base, "--every-spec"], capture_output=True, text=True, check=False)
    sys.stdout.write(table.stdout)


if __name__ == "__main__":
    main()
