"""Trust corpus: false alarms on correct implementations, misses of wrong ones.

Usage: python benchmarks/trust.py   (against the installed package, else the checkout)

Runs every case of ``tests/trust_cases.py`` (the implementations of
``tests/data/trust_impls.py``, ``--impl``-checked with methods=analytic in float64, float32 and
float16) and prints, per dtype and regime, the false alarms (a correct implementation failed or
errored) and misses (a wrong implementation passed) out of the runs, and the inconclusive
outcomes; then every false alarm and miss with its detail. Always exits 0.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import gradcheck_cli  # noqa: F401
except ImportError:  # not installed and no PYTHONPATH: use the working source
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import trust_cases  # noqa: E402


def main() -> int:
    import gradcheck_cli

    start = time.perf_counter()
    # (dtype, regime) -> counters
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_impl: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    alarms: list[str] = []
    inconclusive: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    misses: list[str] = []
    for impl, expected, regime, dtype, reduction in trust_cases.cases():
        outcome, detail, result = trust_cases.run(impl, regime, dtype, reduction)
        row = table[dtype, regime]
        kind = "ok" if expected == "pass" else "bad"
        row[f"{kind}_runs"] += 1
        by_impl[impl]["runs"] += 1
        by_impl[impl][outcome] += 1
        if expected == "catch" and impl in trust_cases.CORRECT:
            by_impl[impl]["expected_catch"] += 1
        where = f"{impl:<25} {dtype:<8} {regime:<13} {reduction:<5}"
        if outcome == "inconclusive":
            row[f"{kind}_inconclusive"] += 1
            for c in result.comparisons:
                why = getattr(c, "inconclusive", None)
                if why:
                    check = {"logits": "grad", "directions": "self"}.get(c.quantity, c.quantity)
                    group = (kind, dtype, check, str(why).split(":")[0])
                    inconclusive[group].append(f"{impl} {regime} {reduction}: {why}")
        if expected == "pass" and outcome in ("fail", "error"):
            row["alarms"] += 1
            alarms.append(f"{where} {outcome}: {detail}")
        if expected == "catch" and outcome == "pass":
            row["misses"] += 1
            misses.append(f"{where} {detail}")
    elapsed = time.perf_counter() - start

    runs = sum(r["ok_runs"] + r["bad_runs"] for r in table.values())
    print(
        f"trust corpus: {runs} runs in {elapsed:.1f} s (gradcheck_cli from "
        f"{Path(gradcheck_cli.__file__).parent})"
    )
    print()
    header = (
        f"{'dtype':<8} {'regime':<13} | {'false alarms':>13} {'inconcl.':>8} | "
        f"{'misses':>8} {'inconcl.':>8}"
    )
    print(header)
    print("-" * len(header))
    totals: dict[str, int] = defaultdict(int)
    for (dtype, regime), r in table.items():
        print(
            f"{dtype:<8} {regime:<13} | {r['alarms']:>5} / {r['ok_runs']:<5} "
            f"{r['ok_inconclusive']:>8} | {r['misses']:>3} / {r['bad_runs']:<3} "
            f"{r['bad_inconclusive']:>8}"
        )
        for key, value in r.items():
            totals[key] += value
    print("-" * len(header))
    print(
        f"{'total':<22} | {totals['alarms']:>5} / {totals['ok_runs']:<5} "
        f"{totals['ok_inconclusive']:>8} | {totals['misses']:>3} / {totals['bad_runs']:<3} "
        f"{totals['bad_inconclusive']:>8}"
    )
    print()
    print("per implementation (outcomes):")
    correct = set(trust_cases.CORRECT)
    for impl, c in by_impl.items():
        kind = "correct" if impl in correct else "wrong"
        counts = ", ".join(f"{k} {c[k]}" for k in ("pass", "fail", "error", "inconclusive") if c[k])
        if c["expected_catch"]:
            counts += (
                f" ({c['expected_catch']} expected to fail: float16 arithmetic at confident "
                "logits, the Liger-Kernel #1268 rounding)"
            )
        print(f"  {impl:<25} {kind:<7} {c['runs']:>4} runs: {counts}")
    print()
    print(f"false alarms ({len(alarms)}):")
    for line in alarms:
        print(f"  {line}")
    print()
    print(f"misses ({len(misses)}):")
    for line in misses:
        print(f"  {line}")
    print()
    print("inconclusive comparisons (correct/wrong, dtype, check, reason: count, first example):")
    for (kind, dtype, check, why), lines in sorted(inconclusive.items()):
        label = "correct" if kind == "ok" else "wrong"
        print(f"  {label:<7} {dtype:<8} {check:<5} {why}: {len(lines)}")
        print(f"      e.g. {lines[0]}")
    return 0


if __name__ == "__main__":
    main()
    sys.exit(0)
