"""Invariant checks that need no finite differences, and golden-value expectations.

Each check returns a :class:`~gradcheck_cli.model.Check`. The thresholds are rounding-error bounds
derived from the computation, not tuning knobs; each is stated where it is computed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core.sigmoid_ce import SigmoidProblem, element_losses, softplus
from gradcheck_cli.core.softmax import softmax_jacobian
from gradcheck_cli.core.softmax_ce import (
    CrossEntropyProblem,
    capped,
    reduce_loss,
    reduction_scales,
    sample_terms,
    weighted_targets,
)
from gradcheck_cli.model import Check, Expect

FloatArray = NDArray[np.float64]
EPS = float(np.finfo(np.float64).eps)
#: The constant added to every logit by the shift-invariance check (a power of two, so it is
#: exactly representable and the check measures only the rounding of z + c itself).
SHIFT = 1024.0
#: Most Jacobian entries the Jacobian-property check forms (2^20: one 1000-class sample).
_CHUNK_ELEMENTS = 1 << 20


def probs_sum_to_one(probs: FloatArray) -> Check:
    """Every row of ``probs`` (N, K) sums to 1 within ``2 (K + 1) eps``.

    Each ``p_k`` is a rounded exponential divided by a sum of K rounded terms, so it carries a
    relative error of at most about ``(K + 1) eps``; weighted by ``p_k`` these add up to at most
    ``(K + 1) eps`` over the row, and summing the K values adds at most as much again.
    """
    k = probs.shape[-1]
    dev = float(np.max(np.abs(np.sum(probs, axis=-1) - 1.0)))
    bound = 2 * (k + 1) * EPS
    return Check(
        "probs_sum_to_one", dev <= bound, f"max |sum(p) - 1| = {dev:.3g} (bound {bound:.3g})"
    )


def grad_rows_sum_to_zero(grad: FloatArray, target_mass: FloatArray, weights: FloatArray) -> Check:
    """Every gradient row (N, K) sums to 0, since ``sum_k (p_k sum(t) - t_k) = sum(t)(sum(p) - 1)``.

    ``target_mass`` is each row's ``sum_k |q_k|`` (N,) and ``weights`` its reduction weight
    ``w_n`` (N,). Bound per row: ``2 (K + 1) eps * max(w_n sum_k |q_k|, sum_k |g_k|)``, the
    rounding of K terms whose magnitudes add up to that scale.
    """
    k = grad.shape[-1]
    row_sums = np.abs(np.sum(grad, axis=-1))
    scale = np.maximum(weights * target_mass, np.sum(np.abs(grad), axis=-1))
    bound = 2 * (k + 1) * EPS * scale
    worst = int(np.argmax(row_sums - bound))
    ok = bool(np.all(row_sums <= bound))
    return Check(
        "grad_rows_sum_to_zero",
        ok,
        f"max |row sum| = {float(np.max(row_sums)):.3g} "
        f"(bound at worst row {worst}: {float(bound[worst]):.3g})",
    )


def jacobian_row_sum_bound(p: FloatArray) -> FloatArray:
    """Rounding bound on each Jacobian row sum ``|sum_j J[i, j]|``, same shape as ``p`` (..., K).

    Row i sums to ``p_i (1 - sum p)`` in exact arithmetic: at most ``2 (K + 1) eps p_i`` for
    correctly computed probabilities (see :func:`probs_sum_to_one`), and rounding the K products
    and their sum adds as much again: ``4 (K + 1) eps p_i``.
    """
    k = p.shape[-1]
    out: FloatArray = 4 * (k + 1) * EPS * p
    return out


def jacobian_properties(probs: FloatArray) -> Check:
    """Each softmax Jacobian ``diag(p) - p p^T`` is exactly symmetric and its rows sum to 0.

    Symmetry is exact (``p_i p_j == p_j p_i``); row sums must be within
    :func:`jacobian_row_sum_bound`. ``probs`` has shape (N, K). At most :data:`_CHUNK_ELEMENTS`
    Jacobian entries are formed (the first samples, as many as fit): the property is one of the
    construction, and forming every K x K matrix of a large batch would cost more than the
    gradients themselves; the detail says how many samples were checked.
    """
    n, k = probs.shape
    if k * k > _CHUNK_ELEMENTS:  # one K x K matrix is too many: rows of the first sample's
        return _jacobian_rows(probs[0], n)
    count = min(n, max(1, _CHUNK_ELEMENTS // (k * k)))
    p = probs[:count]
    jac = softmax_jacobian(p)
    asym = float(np.max(np.abs(jac - np.swapaxes(jac, -1, -2))))
    row_sums = np.abs(np.sum(jac, axis=-1))  # (count, K)
    excess = float(np.max(row_sums - jacobian_row_sum_bound(p)))
    ok = asym == 0.0 and excess <= 0.0
    which = "" if count == n else f" (the first {count} of {n} samples)"
    return Check(
        "jacobian_symmetric_rows_sum_to_zero",
        ok,
        f"max |J - J^T| = {asym:.3g}, max |row sum| = {float(np.max(row_sums)):.3g}{which}",
    )


def _jacobian_rows(p: FloatArray, n: int) -> Check:
    """:func:`jacobian_properties` for a K too large for one K x K matrix: the rows of the
    first sample's m most probable classes (m = 2^20 / K), each whole (K entries, so its sum
    is checked exactly as in the full matrix), and symmetry on the m x m block they share."""
    k = p.shape[0]
    m = max(1, _CHUNK_ELEMENTS // k)
    rows = np.sort(np.argpartition(-p, m - 1)[:m])
    jac = softmax_jacobian(p, rows)  # (m, K)
    block = jac[:, rows]
    asym = float(np.max(np.abs(block - block.T)))
    row_sums = np.abs(np.sum(jac, axis=-1))
    excess = float(np.max(row_sums - jacobian_row_sum_bound(p)[rows]))
    return Check(
        "jacobian_symmetric_rows_sum_to_zero",
        asym == 0.0 and excess <= 0.0,
        f"max |J - J^T| = {asym:.3g}, max |row sum| = {float(np.max(row_sums)):.3g} (rows of "
        f"the {m} most probable of {k} classes of the first of {n} samples: one {k} x {k} "
        "Jacobian would hold more than 2^20 values)",
    )


def shift_invariance(problem: CrossEntropyProblem, loss: float | FloatArray) -> Check:
    """``loss(z + c) == loss(z)`` for ``c = 1024`` added to every logit, up to rounding.

    Holds without a softcap or z-loss (both see the logits' absolute level). Rounding ``z + c``
    moves each logit by at most ``eps (|z| + c) / 2``, which moves a sample's loss by at most
    ``2 sum(q)`` times that (the gradient's 1-norm is at most ``2 sum(q)``); evaluating the shifted
    loss adds a few ``eps (|z| + c) sum(q)``. Bound per sample: ``8 eps (max|z| + c) sum(q) + 4 eps
    |l|``, scaled like the loss by the reduction.
    """
    shifted = replace(problem, logits=problem.logits + SHIFT)
    other = np.asarray(reduce_loss(shifted))
    base = np.asarray(loss, dtype=np.float64)
    diff = float(np.max(np.abs(other - base)))
    q_sum = np.sum(weighted_targets(problem), axis=-1)  # (N,)
    finite = np.isfinite(problem.logits)
    zmax = float(np.max(np.abs(problem.logits[finite])))
    per_sample = 8 * EPS * (zmax + SHIFT) * q_sum
    if problem.reduction == "none":
        bound_arr = per_sample
    else:
        alpha, _ = reduction_scales(problem)
        bound_arr = np.asarray(np.sum(per_sample * np.where(alpha > 0, alpha, 0.0)))
    bound = float(np.max(bound_arr + 4 * EPS * np.abs(base)))
    return Check(
        "shift_invariance",
        diff <= bound,
        f"|loss(z + {SHIFT:g}) - loss(z)| = {diff:.3g} (bound {bound:.3g})",
    )


def binary_equivalence(problem: CrossEntropyProblem) -> Check:
    """For K = 2, softmax cross-entropy equals sigmoid cross-entropy on ``x = z'_1 - z'_0``.

    With weighted target ``q`` and ``y = q_1 / sum(q)``: ``ce = sum(q) * (y softplus(-x) +
    (1 - y) softplus(x))``, since ``p_1 = sigmoid(x)``. Both sides are accurate to a few ulps;
    rounding ``x`` moves the loss by at most ``sum(q) eps (|z'_0| + |z'_1|)``. Bound:
    ``8 eps (|ce| + sum(q) (|z'_0| + |z'_1|))`` per sample.
    """
    ce, _ = sample_terms(problem)
    z = capped(problem, problem.logits)
    q = weighted_targets(problem)
    total = np.sum(q, axis=-1)
    x = z[:, 1] - z[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(total > 0, q[:, 1] / total, 0.0)
        pos = np.where(y > 0, y * softplus(-x), 0.0)
        neg = np.where(y < 1, (1.0 - y) * softplus(x), 0.0)
        binary = total * (pos + neg)
        diff = np.where(ce == binary, 0.0, np.abs(ce - binary))
        bound = 8 * EPS * (np.abs(ce) + total * (np.abs(z[:, 0]) + np.abs(z[:, 1])))
    ok = bool(np.all(diff <= bound))
    worst = float(np.max(diff))
    return Check(
        "binary_equivalence",
        ok,
        f"max |softmax CE - sigmoid CE on z1 - z0| = {worst:.3g} (K = 2)",
    )


def label_flip_symmetry(problem: SigmoidProblem) -> Check:
    """Binary cross-entropy is unchanged by ``x -> -x, y -> 1 - y`` (without pos_weight).

    Both sides evaluate the same softplus terms in swapped roles, so they must agree exactly.
    """
    flipped = replace(problem, logits=-problem.logits, targets=1.0 - problem.targets)
    a = element_losses(problem)
    b = element_losses(flipped)
    diff = float(np.max(np.abs(a - b)))
    return Check(
        "label_flip_symmetry",
        diff == 0.0,
        f"max |l(x, y) - l(-x, 1 - y)| = {diff:.3g}",
    )


def expectations(
    expect: Expect, loss: float | FloatArray, probs: FloatArray, grad: FloatArray | None
) -> list[Check]:
    """One check per expected value: ``|computed - expected| <= atol + rtol |expected|``.

    Arrays are in the logits' own shape; ``grad`` is the reference gradient.
    """
    out = []
    pairs: list[tuple[str, object, object]] = [
        ("loss", expect.loss, loss),
        ("probs", expect.probs, probs),
        ("grad", expect.grad, grad),
    ]
    for name, wanted, got in pairs:
        if wanted is None:
            continue
        if got is None:
            out.append(Check(f"expect.{name}", False, "no reference value was computed"))
            continue
        w = np.asarray(wanted, dtype=np.float64)
        g = np.asarray(got, dtype=np.float64)
        # Equal values pass, nan and infinities included (a spec may expect `loss: .nan`).
        same = (g == w) | (np.isnan(g) & np.isnan(w))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(g - w))
        allowed = expect.atol + expect.rtol * np.abs(w)
        bad = np.isnan(diff) | (diff > allowed)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.isnan(diff), np.inf, diff / allowed)
        i = np.unravel_index(int(np.argmax(ratio)), w.shape) if w.ndim else ()
        where = "" if not w.ndim else "[" + ", ".join(str(int(x)) for x in i) + "] "
        detail = (
            f"{where}{float(g[i]):.10g} vs expected {float(w[i]):.10g}: "
            f"|Δ| = {float(diff[i]):.3g}, allowed {float(allowed[i]):.3g}"
        )
        out.append(Check(f"expect.{name}", not bool(np.any(bad)), detail))
    return out
