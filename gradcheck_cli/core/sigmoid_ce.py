"""Binary cross-entropy with logits (``torch.nn.functional.binary_cross_entropy_with_logits``).

Every element is an independent binary problem. With logit ``x``, target ``y`` in [0, 1], element
weight ``w`` and per-class positive weight ``r`` (``pos_weight``):

    l = w * ( r * y * softplus(-x) + (1 - y) * softplus(x) )

since ``-log sigmoid(x) = softplus(-x)`` and ``-log(1 - sigmoid(x)) = softplus(x)``, with
``softplus(x) = max(x, 0) + log1p(exp(-|x|))``: never the log of a rounded sigmoid, so the loss is
exact where ``sigmoid(x)`` rounds to 0 or 1. ``mean`` divides the sum by the number of elements;
``none`` keeps every element's loss, shape (N, K).

The gradient is ``dl/dx = w * ( (1 - y) * sigmoid(x) - r * y * sigmoid(-x) )``: two non-negative
terms, each sigmoid evaluated on its own side (``sigmoid(-x)`` rather than ``1 - sigmoid(x)``), so
no term loses accuracy to cancellation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core.softmax_ce import REDUCTIONS, Reduction

FloatArray = NDArray[np.float64]
#: Real or complex (the complex-step method passes complex logits through the forward pass).
AnyArray = NDArray[Any]


@dataclass(frozen=True, eq=False)
class SigmoidProblem:
    """One binary cross-entropy-with-logits evaluation."""

    logits: FloatArray
    """Logits, shape (N, K), finite. A single vector is stored as N = 1."""
    targets: FloatArray
    """Targets, shape (N, K), entries in [0, 1]."""
    reduction: Reduction = "mean"
    weight: FloatArray | None = None
    """Element weights, already broadcast to (N, K) (None: all 1)."""
    pos_weight: FloatArray | None = None
    """Weight of the positive term per class, shape (K,) (None: all 1)."""
    scale: float | None = None
    """Every element's factor in the reduced loss when this problem is a slice of a larger
    batch (None: from this problem's own shape and reduction)."""

    def __post_init__(self) -> None:
        if self.logits.ndim != 2 or self.targets.shape != self.logits.shape:
            raise ValueError("logits and targets must both have shape (N, K)")
        if self.weight is not None and self.weight.shape != self.logits.shape:
            raise ValueError("weight must be broadcast to the logits' shape")
        if self.pos_weight is not None and self.pos_weight.shape != self.logits.shape[1:]:
            raise ValueError("pos_weight must have shape (K,)")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}")

    @property
    def shape(self) -> tuple[int, int]:
        n, k = self.logits.shape
        return n, k


def build(
    logits: FloatArray,
    labels: None,
    targets: FloatArray | None,
    reduction: Reduction,
    options: Mapping[str, Any],
) -> SigmoidProblem:
    """The problem of a spec's arrays and its options (this family's rows of
    ``core.options.OPTIONS``); element weights are broadcast to the logits' shape here."""
    assert labels is None and targets is not None
    weight = options.get("weight")
    if weight is not None:
        weight = np.broadcast_to(weight, logits.shape).copy()
    return SigmoidProblem(logits, targets, reduction, **{**options, "weight": weight})


def _cast(a: FloatArray | None, dtype: str) -> FloatArray | None:
    return None if a is None else a.astype(dtype)


def cast(problem: SigmoidProblem, dtype: str) -> SigmoidProblem:
    """The same problem with every array (logits, targets, weights) rounded to ``dtype``."""
    return replace(
        problem,
        logits=problem.logits.astype(dtype, copy=False),
        targets=problem.targets.astype(dtype),
        weight=_cast(problem.weight, dtype),
        pos_weight=_cast(problem.pos_weight, dtype),
    )


