"""The trust corpus: no false alarm on a correct implementation, no silent pass of a wrong one.

A pure module (no pytest), used by ``benchmarks/trust.py`` and usable from tests::

    for impl, expected, regime, dtype, reduction in cases():
        outcome, detail = run_case(impl, regime, dtype, reduction)

``expected`` is ``"pass"`` for the correct implementations of ``tests/data/trust_impls.py`` and
``"catch"`` for the wrong ones. An outcome is ``"pass"``, ``"fail"``, ``"inconclusive"`` (some
comparison says it cannot decide) or ``"error"`` (run_spec raised). A correct implementation
that fails or errors is a *false alarm*; a wrong one that passes is a *miss*.

Every problem is small (N = 4, K = 7) with a fixed seed per regime, so every implementation and
reduction of one (regime, dtype) sees the same logits and labels.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import Implementation, load
from gradcheck_cli.model import Spec

IMPLS_PATH = Path(__file__).resolve().parent / "data" / "trust_impls.py"

N, K = 4, 7
DTYPES = ("float64", "float32", "float16")
REDUCTIONS = ("mean", "sum", "none")

CORRECT = (
    "buffers",
    "real_buffers",
    "inplace",
    "float32_inside",
    "log_softmax_route",
    "torch_f_cross_entropy",
)
#: The correct implementations that compute in the dtype itself (float16 arithmetic in float16).
HALF_ARITHMETIC = ("buffers", "inplace", "log_softmax_route", "torch_f_cross_entropy")
WRONG = ("zero_grad", "scaled_up", "scaled_down", "true_class_rounded_first", "loss_off")

Regime = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


def _labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.integers(0, k, size=n).astype(np.int64)


def _random(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(n, k)) * 2, _labels(rng, n, k)


def _offset(level: float) -> Regime:
    def regime(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        z, y = _random(rng, n, k)
        return z + level, y

    return regime


def _masked(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """About 30% of the non-label logits at -inf; the label logits stay finite."""
    z, y = _random(rng, n, k)
    mask = rng.random((n, k)) < 0.3
    mask[np.arange(n), y] = False
    z[mask] = -np.inf
    return z, y


def _confident(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """p_y drawn in [0.99, 0.995] per row: z_y = logsumexp(others) + log(p / (1 - p)).
    |z| stays below about 20, far inside float16's range."""
    z, y = _random(rng, n, k)
    p = rng.uniform(0.99, 0.995, size=n)
    for i in range(n):
        others = np.delete(z[i], y[i])
        top = others.max()
        lse = top + np.log(np.sum(np.exp(others - top)))
        z[i, y[i]] = lse + np.log(p[i] / (1 - p[i]))
    return z, y


REGIMES: dict[str, Regime] = {
    "random": _random,  # normal * 2
    "large_logits": _offset(1000.0),  # normal * 2 + 1000
    "huge_shift": _offset(1e6),  # normal * 2 + 1e6: float64 only (float16 overflows)
    "shifted": _offset(-300.0),  # normal * 2 - 300
    "masked": _masked,
    "confident": _confident,
}

#: The dtypes each regime is run in (all three unless listed).
REGIME_DTYPES: dict[str, tuple[str, ...]] = {"huge_shift": ("float64",)}


def regimes_for(dtype: str) -> list[str]:
    """The regimes that apply in ``dtype``, in table order."""
    return [r for r in REGIMES if dtype in REGIME_DTYPES.get(r, DTYPES)]


