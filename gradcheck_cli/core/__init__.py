"""Pure numeric core: NumPy only, float64 by default, no I/O and no printing.

Shapes follow one convention throughout: ``N`` samples (rows), ``K`` classes (columns).
Functions accept arbitrary leading dimensions where they say so (``(..., K)``), which is how the
finite-difference method evaluates many perturbed copies of a batch at once.

Two loss families share the gradient methods: softmax cross-entropy
(:class:`CrossEntropyProblem`, :mod:`.loss`) and binary cross-entropy with logits
(:class:`SigmoidProblem`, :mod:`.sigmoid`). :func:`contributions` and :func:`reduce_any` dispatch
between them.
"""

from __future__ import annotations

from gradcheck_cli.core import loss as _softmax_ce
from gradcheck_cli.core import sigmoid as _sigmoid_ce
from gradcheck_cli.core.loss import (
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
from gradcheck_cli.core.sigmoid import SigmoidProblem
from gradcheck_cli.core.softmax import (
    cross_entropy_terms,
    log_softmax,
    logsumexp,
    one_minus,
    softmax,
    softmax_jacobian,
)

Problem = CrossEntropyProblem | SigmoidProblem


def contributions(
    problem: Problem, logits: _softmax_ce.AnyArray | None = None
) -> _softmax_ce.FloatArray:
    """Each row's share of the reduced loss, shape (..., N), for either loss family."""
    if isinstance(problem, SigmoidProblem):
        return _sigmoid_ce.contributions(problem, logits)
    return _softmax_ce.contributions(problem, logits)


def reduce_any(problem: Problem) -> float | _softmax_ce.FloatArray:
    """The reduced loss of either loss family."""
    if isinstance(problem, SigmoidProblem):
        return _sigmoid_ce.reduce_loss(problem)
    return _softmax_ce.reduce_loss(problem)


__all__ = [
    "REDUCTIONS",
    "CrossEntropyProblem",
    "Problem",
    "Reduction",
    "SigmoidProblem",
    "class_weights",
    "contributions",
    "cross_entropy_terms",
    "dense_targets",
    "log_softmax",
    "logsumexp",
    "one_minus",
    "per_sample_loss",
    "reduce_any",
    "reduce_loss",
    "reduction_scales",
    "softmax",
    "softmax_jacobian",
    "weighted_targets",
]