def rows_of(problem: SigmoidProblem, rows: slice, scale: float, dtype: str) -> SigmoidProblem:
    """Rows ``rows`` as a problem of their own in ``dtype``, carrying the whole batch's
    reduction ``scale`` (:func:`batch_scale`)."""
    return replace(
        problem,
        logits=problem.logits[rows].astype(dtype),
        targets=problem.targets[rows].astype(dtype),
        weight=_cast(None if problem.weight is None else problem.weight[rows], dtype),
        pos_weight=_cast(problem.pos_weight, dtype),
        scale=scale,
    )


def mean_divisor(problem: SigmoidProblem) -> int:
    """What ``mean`` divides the summed element losses by: the number of elements, N K."""
    n, k = problem.shape
    return n * k


def batch_scale(problem: SigmoidProblem) -> float:
    """Every element's factor in this whole problem's reduced loss: 1/(N K) for mean, else 1."""
    return 1.0 / mean_divisor(problem) if problem.reduction == "mean" else 1.0


def softplus(x: FloatArray) -> FloatArray:
    """``log(1 + exp(x))`` without overflow, same shape as x.

    ``x + log1p(exp(-x))`` where Re x >= 0 and ``log1p(exp(x))`` elsewhere: each branch is an
    analytic function (no ``abs`` or ``max``), so complex-step differentiation sees the true
    derivative; for real x this equals ``max(x, 0) + log1p(exp(-|x|))``.
    """
    if not np.iscomplexobj(x):
        real: FloatArray = np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))
        return real
    upper = x.real >= 0
    safe_pos = np.where(upper, x, 0.0)  # keep exp() of the discarded branch from overflowing
    safe_neg = np.where(upper, 0.0, x)
    out: FloatArray = np.where(
        upper, safe_pos + np.log1p(np.exp(-safe_pos)), np.log1p(np.exp(safe_neg))
    )
    return out


def sigmoid(x: FloatArray) -> FloatArray:
    """``1 / (1 + exp(-x))`` evaluated on the side where ``exp`` cannot overflow."""
    e = np.exp(-np.abs(x))
    out: FloatArray = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def element_weights(problem: SigmoidProblem) -> tuple[FloatArray, FloatArray]:
    """``(w, r * y)``: element weights (N, K) and the positive term's coefficient (N, K)."""
    w = np.ones(problem.shape, problem.logits.dtype) if problem.weight is None else problem.weight
    r = problem.logits.dtype.type(1) if problem.pos_weight is None else problem.pos_weight
    return w, r * problem.targets


def element_losses(problem: SigmoidProblem, logits: AnyArray | None = None) -> FloatArray:
    """Every element's loss ``l``, shape (..., N, K) for logits of shape (..., N, K)."""
    x = problem.logits if logits is None else logits
    w, pos = element_weights(problem)
    out: FloatArray = w * (pos * softplus(-x) + (1.0 - problem.targets) * softplus(x))
    return out


def reduction_scale(problem: SigmoidProblem) -> float:
    """Factor of every element in the reduced loss: the batch's when this problem is a slice of
    it, else :func:`batch_scale`."""
    return batch_scale(problem) if problem.scale is None else problem.scale


def contributions(problem: SigmoidProblem, logits: AnyArray | None = None) -> FloatArray:
    """Each row's share of the reduced loss, shape (..., N) (the finite-difference black box).

    For ``none`` a row's share is the sum of its elements' losses; since every element's loss
    depends only on its own logit, d(share_n)/dx_nk is exactly dl_nk/dx_nk.
    """
    out: FloatArray = np.sum(element_losses(problem, logits), axis=-1) * reduction_scale(problem)
    return out


def reduce_loss(problem: SigmoidProblem) -> float | FloatArray:
    """A float for ``mean`` and ``sum``; the (N, K) element losses for ``none``."""
    losses = element_losses(problem)
    if problem.reduction == "none":
        return losses
    total = float(np.sum(losses))
    return total / mean_divisor(problem) if problem.reduction == "mean" else total