def problem(
    regime: str, n: int = N, k: int = K, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (logits float64 (N, K), labels int64 (N,)) of a regime (seeded by its name
    unless ``seed`` is given)."""
    rng = np.random.default_rng(zlib.crc32(regime.encode()) if seed is None else seed)
    z, y = REGIMES[regime](rng, n, k)
    return z.astype(np.float64), y.astype(np.int64)


def cases() -> Iterator[tuple[str, str, str, str, str]]:
    """(impl, expected "pass" | "catch", regime, dtype, reduction) for the whole matrix.

    * Correct implementations: every regime x dtype x reduction.
    * zero_grad, scaled_up, scaled_down: likewise (the 1e-2 planted in float16 is about 20
      ulps there, the 1e-3 in float32/float64 is 10^4 ulps of float32).
    * loss_off (1e-6 relative in the loss): float64 only; in float32 1e-6 is ~8 ulps of the
      loss, within what a correct float32 loss differs by, so "catch" would demand false alarms.
    * true_class_rounded_first: float16 with the confident regime only. In float64 and float32
      rounding p_y "to the input dtype" is the identity, so the function *is* a correct
      implementation there (bit for bit the float32 computation every float32 kernel does): a
      float32 case at p_y = 1 - 1e-5 could only be "caught" by a false alarm on every correct
      float32 code, since p_y - 1 computed in float32 has the same ~6e-8 absolute error. In
      float16 the bug matters only where 1 - p_y is small next to float16's ulp of p_y (4.9e-4
      below 1): p_y in [0.99, 0.995] loses 2-5% of the true-class gradient.
    * An implementation that computes p *in float16* (HALF_ARITHMETIC: every correct one but
      float32_inside, PyTorch's CPU kernels included) does the bug's arithmetic there: its p_y
      is a float16 before 1 is subtracted, and it loses 5-6% of the true-class gradient (and
      2-5% of the loss, from the sum of exponentials rounded to float16 before the log). No
      tolerance passes those and fails the bug; xentcheck holds half precision to what an
      accurate kernel achieves (float32 inside, one rounding), so in float16 at confident
      logits these are expected to be caught, and everywhere else to pass.
    """
    for dtype in DTYPES:
        for regime in regimes_for(dtype):
            for reduction in REDUCTIONS:
                for impl in CORRECT:
                    lossy = dtype == "float16" and regime == "confident" and impl in HALF_ARITHMETIC
                    yield impl, "catch" if lossy else "pass", regime, dtype, reduction
                for impl in ("zero_grad", "scaled_up", "scaled_down"):
                    yield impl, "catch", regime, dtype, reduction
                if dtype == "float64":
                    yield "loss_off", "catch", regime, dtype, reduction
                if dtype == "float16" and regime == "confident":
                    yield "true_class_rounded_first", "catch", regime, dtype, reduction


def outcome(result: Any) -> str:
    """The outcome of a result: "fail" if the spec failed, "inconclusive" if any comparison
    says so (``getattr(c, "inconclusive", None)``), else "pass"."""
    if result.status == "fail":
        return "fail"
    if any(getattr(c, "inconclusive", None) for c in result.comparisons):
        return "inconclusive"
    return "pass"


@functools.cache
def _implementation(path: str, impl: str) -> Implementation:
    return load(f"{path}:{impl}")


def make_spec(regime: str, reduction: str, n: int = N, k: int = K, seed: int | None = None) -> Spec:
    """The spec of one case (float64 logits; the run's dtype rounds them)."""
    z, y = problem(regime, n, k, seed)
    return Spec(
        name=f"{regime}-{reduction}",
        file=f"{regime}.yaml",
        logits=z,
        single=False,
        labels=y,
        reduction=reduction,  # type: ignore[arg-type]
    )


_QUANTITY = {"logits": "grad", "directions": "self"}


def _describe(c: Any) -> str:
    quantity = _QUANTITY.get(c.quantity, c.quantity)
    return (
        f"{quantity} rel {c.max_rel_error:.3g} abs {c.max_abs_error:.3g} "
        f"(allowed {c.atol:.3g}+{c.rtol:.3g}|ref|, {c.failed_elements} bad)"
    )


def detail(result: Any) -> str:
    """The failing implementation comparisons (or all of them when none fails), and any other
    failing comparison or check of the run."""
    impl_rows = [c for c in result.comparisons if c.method.startswith("impl")]
    failing = [c for c in impl_rows if not c.passed]
    parts = [_describe(c) for c in (failing or impl_rows)]
    name = impl_rows[0].method if impl_rows else "impl"
    text = f"{name}: " + "; ".join(parts)
    inconclusive = [c for c in result.comparisons if getattr(c, "inconclusive", None)]
    if inconclusive:
        text += " | inconclusive: " + "; ".join(
            f"{_QUANTITY.get(c.quantity, c.quantity)}: {c.inconclusive}" for c in inconclusive
        )
    others = [c for c in result.comparisons if not c.method.startswith("impl") and not c.passed]
    if others:
        text += " | also failing: " + "; ".join(f"{c.method} {_describe(c)}" for c in others)
    bad_checks = [c for c in result.checks if not c.passed]
    if bad_checks:
        text += " | failing checks: " + "; ".join(f"{c.name}: {c.detail}" for c in bad_checks)
    return text


def run(
    impl: str,
    regime: str,
    dtype: str,
    reduction: str,
    path: str | Path = IMPLS_PATH,
    n: int = N,
    k: int = K,
    seed: int | None = None,
) -> tuple[str, str, Any]:
    """Like :func:`run_case`, plus the SpecResult (None on an error)."""
    implementation = _implementation(str(path), impl)
    spec = make_spec(regime, reduction, n, k, seed)
    options = RunOptions(impl=implementation, methods=("analytic",), dtype=dtype)  # type: ignore[arg-type]
    try:
        result = run_spec(spec, options)
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}", None
    return outcome(result), detail(result), result


def run_case(
    impl: str,
    regime: str,
    dtype: str,
    reduction: str,
    path: str | Path = IMPLS_PATH,
    n: int = N,
    k: int = K,
    seed: int | None = None,
) -> tuple[str, str]:
    """Run one case: (outcome, detail); an exception from run_spec is ("error", its message)."""
    result, text, _ = run(impl, regime, dtype, reduction, path, n, k, seed)
    return result, text
