"""A high-precision reference gradient: the closed form evaluated in 50-digit arithmetic.

The float64 inputs (logits, targets, weights, options) are exact binary numbers; this method
converts them to 50-significant-digit mpmath numbers, evaluates the gradient formulas of
``docs/losses.md`` (softmax, weighted targets, reduction scales with the loss mask, z-loss,
softcap; or sigmoid cross-entropy) without rounding to float64 on the way, and rounds each
result once. The outcome is the correctly rounded gradient up to a last-bit tie, so every other
method can be judged by its true error. mpmath is imported only when this method runs.

Cost grows with N x K (about 0.05 ms per element); above :data:`EXACT_MAX_ELEMENTS` the method
declines with a reason rather than taking more than a few seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem, SigmoidProblem
from gradcheck_cli.core.sigmoid_ce import mean_divisor
from gradcheck_cli.core.softmax_ce import (
    CrossEntropyProblem,
    class_weights,
    exact_weighted_target,
    mean_normalizers,
)
from gradcheck_cli.methods._base import (
    DEFAULT_SETTINGS,
    GradientOutput,
    MethodSettings,
    NotComputable,
)

FloatArray = NDArray[np.float64]
#: Significant decimal digits of the reference arithmetic.
DIGITS = 50
#: Largest N x K the method evaluates (a few seconds at most).
EXACT_MAX_ELEMENTS = 20_000


def exact_gradient(problem: Problem, settings: MethodSettings = DEFAULT_SETTINGS) -> GradientOutput:
    """The gradient in 50-digit arithmetic, rounded once to float64, shape (N, K)."""
    del settings
    n, k = problem.shape
    if n * k > EXACT_MAX_ELEMENTS:
        raise NotComputable(
            f"{n * k:,} elements is above the limit of {EXACT_MAX_ELEMENTS:,} for the 50-digit "
            "reference (it would take more than a few seconds)"
        )
    import mpmath

    ctx = mpmath.MPContext()
    ctx.dps = DIGITS
    sigmoid = isinstance(problem, SigmoidProblem)
    grad = _sigmoid(ctx, problem) if sigmoid else _softmax(ctx, problem)  # type: ignore[arg-type]
    return GradientOutput(grad, note=f"closed form in {DIGITS}-digit arithmetic (mpmath)")


def _softmax(ctx: Any, problem: CrossEntropyProblem) -> FloatArray:
    mpf = ctx.mpf
    n, k = problem.shape
    w = [mpf(float(v)) for v in class_weights(problem)]
    valid = problem.valid
    # The loss mask's float64 entries (1 without one), exactly; ignored rows count 0.
    given = problem.loss_mask
    mask = [
        (mpf(1) if given is None else mpf(float(given[i]))) if valid[i] else mpf(0)
        for i in range(n)
    ]
    ce_norm, z_norm = mean_normalizers(problem)  # sums of float64 weights: recompute exactly
    if problem.num_items_in_batch is not None or problem.reduction != "mean":
        ce_norm_mp, z_norm_mp = mpf(ce_norm), mpf(z_norm)
    else:
        z_norm_mp = ctx.fsum(mask)
        if problem.labels is not None:
            labels = problem.labels
            ce_norm_mp = ctx.fsum(mask[i] * w[int(labels[i])] for i in range(n) if valid[i])
        else:
            ce_norm_mp = z_norm_mp if problem.loss_mask is not None else mpf(n)
    out = np.zeros((n, k))
    for i in range(n):
        if not valid[i] or mask[i] == 0:
            continue
        row = [mpf(float(v)) if np.isfinite(v) else None for v in problem.logits[i]]
        if problem.softcap is not None:
            c = mpf(problem.softcap)
            # c tanh(z/c) maps a -inf logit to -c: a finite logit after capping.
            capped = [-c if v is None else c * ctx.tanh(v / c) for v in row]
        else:
            capped = row
        finite = [v for v in capped if v is not None]
        m = max(finite)
        e = [mpf(0) if v is None else ctx.exp(v - m) for v in capped]
        total = ctx.fsum(e)
        p = [x / total for x in e]
        lse = m + ctx.log(total)
        q = exact_weighted_target(problem, i, w, mpf)
        if problem.reduction == "mean":
            alpha = mask[i] / ce_norm_mp if ce_norm_mp != 0 else mpf(0)
            beta = mask[i] / z_norm_mp if z_norm_mp != 0 and ce_norm_mp != 0 else mpf(0)
        else:
            alpha = beta = mask[i]
        sq = ctx.fsum(q)
        zterm = 2 * mpf(problem.z_loss) * beta * lse
        for c in range(k):
            g = alpha * (p[c] * sq - q[c]) + zterm * p[c]
            if problem.softcap is not None:
                if row[c] is None:
                    g = mpf(0)
                else:
                    g *= 1 / ctx.cosh(row[c] / mpf(problem.softcap)) ** 2
            out[i, c] = float(g)
    return out


def _sigmoid(ctx: Any, problem: SigmoidProblem) -> FloatArray:
    mpf = ctx.mpf
    n, k = problem.shape
    scale = mpf(1) / mean_divisor(problem) if problem.reduction == "mean" else mpf(1)
    out = np.empty((n, k))
    for i in range(n):
        for c in range(k):
            x = mpf(float(problem.logits[i, c]))
            y = mpf(float(problem.targets[i, c]))
            w = mpf(1) if problem.weight is None else mpf(float(problem.weight[i, c]))
            r = mpf(1) if problem.pos_weight is None else mpf(float(problem.pos_weight[c]))
            s1 = 1 / (1 + ctx.exp(-x))
            s0 = 1 / (1 + ctx.exp(x))
            out[i, c] = float(scale * w * ((1 - y) * s1 - r * y * s0))
    return out
