"""The gradient by the explicit chain rule, the way the derivation goes.

Softmax cross-entropy, for each sample: the softmax Jacobian ``J = diag(p) - p p^T`` (K, K) is
materialized, the loss's gradient with respect to the probabilities is ``dL/dp = -alpha q / p``
(zero where ``q == 0``; ``q`` the weighted target, ``alpha`` the reduction scale), and the gradient
with respect to the softmax input is ``J^T dL/dp``. A z-loss adds its own chain,
``dL/dlse * dlse/dz' = 2 s beta lse * p``; a softcap multiplies by its diagonal Jacobian
``dz'/dz = 1 / cosh(z/c)^2``.

Binary cross-entropy with logits: the Jacobian of the element-wise sigmoid is the diagonal
``sigma (1 - sigma)``, chained with ``dL/dsigma = w (-r y / sigma + (1 - y) / (1 - sigma))``, with
``1 - sigma`` evaluated as ``sigma(-x)``.

This route divides by probabilities: where one that the target uses underflows to 0 (logits
(0, -800, 1) with label 1 give p_1 = e^-801.3 < 2^-1074) the route is not computable. The same
holds where such a probability is subnormal (below 2^-1022): the products then lose their
relative precision and dividing by ``p`` magnifies the loss to O(1). The method raises
:class:`NotComputable` naming the first such sample and class; the spec does not fail because of
it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem
from gradcheck_cli.core import sigmoid_ce as sig
from gradcheck_cli.core.softmax import logsumexp, one_minus, softmax, softmax_jacobian
from gradcheck_cli.core.softmax_ce import (
    capped,
    label_columns,
    label_weights,
    reduction_scales,
    weighted_targets,
)
from gradcheck_cli.methods._base import (
    DEFAULT_SETTINGS,
    GradientOutput,
    MethodSettings,
    NotComputable,
)
from gradcheck_cli.methods.analytic import softcap_derivative

FloatArray = NDArray[np.float64]

#: Upper bound on the Jacobian entries held at once (rows are processed in chunks): 2^22 float64
#: values, 32 MiB.
JACOBIAN_CHUNK_ELEMENTS = 1 << 22
#: Largest K whose K x K Jacobians are materialized; above it the structured product is used
#: (forming 32 Jacobians of 1000 x 1000 costs 0.09 s, the structured product 2 ms).
MATERIALIZE_MAX_K = 512


def _refuse_small(p: FloatArray, used: NDArray[np.bool_], what: str) -> None:
    """Raise NotComputable where a probability the loss divides by is zero or subnormal."""
    tiny = float(np.finfo(p.dtype).tiny)
    bad = used & (p < tiny)
    if not np.any(bad):
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    _raise_small(p, row, col, what)


def _raise_small(p: FloatArray, row: int, col: int, what: str) -> None:
    tiny = float(np.finfo(p.dtype).tiny)
    where = f"sample {row}, class {col}" if p.shape[0] > 1 else f"class {col}"
    if p[row, col] == 0.0:
        why = f"underflows to 0, so {what} is infinite"
    else:
        why = (
            f"is subnormal ({p[row, col]:.3g} < {tiny:.3g}), so {what} "
            "and the Jacobian products lose their relative precision"
        )
    raise NotComputable(f"p of a target class ({where}) {why}; the closed form is unaffected")


def jacobian_gradient(
    problem: Problem, settings: MethodSettings = DEFAULT_SETTINGS
) -> GradientOutput:
    """``J^T dL/dp`` for every sample (plus the z-loss and softcap chains), shape (N, K).

    Above K = 512 the product is formed through the Jacobian's structure (see
    :func:`structured_product`), and the note says so.

    Raises
    ------
    NotComputable
        If some class with a positive target has a probability below the smallest normal float64
        (zero or subnormal).
    """
    if isinstance(problem, sig.SigmoidProblem):
        return GradientOutput(_sigmoid_chain(problem))
    n, k = problem.shape
    z = capped(problem, problem.logits)
    p = softmax(z)
    alpha, beta = reduction_scales(problem)
    structured = k > MATERIALIZE_MAX_K or k * k > JACOBIAN_CHUNK_ELEMENTS
    note = None
    if structured:
        note = (
            f"structured product (diag(p) - p p^T)^T v without forming J: one {k} x {k} "
            f"Jacobian would hold {k * k:,} values (materialized up to K = "
            f"{min(MATERIALIZE_MAX_K, int(JACOBIAN_CHUNK_ELEMENTS**0.5))})"
        )
    if structured and problem.one_hot:
        # One-hot weighted targets: dL/dp has one entry per row, -alpha w_y / p_y.
        rows = np.arange(n)
        labels = label_columns(problem)
        scale = alpha * label_weights(problem)
        p_y = p[rows, labels]
        tiny = float(np.finfo(p.dtype).tiny)
        bad = np.flatnonzero((scale > 0) & (p_y < tiny))
        if bad.size:
            _raise_small(p, int(bad[0]), int(labels[bad[0]]), "dL/dp = -q/p")
        v_y = np.zeros_like(p_y)
        np.divide(-scale, p_y, out=v_y, where=scale > 0)
        grad = structured_one_hot(p, labels, v_y)
    else:
        q = weighted_targets(problem)
        used = (q > 0) & (alpha[:, None] > 0)
        _refuse_small(p, used, "dL/dp = -q/p")
        dl_dp = np.zeros_like(p)
        np.divide(-alpha[:, None] * q, p, out=dl_dp, where=used)
        if structured:
            grad = structured_product(p, dl_dp)
        else:
            grad = np.empty_like(p)
            rows_per_chunk = max(1, JACOBIAN_CHUNK_ELEMENTS // (k * k))
            for start in range(0, n, rows_per_chunk):
                stop = min(n, start + rows_per_chunk)
                jac = softmax_jacobian(p[start:stop])  # (B, K, K), J[b, i, j] = dp_i/dz_j
                # (J^T v)_j = sum_i J[i, j] v_i, as a batched vector-matrix product
                grad[start:stop] = np.matmul(dl_dp[start:stop, None, :], jac)[:, 0, :]
    if problem.z_loss:
        dl_dlse = 2.0 * problem.z_loss * beta * logsumexp(z)  # (N,)
        grad += dl_dlse[:, None] * p  # dlse/dz' = softmax(z')
    chain = softcap_derivative(problem)
    if chain is not None:
        grad *= chain  # the softcap's Jacobian is diagonal
    return GradientOutput(grad, note=note)


def structured_one_hot(p: FloatArray, labels: NDArray[np.int64], v_y: FloatArray) -> FloatArray:
    """``J^T v`` when v is zero except ``v_y`` at ``labels`` in each row, shape (N, K):
    ``-p_i p_y v_y`` off the label and ``p_y (1 - p_y) v_y`` at it (``1 - p_y`` as the sum of
    the other probabilities)."""
    rows = np.arange(p.shape[0])
    p_y = p[rows, labels]
    out: FloatArray = p * (-(p_y * v_y))[:, None]
    others = p.copy()
    others[rows, labels] = 0.0
    out[rows, labels] = p_y * np.sum(others, axis=-1) * v_y
    return out


def structured_product(p: FloatArray, v: FloatArray) -> FloatArray:
    """``J^T v`` for ``J = diag(p) - p p^T`` without forming J, shape (N, K).

    Row-wise ``(J^T v)_i = p_i (1 - p_i) v_i - p_i sum_{j != i} p_j v_j``, with ``1 - p_i`` as the
    sum of the other probabilities (as in the materialized diagonal) and the off-diagonal sum as
    ``s - p_i v_i``, ``s = sum_j p_j v_j``: O(K) per row instead of O(K^2).
    """
    pv = p * v
    s = np.sum(pv, axis=-1, keepdims=True)
    out: FloatArray = p * one_minus(p) * v - p * (s - pv)
    return out


def _sigmoid_chain(problem: sig.SigmoidProblem) -> FloatArray:
    x = problem.logits
    s1, s0 = sig.sigmoid(x), sig.sigmoid(-x)  # sigma and 1 - sigma, each accurate
    w, pos = sig.element_weights(problem)
    neg = 1.0 - problem.targets
    _refuse_small(s1, (pos * w) > 0, "dL/dsigma = -w r y / sigma")
    _refuse_small(s0, (neg * w) > 0, "dL/dsigma = w (1 - y) / (1 - sigma)")
    dl_ds = np.zeros_like(x)
    np.divide(-w * pos, s1, out=dl_ds, where=(pos * w) > 0)
    extra = np.zeros_like(x)
    np.divide(w * neg, s0, out=extra, where=(neg * w) > 0)
    dl_ds += extra
    dsigma_dx = s1 * s0  # the diagonal of the element-wise sigmoid's Jacobian
    out: FloatArray = dl_ds * dsigma_dx * sig.reduction_scale(problem)
    return out
