"""The closed-form gradient of softmax cross-entropy.

For one sample, ``dl/dz_j = p_j * sum_c t_c - t_j``; with a one-hot target (an index label ``y``)
that is ``p_j - [j == y]``.

The label component ``p_y - 1`` is computed as ``-sum_{j != y} p_j``. Both are equal in exact
arithmetic, but when ``p_y`` is close to 1 the subtraction cancels: for logits (40, 0, 0) and
label 0, ``p_0`` rounds to 1.0 and ``p_0 - 1`` gives 0, while the true value is
-2 e^-40 / (1 + 2 e^-40) = -8.4967e-18. The sum of the other probabilities keeps every digit
(a sum of positive terms has relative error of a few ulps), so every component of the analytic
gradient carries a small *relative* error, tiny components included.
"""

from __future__ import annotations

import numpy as np

from gradcheck_cli.core.loss import CrossEntropyProblem, reduction_weights
from gradcheck_cli.core.softmax import softmax
from gradcheck_cli.methods._base import GradientOutput


def analytic_gradient(problem: CrossEntropyProblem) -> GradientOutput:
    """Closed-form gradient ``w_n * (p_n * sum(t_n) - t_n)``, shape (N, K).

    ``w_n`` is the reduction weight of row n (1/N for mean, 1 for sum and none).
    """
    p = softmax(problem.logits)
    w = reduction_weights(problem)[:, None]
    if problem.labels is not None:
        n, _ = problem.shape
        rows = np.arange(n)
        g = p.copy()
        g[rows, problem.labels] = 0.0
        # Cancellation-free label component: -(sum of the other probabilities).
        g[rows, problem.labels] = -np.sum(g, axis=-1)
        return GradientOutput(g * w)
    assert problem.targets is not None
    t = problem.targets
    g = p * np.sum(t, axis=-1, keepdims=True) - t
    return GradientOutput(g * w)
