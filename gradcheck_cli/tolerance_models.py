"""Tolerance models for low-precision implementation checks (float32, float16, bfloat16).

Three quantities per element: the *truth* (the float64 or exact reference), the *correctly
rounded truth* (the truth rounded once to the dtype: the best any kernel can return), and the
*naive baseline*: xentcheck's own closed form evaluated with every array in the dtype (max
shift, exp, sum, log and p - q each rounded to the dtype: NumPy's float16/float32 arithmetic;
for bfloat16 ml_dtypes' ufuncs, which compute each operation in float32 and round once, as a
bfloat16 tensor operation on a CPU does).

Models (``--tolerance-model``):

* ``rounded``: pass iff ``|impl - truth| <= k eps |truth| + floor`` element-wise: ``k``
  (default 4) units of the dtype's relative spacing (k ulps of the truth, to within a factor 2),
  and a floor of ``floor`` (default 2) ulps of the output's largest magnitude plus 4 of the
  smallest subnormal, so elements far below the scale need not be accurate to their own ulp.
  An accurate kernel (float32 arithmetic inside, one rounding at the end, as Liger-Kernel's fix
  of #1268 does) meets it. The default for float16 and bfloat16.
* ``baseline`` (apple/ml-cross-entropy's three-way test): pass iff ``|impl - truth| <= k
  |baseline - truth| + floor``: no worse than the naive computation in the dtype.
* ``fixed``: the measured per-dtype tables (``impl.IMPL_TOLERANCES``), the default for float32.
  Kernels that compute in float32 lose about ``|z| eps`` through ``logsumexp``, so the correctly
  rounded float32 truth is out of reach without float64 inside; ``rounded`` is offered there as
  the strict option.

Every low-precision comparison also reports its error in ulps of the dtype (worst, median, 99th
percentile), the naive baseline's error and the ratio to it, and a *vacuity* check: whether a
zero gradient, or the Liger-Kernel #1268 gradient (the softmax rounded to the dtype before q is
subtracted), would have passed the same allowance while being wrong by more than ``k`` ulps;
such a comparison is marked "tolerance too loose to catch ...".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.compare import Precision, Tolerance, ulp
from gradcheck_cli.core import CrossEntropyProblem, Problem
from gradcheck_cli.core.softmax_ce import reduction_scales, weighted_targets

FloatArray = NDArray[np.float64]

MODELS = ("rounded", "baseline", "fixed")
DEFAULT_K = 4.0
DEFAULT_FLOOR_ULPS = 2.0
LOW_DTYPES = ("float32", "float16", "bfloat16")


def naive(problem: Problem) -> tuple[np.ndarray, FloatArray] | None:
    """The naive baseline of a plain softmax problem in its logits' dtype: the loss in the
    problem's reduction and the gradient (N, K), both widened to float64 at the end.

    Every step is rounded to the dtype, with nothing cancellation-free: ``m = max z``,
    ``e = exp(z - m)``, ``s = sum e``, ``p = e / s``, ``lse = m + log s``; the loss is
    ``sum_c q_c (lse - z_c)`` per row and the gradient ``alpha (p sum(q) - q)``, with the
    weighted targets ``q`` and the reduction scales ``alpha`` rounded to the dtype. This is how
    a half-precision tensor operation on a CPU computes it (PyTorch's CPU ``F.cross_entropy``
    in bfloat16 gives the same true-class gradient: exactly 0 at ``p_y >= 0.999``). None for
    softcap, z-loss and sigmoid problems (no naive form is defined for them here).
    """
    if not isinstance(problem, CrossEntropyProblem) or not problem.plain:
        return None
    z = problem.logits
    dtype = z.dtype
    with np.errstate(all="ignore"):
        m = np.max(z, axis=-1, keepdims=True)
        e = np.exp((z - m).astype(dtype))
        total = np.sum(e, axis=-1, keepdims=True, dtype=dtype)
        p = (e / total).astype(dtype)
        lse = (m + np.log(total)).astype(dtype)
        q = weighted_targets(problem).astype(dtype)
        alpha = reduction_scales(problem)[0].astype(dtype)
        gap = np.where(q > 0, (lse - z).astype(dtype), 0).astype(dtype)
        per = np.sum((q * gap).astype(dtype), axis=-1, dtype=dtype)
        mass = np.sum(q, axis=-1, keepdims=True, dtype=dtype)
        grad = ((p * mass).astype(dtype) - q).astype(dtype) * alpha[:, None]
        shares = (per * alpha).astype(dtype)
    loss: np.ndarray = (
        shares.astype(np.float64)
        if problem.reduction == "none"
        else np.asarray(np.sum(shares, dtype=dtype), dtype=np.float64)
    )
    if problem.reduction == "mean" and not np.any(alpha):
        loss = np.asarray(np.nan)
    return loss, grad.astype(np.float64)


def default_model(dtype: str) -> str:
    """``rounded`` for the half-precision dtypes, ``fixed`` for float32 and float64."""
    return "rounded" if dtype in ("float16", "bfloat16") else "fixed"


@dataclass(frozen=True)
class Settings:
    """A run's choice of model (None: the dtype's default) and its two parameters."""

    model: str | None = None
    k: float = DEFAULT_K
    floor_ulps: float = DEFAULT_FLOOR_ULPS

    def for_dtype(self, dtype: str) -> str:
        return self.model or default_model(dtype)


def floor(truth: np.ndarray, dtype: str, floor_ulps: float, inner: float = 0.0) -> float:
    """``floor_ulps`` ulps of ``max |truth|`` in ``dtype`` plus 4 of its smallest subnormal,
    plus ``inner`` (the float32 rounding of the terms an accurate kernel combines:
    ``impl.inner_rounding``)."""
    values = np.abs(np.asarray(truth, dtype=np.float64))
    finite = values[np.isfinite(values)]
    top = float(np.max(finite)) if finite.size else 0.0
    tiny = float(np.finfo(np.dtype(dtype)).smallest_subnormal)
    return floor_ulps * ulp(top, dtype) + 4.0 * tiny + inner


def rounded(
    truth: np.ndarray, dtype: str, k: float, floor_ulps: float, inner: float = 0.0
) -> Tolerance:
    """The ``rounded`` model as a tolerance: rtol ``k eps``, atol the floor."""
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return Tolerance(rtol=k * eps, atol=floor(truth, dtype, floor_ulps, inner))


def baseline_allowance(
    truth: np.ndarray,
    baseline: np.ndarray,
    dtype: str,
    k: float,
    floor_ulps: float,
    inner: float = 0.0,
) -> tuple[Tolerance, FloatArray]:
    """The ``baseline`` model: per element ``k |baseline - truth| + floor`` (the tolerance
    carries the floor as atol and rtol 0, for display)."""
    at = floor(truth, dtype, floor_ulps, inner)
    with np.errstate(invalid="ignore"):
        gap = np.abs(np.asarray(baseline, dtype=np.float64) - truth)
    allowance: FloatArray = k * np.where(np.isfinite(gap), gap, 0.0) + at
    return Tolerance(rtol=0.0, atol=at), allowance


def ulp_errors(got: np.ndarray, truth: np.ndarray, dtype: str) -> FloatArray:
    """``|got - truth|`` in units of the dtype's spacing at ``|truth|`` (at least its smallest
    normal's spacing, so a zero truth does not divide by a subnormal), element-wise."""
    t = np.abs(np.asarray(truth, dtype=np.float64))
    info = np.finfo(np.dtype(dtype))
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.maximum(t, float(info.smallest_normal)).astype(dtype)
        spacing = np.spacing(cast).astype(np.float64)
        err = np.abs(np.asarray(got, dtype=np.float64) - t * np.sign(truth))
        out: FloatArray = np.where(np.isfinite(err), err / spacing, np.inf)
    return out


