"""Pure numeric core: NumPy only, float64 by default, no I/O and no printing.

Shapes follow one convention throughout: ``N`` samples (rows), ``K`` classes (columns).
Functions accept arbitrary leading dimensions where they say so (``(..., K)``), which is how the
finite-difference method evaluates many perturbed copies of a batch at once.
"""

from gradcheck_cli.core.loss import (
    REDUCTIONS,
    CrossEntropyProblem,
    Reduction,
    dense_targets,
    per_sample_loss,
    reduce_loss,
    reduction_weights,
)
from gradcheck_cli.core.softmax import (
    cross_entropy_terms,
    log_softmax,
    logsumexp,
    softmax,
    softmax_jacobian,
)

__all__ = [
    "REDUCTIONS",
    "CrossEntropyProblem",
    "Reduction",
    "cross_entropy_terms",
    "dense_targets",
    "log_softmax",
    "logsumexp",
    "per_sample_loss",
    "reduce_loss",
    "reduction_weights",
    "softmax",
    "softmax_jacobian",
]
