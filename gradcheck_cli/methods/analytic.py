"""Closed-form gradients.

Softmax cross-entropy, for one sample with weighted target ``q`` (see :mod:`..core.softmax_ce`):

    dce/dz'_c = p_c sum(q) - q_c = p_c sum_{j != c} q_j - q_c sum_{j != c} p_j

and the z-loss adds ``2 s lse(z') p_c``; a softcap chains ``dz'/dz = 1 / cosh^2(z/c)``. With a
plain index label ``y`` this is ``p - onehot(y)``.

The right-hand form has no cancellation: both products are non-negative, and ``1 - p_c`` is the
sum of the other probabilities. For logits (40, 0, 0) and label 0, ``p_0 - 1`` rounds to 0 while
the true value is -2 e^-40 / (1 + 2 e^-40) = -8.4967e-18; the sum of the other probabilities keeps
every digit, so every component carries a small *relative* error, tiny ones included.

Binary cross-entropy with logits: see :mod:`..core.sigmoid_ce`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem
from gradcheck_cli.core import sigmoid_ce as sig
from gradcheck_cli.core.softmax import logsumexp, one_minus, softmax
from gradcheck_cli.core.softmax_ce import (
    CrossEntropyProblem,
    capped,
    label_columns,
    label_weights,
    reduction_scales,
    weighted_targets,
)
from gradcheck_cli.methods._base import DEFAULT_SETTINGS, GradientOutput, MethodSettings

FloatArray = NDArray[np.float64]


def softcap_derivative(problem: CrossEntropyProblem) -> FloatArray | None:
    """``d(c tanh(z/c))/dz = 1 / cosh(z/c)^2`` per logit, shape (N, K); None without a softcap.

    Written with ``cosh`` rather than ``1 - tanh^2`` so that it keeps its relative accuracy where
    ``tanh`` is close to +-1 (it is 0 at a logit of -inf).
    """
    if problem.softcap is None:
        return None
    with np.errstate(over="ignore"):
        out: FloatArray = 1.0 / np.cosh(problem.logits / problem.softcap) ** 2
    return out


def analytic_gradient(
    problem: Problem, settings: MethodSettings = DEFAULT_SETTINGS
) -> GradientOutput:
    """Closed-form gradient of the reduced loss with respect to the (raw) logits, shape (N, K)."""
    if isinstance(problem, sig.SigmoidProblem):
        return GradientOutput(sigmoid_gradient(problem))
    z = capped(problem, problem.logits)
    p = softmax(z)
    alpha, beta = reduction_scales(problem)
    if problem.one_hot:
        # One-hot weighted targets: w_y (p - onehot(y)), the label component as -sum of the
        # other probabilities (the same formula, without forming q).
        rows = np.arange(problem.shape[0])
        labels = label_columns(problem)
        g = p.copy()
        g[rows, labels] = 0.0
        g[rows, labels] = -np.sum(g, axis=-1)
        g *= (alpha * label_weights(problem))[:, None]
    else:
        q = weighted_targets(problem)
        g = alpha[:, None] * (p * one_minus(q) - q * one_minus(p))
    if problem.z_loss:
        g += (2.0 * problem.z_loss * beta * logsumexp(z))[:, None] * p
    chain = softcap_derivative(problem)
    if chain is not None:
        g *= chain
    return GradientOutput(g)


def sigmoid_gradient(problem: sig.SigmoidProblem) -> FloatArray:
    """``scale * w * ((1 - y) sigmoid(x) - r y sigmoid(-x))``, shape (N, K)."""
    w, pos = sig.element_weights(problem)
    x = problem.logits
    g: FloatArray = w * ((1.0 - problem.targets) * sig.sigmoid(x) - pos * sig.sigmoid(-x))
    return g * sig.reduction_scale(problem)
