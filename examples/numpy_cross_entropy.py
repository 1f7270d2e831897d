"""A complete NumPy implementation of softmax cross-entropy under xentcheck's --impl protocol.

    xentcheck run specs/ --impl examples/numpy_cross_entropy.py:cross_entropy

It supports class weights, ignore_index, label smoothing and probability targets (with PyTorch's
normalizers), which covers the bundled softmax specs except softcap, z-loss, sigmoid and layers:
for those the spec sets an option this function does not take, and xentcheck says so.
"""

from __future__ import annotations

import numpy as np


def cross_entropy(
    logits: np.ndarray,
    *,
    reduction: str,
    loss: str = "softmax_cross_entropy",
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (loss, dloss/dlogits) for logits of shape (N, K)."""
    if loss != "softmax_cross_entropy":
        raise ValueError(f"only softmax_cross_entropy is implemented, not {loss}")
    n, k = logits.shape
    w = np.ones(k) if weight is None else weight
    m = logits.max(axis=1, keepdims=True)
    shifted = logits - m
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - log_norm  # log-softmax, (N, K)
    p = np.exp(logp)
    a = label_smoothing
    if labels is not None:
        valid = np.ones(n, bool) if ignore_index is None else labels != ignore_index
        q = np.zeros((n, k))
        rows = np.flatnonzero(valid)
        q[rows] = (a / k) * w
        q[rows, labels[rows]] += (1 - a) * w[labels[rows]]
        norm = w[labels[rows]].sum()
    else:
        q = w * ((1 - a) * targets + a / k)
        norm = float(n)
    per_sample = -(q * np.where(q > 0, logp, 0.0)).sum(axis=1)
    grad = p * q.sum(axis=1, keepdims=True) - q
    if reduction == "none":
        return per_sample, grad
    if reduction == "sum":
        return np.asarray(per_sample.sum()), grad
    if norm == 0:  # every sample ignored: the mean is 0/0, as in PyTorch; nothing to learn
        return np.asarray(np.nan), np.zeros_like(grad)
    return np.asarray(per_sample.sum() / norm), grad / norm
