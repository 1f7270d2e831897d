"""A softmax cross-entropy that reads the vocabulary in chunks with an online logsumexp (as
flash-attention style and chunked-vocabulary kernels do), for ``xentcheck run --impl
examples/online_softmax_ce.py:online_ce --vocab-chunks 1,3,8``.

Per row, chunk by chunk: the running maximum m and the running sum s of exp(z - m); when a chunk
raises the maximum to m', s is rescaled by exp(m - m') before the chunk's terms are added. Then
lse = m + log s, loss = lse - z_y, gradient p - onehot with p = exp(z - lse). Computed in
float64 (NumPy protocol).

Planted bugs: ``bug_no_rescale`` (the running sum is not rescaled when the maximum grows: right
whenever the first chunk holds the maximum, so one chunk always passes) and ``bug_drop_tail``
(the last, shorter chunk is skipped when the chunk count does not divide K).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _lse(z: np.ndarray, chunks: int, bug: str | None) -> np.ndarray:
    n, k = z.shape
    width = -(-k // max(1, chunks))
    m = np.full(n, -np.inf)
    s = np.zeros(n)
    for start in range(0, k, width):
        part = z[:, start : start + width]
        if bug == "drop_tail" and part.shape[1] < width:
            break
        top = np.maximum(m, part.max(axis=1))
        with np.errstate(invalid="ignore", over="ignore"):
            scale = np.where(np.isneginf(m), 0.0, np.exp(m - top))
        s = s if bug == "no_rescale" else s * scale
        s = s + np.exp(part - top[:, None]).sum(axis=1)
        m = top
    return m + np.log(s)


def _make(bug: str | None) -> Any:
    def online_ce(logits, *, labels, reduction="mean", vocab_chunks=1):  # type: ignore[no-untyped-def]
        z = np.asarray(logits, dtype=np.float64)
        n = z.shape[0]
        lse = _lse(z, int(vocab_chunks), bug)
        per = lse - z[np.arange(n), labels]
        grad = np.exp(z - lse[:, None])
        grad[np.arange(n), labels] -= 1.0
        if reduction == "none":
            return per, grad
        if reduction == "sum":
            return per.sum(), grad
        return per.mean(), grad / n

    online_ce.__name__ = bug or "online_ce"
    return online_ce


online_ce = _make(None)
bug_no_rescale = _make("no_rescale")
bug_drop_tail = _make("drop_tail")
