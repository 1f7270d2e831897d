"""A module beside the implementation file: --impl file.py:function may import it."""

import numpy as np


def softmax_ce(logits, labels):  # type: ignore[no-untyped-def]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    grad = np.exp(logp)
    grad[rows, labels] -= 1.0
    return -logp[rows, labels], grad
