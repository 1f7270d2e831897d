"""How fast ``xentcheck hunt`` finds each planted bug, how small the shrunk spec is, and that it
finds nothing on correct implementations.

    python benchmarks/hunt.py [--budget 60] [--seeds 3] [--only NAME] [--skip-clean]

For every planted bug of examples/planted_bugs.py (NumPy and torch) and each seed: the time to
the first failing input, the whole search's time (with shrinking) and the shrunk spec's size
(N x K, lines). Then the clean runs: the correct kernels, ``torch`` (F.cross_entropy) and
``optax`` over float64 and float32 for the whole budget (no finding expected), and ``torch`` in
bfloat16/float16 (PyTorch CPU's lost true-class gradient: a finding under the rounded model).
Medians over seeds; the machine is shared, so read the times as rough.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "planted_bugs.py"

NUMPY_BUGS = (
    "true_class_rounded",
    "zloss_ignored_rows",
    "mean_all_rows",
    "no_max_shift",
    "global_max",
    "smoothing_count",
)
TORCH_BUGS = ("first_grad_output", *NUMPY_BUGS)


def _search(target: str, budget: float, seed: int, dtypes: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    from gradcheck_cli import hunt
    from gradcheck_cli.engine import RunOptions
    from gradcheck_cli.impl import load

    impl = load(target)
    space = hunt.space_for(impl, dtypes or hunt.DTYPES)  # every dtype unless given
    return hunt.hunt(impl, RunOptions(), space=space, budget=budget, seed=seed, database=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default=None, help="run only targets containing this text")
    parser.add_argument("--skip-clean", action="store_true")
    parser.add_argument("--clean-only", action="store_true")
    args = parser.parse_args()

    targets = [f"{EXAMPLES}:{bug}" for bug in NUMPY_BUGS]
    targets += [f"torch:{EXAMPLES}:torch_{bug}" for bug in TORCH_BUGS]
    if args.only:
        targets = [t for t in targets if args.only in t]
    if args.clean_only:
        targets = []
    print(f"budget {args.budget:g} s, seeds 0..{args.seeds - 1}")
    print(f"{'implementation':44} {'found':>6} {'first s':>8} {'total s':>8} {'shrunk NxK':>10} "
          f"{'lines':>5}  shrunk to")  # fmt: skip
    for target in targets:
        firsts, totals, sizes, lines, found, last = [], [], [], [], 0, ""
        for seed in range(args.seeds):
            started = time.perf_counter()
            result = _search(target, args.budget, seed)
            totals.append(time.perf_counter() - started)
            if result.finding is None:
                continue
            found += 1
            firsts.append(result.finding.seconds_to_first)
            sizes.append(result.finding.candidate.size)
            lines.append(result.finding.verdict.text.count("\n"))
            last = result.finding.candidate.describe()
        name = target.replace(f"{EXAMPLES}:", "").replace("torch:", "torch ")
        med = lambda xs: f"{statistics.median(xs):8.1f}" if xs else f"{'-':>8}"  # noqa: E731
        size = f"{statistics.median(sizes):10g}" if sizes else f"{'-':>10}"
        line = f"{statistics.median(lines):5g}" if lines else f"{'-':>5}"
        print(f"{name:44} {found}/{args.seeds:<4} {med(firsts)} {med(totals)} {size} {line}  "
              f"{last}", flush=True)  # fmt: skip
    if args.skip_clean:
        return 0
    print("\nclean implementations, one search per dtype for the whole budget:")
    clean = [f"{EXAMPLES}:correct", f"torch:{EXAMPLES}:torch_correct", "torch", "optax"]
    for target in clean:
        for dtype in ("float64", "float32"):
            result = _search(target, args.budget, 0, (dtype,))
            finding = result.finding
            verdict = (
                "no finding"
                if finding is None
                else (
                    f"FOUND after {finding.seconds_to_first:.1f} s: {finding.candidate.describe()}"
                )
            )
            name = target.replace(str(EXAMPLES) + ":", "")
            print(f"  {name:16} {dtype:8} {result.coverage.inputs:5} inputs in "
                  f"{result.seconds:5.1f} s: {verdict}", flush=True)  # fmt: skip
    print("\nPyTorch's own F.cross_entropy in half precision (a real finding expected):")
    for dtype in ("bfloat16", "float16"):
        result = _search("torch", args.budget, 0, (dtype,))
        if result.finding is None:
            print(f"  {dtype}: no finding in {result.seconds:.1f} s")
            continue
        from gradcheck_cli.hunt import diagnosis

        print(f"  {dtype}: {diagnosis(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