def measure(
    got: np.ndarray,
    truth: np.ndarray,
    baseline: np.ndarray | None,
    dtype: str,
    settings: Settings,
    passes: dict[str, np.ndarray],
    accepts: object,
) -> Precision:
    """The :class:`Precision` of ``got`` against ``truth`` (same shapes); ``passes`` maps
    planted wrong answers (name -> values) to test with ``accepts(values) -> bool`` (the
    comparison's own allowance)."""
    errors = ulp_errors(got, truth, dtype)
    flat = errors.ravel()
    finite = flat[np.isfinite(flat)]
    with np.errstate(over="ignore", invalid="ignore"):
        fl = np.asarray(truth, dtype=np.float64).astype(dtype).astype(np.float64)
    rounded_ulps = float(np.max(ulp_errors(fl, truth, dtype), initial=0.0))
    base_ulps = ratio = None
    if baseline is not None:
        base_ulps = float(np.max(ulp_errors(baseline, truth, dtype), initial=0.0))
        with np.errstate(invalid="ignore"):  # inf - inf where the loss is infinite
            base_gap = _finite_max(np.asarray(baseline, dtype=np.float64) - truth)
            own_gap = _finite_max(np.asarray(got, dtype=np.float64) - truth)
        ratio = own_gap / base_gap if base_gap > 0 else None
    model = settings.for_dtype(dtype)
    loose = []
    for name, values in passes.items():
        wrong = float(np.max(ulp_errors(values, truth, dtype), initial=0.0)) > settings.k
        if wrong and accepts(values):  # type: ignore[operator]
            loose.append(name)
    return Precision(
        model=model,
        k=settings.k,
        floor_ulps=settings.floor_ulps,
        ulps_worst=float(np.max(flat, initial=0.0)),
        ulps_median=float(np.median(finite)) if finite.size else float("inf"),
        ulps_p99=float(np.percentile(finite, 99)) if finite.size else float("inf"),
        rounded_ulps=rounded_ulps,
        baseline_ulps=base_ulps,
        baseline_ratio=ratio,
        loose=tuple(loose),
    )


def _finite_max(diff: np.ndarray) -> float:
    """``max |diff|`` over its finite entries (0 for none; inf - inf and nan are skipped)."""
    with np.errstate(invalid="ignore"):
        values = np.abs(diff)
    finite = values[np.isfinite(values)]
    return float(np.max(finite)) if finite.size else 0.0
