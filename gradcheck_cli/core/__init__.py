"""Pure numeric core: NumPy only, float64 by default, no I/O and no printing.

Shapes follow one convention throughout: ``N`` samples (rows), ``K`` classes (columns).
Functions accept arbitrary leading dimensions where they say so (``(..., K)``), which is how the
finite-difference method evaluates many perturbed copies of a batch at once.

Two loss families share the gradient methods: softmax cross-entropy
(:class:`CrossEntropyProblem`, :mod:`.softmax_ce`) and binary cross-entropy with logits
(:class:`SigmoidProblem`, :mod:`.sigmoid_ce`). Each family's module owns its problem, forward
pass, reduction scales, building from a spec's options, casting and slicing; the options
themselves are one table, :mod:`.options`. The functions here dispatch between the families.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gradcheck_cli.core import sigmoid_ce as _sigmoid_ce
from gradcheck_cli.core import softmax_ce as _softmax_ce
from gradcheck_cli.core.options import SIGMOID, LossKind
from gradcheck_cli.core.sigmoid_ce import SigmoidProblem
from gradcheck_cli.core.softmax import (
    log_softmax,
    logsumexp,
    one_minus,
    softmax,
    softmax_jacobian,
)
from gradcheck_cli.core.softmax_ce import (
    REDUCTIONS,
    CrossEntropyProblem,
    Reduction,
    class_weights,
    dense_targets,
    per_sample_loss,
    reduce_loss,
    reduction_scales,
    weighted_targets,
)

Problem = CrossEntropyProblem | SigmoidProblem


def contributions(
    problem: Problem,
    logits: _softmax_ce.AnyArray | None = None,
    scratch: _softmax_ce.AnyArray | None = None,
) -> _softmax_ce.FloatArray:
    """Each row's share of the reduced loss, shape (..., N), for either loss family (softmax
    with ``scratch``, an array like ``logits``: nothing of their size is allocated and
    ``logits`` is overwritten; the sigmoid family ignores it)."""
    if isinstance(problem, SigmoidProblem):
        return _sigmoid_ce.contributions(problem, logits)
    return _softmax_ce.contributions(problem, logits, scratch)


def build_problem(
    loss: LossKind,
    logits: _softmax_ce.FloatArray,
    labels: _softmax_ce.IntArray | None,
    targets: _softmax_ce.FloatArray | None,
    reduction: Reduction,
    options: Mapping[str, Any],
) -> Problem:
    """The problem of family ``loss`` (``options``: that family's options, by name)."""
    if loss == SIGMOID:
        assert labels is None
        return _sigmoid_ce.build(logits, None, targets, reduction, options)
    return _softmax_ce.build(logits, labels, targets, reduction, options)


def cast_problem(problem: Problem, dtype: str) -> Problem:
    """The same problem with its floating-point arrays rounded to ``dtype``."""
    if isinstance(problem, SigmoidProblem):
        return _sigmoid_ce.cast(problem, dtype)
    return _softmax_ce.cast(problem, dtype)


BatchScales = tuple[_softmax_ce.FloatArray, _softmax_ce.FloatArray] | float


def batch_scales(problem: Problem) -> BatchScales:
    """The whole batch's reduction scales, in float64, for :func:`rows_of`."""
    if isinstance(problem, SigmoidProblem):
        return _sigmoid_ce.batch_scale(problem)
    return _softmax_ce.float64_scales(problem)


def carried_scales(problem: Problem) -> BatchScales:
    """:func:`batch_scales`, or the scales a slice of a batch carries (``rows_of``): what
    :func:`rows_of` needs to cut this problem again without changing any row's share."""
    if isinstance(problem, SigmoidProblem):
        return batch_scales(problem) if problem.scale is None else problem.scale
    if problem.row_scales is None:
        return batch_scales(problem)
    alpha, beta = problem.row_scales
    return alpha.astype(np.float64), beta.astype(np.float64)


def rows_of(problem: Problem, rows: slice, scales: BatchScales, dtype: str) -> Problem:
    """Rows ``rows`` of ``problem`` as a problem of their own, in ``dtype``, carrying the whole
    batch's reduction ``scales`` (:func:`batch_scales`)."""
    if isinstance(problem, SigmoidProblem):
        assert isinstance(scales, float)
        return _sigmoid_ce.rows_of(problem, rows, scales, dtype)
    assert isinstance(scales, tuple)
    return _softmax_ce.rows_of(problem, rows, scales, dtype)


def reduce_any(problem: Problem) -> float | _softmax_ce.FloatArray:
    """The reduced loss of either loss family."""
    if isinstance(problem, SigmoidProblem):
        return _sigmoid_ce.reduce_loss(problem)
    return _softmax_ce.reduce_loss(problem)


__all__ = [
    "REDUCTIONS",
    "BatchScales",
    "CrossEntropyProblem",
    "Problem",
    "Reduction",
    "SigmoidProblem",
    "batch_scales",
    "build_problem",
    "carried_scales",
    "cast_problem",
    "class_weights",
    "contributions",
    "dense_targets",
    "log_softmax",
    "logsumexp",
    "one_minus",
    "per_sample_loss",
    "reduce_any",
    "reduce_loss",
    "reduction_scales",
    "rows_of",
    "softmax",
    "softmax_jacobian",
    "weighted_targets",
]
