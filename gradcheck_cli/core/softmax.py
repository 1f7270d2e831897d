"""Numerically stable softmax, log-softmax and log-sum-exp, and the softmax Jacobian.

All forward functions shift by the row maximum ``m = max_k z_k = z_{j*}`` before exponentiating:

    logsumexp(z) = m + log(sum_k exp(z_k - m)) = m + log1p(sum_{j != j*} exp(z_j - m))

Every exponent is then <= 0, so ``exp`` cannot overflow, and the largest term is exactly 1, so the
sum is in [1, K] and its logarithm is never log(0). This is exact algebra (softmax is invariant to
adding a constant to every logit), so nothing is lost by the shift; it is what keeps logits such as
(1000, -1000, 0) finite. Writing the logarithm as ``log1p`` of the other terms keeps full relative
accuracy when those terms are tiny (a near-certain prediction), where ``log(1 + tiny)`` would
round the tiny part away.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
#: Real or complex (the complex-step method passes complex logits through the forward pass).
AnyArray = NDArray[Any]


def _shift_terms(
    z: AnyArray, scratch: AnyArray | None = None
) -> tuple[AnyArray, AnyArray, AnyArray]:
    """Max-shift the logits and sum the exponentials other than the maximum's.

    Complex-safe (for the complex-step method): ``j*`` is the argmax of the real parts, and the
    shift ``m = z_{j*}`` keeps its imaginary part, so ``z_{j*} - m`` is exactly 0 and
    ``-log p_c = (m - z_c) + log1p(rest)`` is an analytic function of every logit in which no
    imaginary parts cancel (shifting by the real part only would make the imaginary part of
    ``-log p_{j*}`` a difference of two nearly equal terms, losing tiny derivatives such as the
    -8.5e-18 of a near one-hot row). No ``abs``, no comparison of complex values.

    Parameters
    ----------
    z : array of shape (..., K), K >= 1, real or complex; real parts finite or -inf, each row with
        a finite entry.

    Returns
    -------
    shifted : ``z - m``, shape (..., K); real parts <= 0, the maximum's exactly 0.
    m : the row maxima ``z_{j*}``, shape (..., 1).
    rest : ``sum_{j != j*} exp(z_j - m)``, shape (..., 1); so that
        ``sum_j exp(z_j - m) = 1 + rest`` and ``log`` of it is ``log1p(rest)``.

    With ``scratch`` (an array shaped and typed like ``z``) nothing is allocated at ``z``'s
    size: ``z`` itself is overwritten with ``z - m`` and the exponentials go to ``scratch``
    (the finite-difference method reuses one cache-sized workspace for every block).
    """
    top = np.argmax(z.real, axis=-1)[..., None]
    m = np.take_along_axis(z, top, axis=-1)
    if scratch is None:
        shifted = z - m
        e = np.exp(shifted)
    else:
        shifted = np.subtract(z, m, out=z)
        e = np.exp(shifted, out=scratch)
    np.put_along_axis(e, top, 0.0, axis=-1)
    rest = np.sum(e, axis=-1, keepdims=True)
    return shifted, m, rest


def logsumexp(z: AnyArray) -> AnyArray:
    """``log(sum_k exp(z_k)) = m + log1p(sum_{j != j*} exp(z_j - m))`` over the last axis.

    Parameters
    ----------
    z : array of shape (..., K), finite.

    Returns
    -------
    array of shape (...).
    """
    _, m, rest = _shift_terms(z)
    out: FloatArray = (m + np.log1p(rest))[..., 0]
    return out


def log_softmax(z: FloatArray) -> FloatArray:
    """``log p_k = (z_k - m) - log1p(sum_{j != j*} exp(z_j - m))`` over the last axis.

    Computed from the shifted logits rather than as ``log(softmax(z))``, so it stays finite (and
    accurate) where ``p_k`` underflows to 0: log_softmax((0, -800, 1))[1] is about -801.31. Both
    terms are <= 0, so their difference involves no cancellation: every entry has a relative error
    of a few ulps, including the tiny ``log p`` of a near-certain class.

    Parameters
    ----------
    z : array of shape (..., K), finite.

    Returns
    -------
    array of shape (..., K), every entry <= 0.
    """
    shifted, _, rest = _shift_terms(z)
    out: FloatArray = shifted - np.log1p(rest)
    return out


def softmax(z: FloatArray) -> FloatArray:
    """``p_k = exp(z_k - m) / sum_j exp(z_j - m)`` over the last axis.

    Each ``p_k`` is the quotient of one correctly rounded exponential and a sum in [1, K], so it
    carries a relative error of a few ulps, tiny probabilities included (until they underflow).

    Parameters
    ----------
    z : array of shape (..., K), finite.

    Returns
    -------
    array of shape (..., K), entries in [0, 1], each row summing to 1 up to rounding.
    """
    m = np.max(z.real, axis=-1, keepdims=True)
    e = np.exp(z - m)
    out: FloatArray = e / np.sum(e, axis=-1, keepdims=True)
    return out


def softmax_terms(
    z: AnyArray, scratch: AnyArray | None = None
) -> tuple[AnyArray, AnyArray, AnyArray]:
    """``(z - m, m, log1p(rest))``: everything the losses need from one pass over the logits.

    ``-log p_k = log1p(rest) - (z_k - m)`` (both parts non-negative) and
    ``logsumexp(z) = m + log1p(rest)``; shapes (..., K), (..., 1), (..., 1). With ``scratch``
    ``z`` is overwritten (see :func:`_shift_terms`).
    """
    shifted, m, rest = _shift_terms(z, scratch)
    return shifted, m, np.log1p(rest)


def one_minus(p: FloatArray) -> FloatArray:
    """``1 - p_i`` as ``sum_{j != i} p_j`` over the last axis, without cancellation.

    When ``p_i`` is close to 1, ``1 - p_i`` loses its relative accuracy (for logits (40, 0, 0) it
    rounds to 0 instead of 8.4967e-18). Every element but a row's largest is at most half the
    row's sum ``S``, so ``S - p_i`` keeps a few ulps of relative accuracy for it; the largest one
    gets the sum of the others, added up with it left out. Works for any non-negative rows
    (the weighted targets too), in about four passes.

    Parameters
    ----------
    p : array of shape (..., K), non-negative.

    Returns
    -------
    array of shape (..., K).
    """
    total = np.sum(p, axis=-1, keepdims=True)
    out: FloatArray = total - p
    top = np.argmax(p, axis=-1)[..., None]
    others = p.copy()
    np.put_along_axis(others, top, 0.0, axis=-1)
    np.put_along_axis(out, top, np.sum(others, axis=-1, keepdims=True), axis=-1)
    return out


def softmax_jacobian(p: FloatArray, rows: NDArray[np.intp] | None = None) -> FloatArray:
    """The softmax Jacobian ``J[i, j] = dp_i/dz_j = p_i (delta_ij - p_j) = diag(p) - p p^T``.

    Diagonal entries are ``p_i (1 - p_i)``, with ``1 - p_i`` computed as the sum of the other
    probabilities (:func:`one_minus`) so they keep their relative accuracy when ``p_i`` is close
    to 1; off-diagonal entries are ``-p_i p_j``. The matrix is symmetric (exactly, since
    ``p_i * p_j == p_j * p_i`` in floating point) and each row sums to ``p_i (1 - sum_j p_j) = 0``
    up to rounding.

    Parameters
    ----------
    p : array of shape (..., K), probabilities.
    rows : optional class indices (m,): only those rows of J, whole (a K too large for K x K).

    Returns
    -------
    array of shape (..., K, K), or (..., m, K) with ``rows``.
    """
    k = p.shape[-1]
    picked = np.arange(k) if rows is None else rows
    outer = -p[..., picked, None] * p[..., None, :]
    outer[..., np.arange(picked.size), picked] = (p * one_minus(p))[..., picked]
    return outer
