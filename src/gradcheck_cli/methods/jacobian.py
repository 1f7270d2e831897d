"""The gradient by the explicit chain rule, the way the derivation goes.

For each sample: the softmax Jacobian ``J = diag(p) - p p^T`` (K, K) is materialized, the loss's
gradient with respect to the probabilities is ``dL/dp = -t / p`` (zero where ``t == 0``), and the
gradient with respect to the logits is ``J^T dL/dp``.

This route divides by ``p``: where a class the target uses has a probability that underflows to 0
(logits (0, -800, 1) with label 1 give p_1 = e^-801.3 < 2^-1074), ``dL/dp`` is infinite and the
route is not computable. The same holds where such a probability is subnormal (below 2^-1022):
the products ``p_i p_j`` then lose their relative precision and dividing by ``p`` magnifies the loss
to O(1). The method then raises :class:`NotComputable` naming the first such
sample and class; the spec does not fail because of it.
"""

from __future__ import annotations

import numpy as np

from gradcheck_cli.core.loss import CrossEntropyProblem, dense_targets, reduction_weights
from gradcheck_cli.core.softmax import softmax, softmax_jacobian
from gradcheck_cli.methods._base import GradientOutput, NotComputable

_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)

#: Upper bound on the Jacobian entries held at once (rows are processed in chunks): 2^22 float64
#: values, 32 MiB.
JACOBIAN_CHUNK_ELEMENTS = 1 << 22


def jacobian_gradient(problem: CrossEntropyProblem) -> GradientOutput:
    """``w_n * J_n^T (-t_n / p_n)`` for every sample n, shape (N, K).

    Raises
    ------
    NotComputable
        If some class with a positive target has a probability below the smallest normal float64
        (zero or subnormal).
    """
    n, k = problem.shape
    if k * k > JACOBIAN_CHUNK_ELEMENTS:
        raise NotComputable(
            f"K = {k} classes: one {k} x {k} Jacobian would hold {k * k:,} values, above the "
            f"limit of {JACOBIAN_CHUNK_ELEMENTS:,} (K <= {int(JACOBIAN_CHUNK_ELEMENTS**0.5)})"
        )
    p = softmax(problem.logits)
    t = dense_targets(problem)
    used = t > 0
    bad = used & (p < _SMALLEST_NORMAL)
    if np.any(bad):
        row, col = (int(i) for i in np.argwhere(bad)[0])
        where = f"sample {row}, class {col}" if n > 1 else f"class {col}"
        if p[row, col] == 0.0:
            why = "underflows to 0, so dL/dp = -t/p is infinite"
        else:
            why = (
                f"is subnormal ({p[row, col]:.3g} < {_SMALLEST_NORMAL:.3g}), so dL/dp = -t/p "
                "and the Jacobian products lose their relative precision"
            )
        raise NotComputable(f"p of a target class ({where}) {why}; the closed form is unaffected")
    dl_dp = np.zeros_like(p)
    np.divide(-t, p, out=dl_dp, where=used)
    grad = np.empty_like(p)
    rows_per_chunk = max(1, JACOBIAN_CHUNK_ELEMENTS // (k * k))
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        jac = softmax_jacobian(p[start:stop])  # (B, K, K), J[b, i, j] = dp_i/dz_j
        # (J^T v)_j = sum_i J[i, j] v_i
        grad[start:stop] = np.einsum("bij,bi->bj", jac, dl_dp[start:stop])
    grad *= reduction_weights(problem)[:, None]
    return GradientOutput(grad)
