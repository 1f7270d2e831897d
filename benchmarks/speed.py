"""Whole-process timings of the xentcheck command line.

Usage: python benchmarks/speed.py [--runs N]

Times complete processes (interpreter start-up, imports, YAML, computation, rendering), as a user
or CI sees them, and prints the median, min and max over N runs of each command. Uses the
``xentcheck`` next to the running interpreter when installed, else ``python -m gradcheck_cli``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command() -> list[str]:
    exe = Path(sys.executable).parent / "xentcheck"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("xentcheck")
    return [found] if found else [sys.executable, "-m", "gradcheck_cli"]


def timed(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    opts = parser.parse_args()
    xc = command()
    cases = {
        "xentcheck --help": [*xc, "--help"],
        "run specs/cat_dog_bird.yaml": [*xc, "run", str(ROOT / "specs" / "cat_dog_bird.yaml")],
        "run specs/ (all bundled)": [*xc, "run", str(ROOT / "specs")],
        "run specs/ --format json": [*xc, "run", str(ROOT / "specs"), "--format", "json"],
        "jacobian --logits 1,2,0.5": [*xc, "jacobian", "--logits", "1,2,0.5", "--label", "1"],
    }
    print(f"command: {' '.join(xc)}   runs: {opts.runs}   python {sys.version.split()[0]}")
    print(f"{'case':32} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, args in cases.items():
        t = timed(args, opts.runs)
        print(f"{name:32} {statistics.median(t):9.3f} {min(t):7.3f} {max(t):7.3f}")


if __name__ == "__main__":
    main()
