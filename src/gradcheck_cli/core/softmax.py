"""Numerically stable softmax, log-softmax and log-sum-exp, and the softmax Jacobian.

All three forward functions shift by the row maximum ``m = max_k z_k`` before exponentiating:

    logsumexp(z) = m + log(sum_k exp(z_k - m))

Every exponent is then <= 0, so ``exp`` cannot overflow, and the largest term is exactly 1, so the
sum is in [1, K] and its logarithm is never log(0). This is exact algebra (softmax is invariant to
adding a constant to every logit), so nothing is lost by the shift; it is what keeps logits such as
(1000, -1000, 0) finite.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def _shifted(z: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Return ``(z - m, m)`` with ``m`` the max over the last axis (kept as a length-1 axis).

    Parameters
    ----------
    z : array of shape (..., K), K >= 1, finite.

    Returns
    -------
    shifted : array of shape (..., K), every entry <= 0 and at least one entry == 0 per row.
    m : array of shape (..., 1).
    """
    m = np.max(z, axis=-1, keepdims=True)
    return z - m, m


def logsumexp(z: FloatArray) -> FloatArray:
    """``log(sum_k exp(z_k))`` over the last axis, max-shifted.

    Parameters
    ----------
    z : array of shape (..., K), finite.

    Returns
    -------
    array of shape (...).
    """
    shifted, m = _shifted(z)
    out: FloatArray = (m + np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True)))[..., 0]
    return out


def log_softmax(z: FloatArray) -> FloatArray:
    """``log p_k = (z_k - m) - log(sum_j exp(z_j - m))`` over the last axis.

    Computed from the shifted logits rather than as ``log(softmax(z))``, so it stays finite (and
    accurate) where ``p_k`` underflows to 0: log_softmax((0, -800, 1))[1] is about -801.31.

    Parameters
    ----------
    z : array of shape (..., K), finite.

    Returns
    -------
    array of shape (..., K), every entry <= 0.
    """
    shifted, _ = _shifted(z)
    out: FloatArray = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
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
    shifted, _ = _shifted(z)
    e = np.exp(shifted)
    out: FloatArray = e / np.sum(e, axis=-1, keepdims=True)
    return out


def softmax_jacobian(p: FloatArray) -> FloatArray:
    """The softmax Jacobian ``J[i, j] = dp_i/dz_j = p_i (delta_ij - p_j) = diag(p) - p p^T``.

    Diagonal entries are ``p_i (1 - p_i)``, off-diagonal entries ``-p_i p_j``. The matrix is
    symmetric (exactly, since ``p_i * p_j == p_j * p_i`` in floating point) and each row sums to
    ``p_i (1 - sum_j p_j) = 0`` up to rounding.

    Parameters
    ----------
    p : array of shape (..., K), probabilities.

    Returns
    -------
    array of shape (..., K, K).
    """
    outer = -p[..., :, None] * p[..., None, :]
    k = p.shape[-1]
    diag = np.arange(k)
    outer[..., diag, diag] = p * (1.0 - p)
    return outer
