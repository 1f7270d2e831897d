"""An implementation that imports a module sitting beside it, and one that raises inside."""

from helpers import softmax_ce  # type: ignore[import-not-found]


def cross_entropy(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    per, grad = softmax_ce(logits, labels)
    n = len(labels)
    if reduction == "none":
        return per, grad
    if reduction == "sum":
        return per.sum(), grad
    return per.mean(), grad / n


def _inner(logits):  # type: ignore[no-untyped-def]
    raise ValueError("bad tile size 7")


def broken(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    return _inner(logits)
