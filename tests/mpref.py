"""High-precision references (mpmath, 50 significant digits) for the numeric tests.

Every function takes plain float64 inputs, computes in 50-digit arithmetic from those exact binary
values, and returns float64 results rounded once at the end, so a float64 implementation can be
judged against the correctly rounded answer.
"""

from __future__ import annotations

import mpmath
import numpy as np

mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
DPS = 50


def _row_probs(z: np.ndarray) -> list[mpmath.mpf]:
    with mpmath.workdps(DPS):
        xs = [mpmath.mpf(float(v)) for v in z]
        m = max(xs)
        es = [mpmath.exp(x - m) for x in xs]
        s = mpmath.fsum(es)
        return [e / s for e in es]


def softmax(z: np.ndarray) -> np.ndarray:
    """Reference softmax of (N, K) or (K,) logits."""
    z2 = np.atleast_2d(z)
    out = np.array([[float(p) for p in _row_probs(row)] for row in z2])
    return out.reshape(np.shape(z))


def row_loss(z: np.ndarray, target: np.ndarray) -> mpmath.mpf:
    """-sum_c t_c log p_c for one row, in 50-digit arithmetic (t may be one-hot)."""
    with mpmath.workdps(DPS):
        xs = [mpmath.mpf(float(v)) for v in z]
        m = max(xs)
        lse = m + mpmath.log(mpmath.fsum(mpmath.exp(x - m) for x in xs))
        return -mpmath.fsum(
            mpmath.mpf(float(t)) * (x - lse) for t, x in zip(target, xs, strict=True) if t != 0
        )


def loss(z: np.ndarray, targets: np.ndarray, reduction: str) -> float | np.ndarray:
    """Reference reduced loss for (N, K) logits and (N, K) dense targets."""
    with mpmath.workdps(DPS):
        rows = [row_loss(zr, tr) for zr, tr in zip(z, targets, strict=True)]
        if reduction == "none":
            return np.array([float(r) for r in rows])
        total = mpmath.fsum(rows)
        return float(total / len(rows)) if reduction == "mean" else float(total)


def grad(z: np.ndarray, targets: np.ndarray, reduction: str) -> np.ndarray:
    """Reference gradient ``w_n (p_n sum(t_n) - t_n)`` for (N, K) logits and dense targets."""
    n = len(z)
    out = np.empty_like(np.asarray(z, dtype=np.float64))
    with mpmath.workdps(DPS):
        w = mpmath.mpf(1) / n if reduction == "mean" else mpmath.mpf(1)
        for i, (zr, tr) in enumerate(zip(z, targets, strict=True)):
            p = _row_probs(zr)
            ts = [mpmath.mpf(float(t)) for t in tr]
            st = mpmath.fsum(ts)
            out[i] = [float(w * (pk * st - tk)) for pk, tk in zip(p, ts, strict=True)]
    return out


def onehot(labels: np.ndarray, k: int) -> np.ndarray:
    t = np.zeros((len(labels), k))
    t[np.arange(len(labels)), labels] = 1.0
    return t
