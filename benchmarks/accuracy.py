"""Worst error of each gradient method against a 50-digit mpmath reference.

Usage: python benchmarks/accuracy.py [--cases N] [--seed S] [--dtype float64|float32|float16]

A seeded suite of random float64 problems: K from 1 to 40 classes, N from 1 to 4 samples, logit
scales up to 12 plus an offset, every reduction; index labels and (separately) Dirichlet
probability targets. For every element it measures the relative error |a - r| / |r| and the
absolute error |a - r| against the mpmath value r rounded to float64, and prints the worst.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import mpmath
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradcheck_cli.core import CrossEntropyProblem, dense_targets, per_sample_loss
from gradcheck_cli.methods import METHODS, MethodSettings, NotComputable

mpmath.mp.dps = 50


def reference(problem: CrossEntropyProblem) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses (N,) and gradient (N, K) in 50-digit arithmetic, rounded to float64."""
    t = dense_targets(problem)
    n, k = problem.shape
    w = mpmath.mpf(1) / n if problem.reduction == "mean" else mpmath.mpf(1)
    losses = np.empty(n)
    grad = np.empty((n, k))
    for i in range(n):
        z = [mpmath.mpf(float(v)) for v in problem.logits[i]]
        m = max(z)
        e = [mpmath.exp(v - m) for v in z]
        s = mpmath.fsum(e)
        lse = m + mpmath.log(s)
        tt = [mpmath.mpf(float(v)) for v in t[i]]
        st = mpmath.fsum(tt)
        losses[i] = float(
            -mpmath.fsum(tc * (zc - lse) for tc, zc in zip(tt, z, strict=True) if tc != 0)
        )
        grad[i] = [float(w * (ec / s * st - tc)) for ec, tc in zip(e, tt, strict=True)]
    return losses, grad


def suite(rng: np.random.Generator, cases: int, targets: bool) -> list[CrossEntropyProblem]:
    out = []
    for _ in range(cases):
        n, k = int(rng.integers(1, 5)), int(rng.integers(1, 41))
        z = rng.normal(size=(n, k)) * rng.uniform(0.1, 12.0) + rng.normal() * 5
        red = str(rng.choice(["mean", "sum", "none"]))
        if targets:
            t = rng.dirichlet(np.full(k, 0.5), size=n)
            out.append(CrossEntropyProblem(z, targets=t, reduction=red))  # type: ignore[arg-type]
        else:
            y = rng.integers(0, k, n)
            out.append(CrossEntropyProblem(z, labels=y, reduction=red))  # type: ignore[arg-type]
    # Hazards: a near one-hot row, the worked example, ties for the maximum.
    if not targets:
        for z, y in (([40.0, 0.0, 0.0], 0), ([1.0, 2.0, 0.5], 1), ([3.0, 3.0, -1.0], 0)):
            out.append(CrossEntropyProblem(np.array([z]), labels=np.array([y])))
    return out


def errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    abs_err = np.where(got == ref, 0.0, np.abs(got - ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(abs_err == 0, 0.0, abs_err / np.abs(ref))
    return float(np.max(rel)), float(np.max(abs_err))


#: (label, method, settings): every method, and each finite-difference scheme.
VARIANTS = (
    ("analytic", "analytic", MethodSettings()),
    ("jacobian", "jacobian", MethodSettings()),
    ("fd forward", "finite_difference", MethodSettings(fd_scheme="forward")),
    ("fd central", "finite_difference", MethodSettings(fd_scheme="central")),
    ("fd richardson", "finite_difference", MethodSettings(fd_scheme="richardson")),
    ("complex_step", "complex_step", MethodSettings()),
    ("exact", "exact", MethodSettings()),
)


def cast(problem: CrossEntropyProblem, dtype: str) -> CrossEntropyProblem:
    return replace(
        problem,
        logits=problem.logits.astype(dtype),
        targets=None if problem.targets is None else problem.targets.astype(dtype),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32", "float16"))
    opts = parser.parse_args()
    print(
        f"seed {opts.seed}, {opts.cases} random cases per target kind (K <= 40, logit scale "
        f"<= 12), methods in {opts.dtype}, reference: mpmath {mpmath.mp.dps} digits"
    )
    print(
        f"{'targets':14} {'quantity':18} {'worst rel err':>14} {'worst abs err':>14} {'skipped':>8}"
    )
    for targets in (False, True):
        rng = np.random.default_rng(opts.seed + targets)
        problems = suite(rng, opts.cases, targets)
        if opts.dtype != "float64":  # the reference sees the same rounded inputs
            problems = [cast(cast(p, opts.dtype), "float64") for p in problems]
        refs = [reference(p) for p in problems]
        kind = "probabilities" if targets else "labels"
        worst_rel = worst_abs = 0.0
        for p, (ref_losses, _) in zip(problems, refs, strict=True):
            low = cast(p, opts.dtype)
            r, a = errors(per_sample_loss(low).astype(np.float64), ref_losses)
            worst_rel, worst_abs = max(worst_rel, r), max(worst_abs, a)
        print(f"{kind:14} {'loss (per sample)':18} {worst_rel:14.3e} {worst_abs:14.3e} {0:8}")
        for label, name, settings in VARIANTS:
            worst_rel = worst_abs = 0.0
            skipped = 0
            for p, (_, ref_grad) in zip(problems, refs, strict=True):
                target = p if name == "exact" else cast(p, opts.dtype)
                try:
                    g = METHODS[name](target, settings).grad.astype(np.float64)
                except NotComputable:
                    skipped += 1
                    continue
                r, a = errors(g, ref_grad)
                worst_rel, worst_abs = max(worst_rel, r), max(worst_abs, a)
            print(f"{kind:14} {label:18} {worst_rel:14.3e} {worst_abs:14.3e} {skipped:8}")


if __name__ == "__main__":
    main()
