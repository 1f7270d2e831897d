"""Implementations for the --impl tests: correct ones, and each way one can be broken."""

from __future__ import annotations

from typing import Any

import numpy as np


def _softmax_ce(logits: np.ndarray, labels: np.ndarray, reduction: str) -> tuple[Any, Any]:
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    n = len(labels)
    per = -logp[np.arange(n), labels]
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1.0
    if reduction == "none":
        return per, grad
    if reduction == "sum":
        return per.sum(), grad
    return per.mean(), grad / n


def correct(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    return _softmax_ce(logits, labels, reduction)


def real_only(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Refuses complex input, as most kernels do: the self-check falls back to differences."""
    if np.iscomplexobj(logits):
        raise TypeError("real logits only")
    return _softmax_ce(logits, labels, reduction)


def complex_safe(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Accepts complex logits (shift by the real maximum): the self-check uses a complex step."""
    m = logits.real.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    n = len(labels)
    per = lse[:, 0] - logits[np.arange(n), labels]
    grad = np.exp(logits.real - lse.real)
    grad[np.arange(n), labels] -= 1.0
    return per.mean(), grad / n


PLANTED = {"element": 1e-7, "loss": 1e-9}


def planted_grad(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """A relative error of PLANTED['element'] in one gradient element."""
    value, grad = _softmax_ce(logits, labels, reduction)
    grad[0, 0] *= 1.0 + PLANTED["element"]
    return value, grad


def planted_loss(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    value, grad = _softmax_ce(logits, labels, reduction)
    return value * (1.0 + PLANTED["loss"]), grad


def inconsistent(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Forward and backward disagree: the loss is scaled by 2, the gradient is not."""
    value, grad = _softmax_ce(logits, labels, reduction)
    return 2 * value, grad


def raises(logits, **options):  # type: ignore[no-untyped-def]
    raise RuntimeError("kernel launch failed")


def wrong_shape(logits, **options):  # type: ignore[no-untyped-def]
    return 0.5, np.zeros(logits.shape[1])


def not_a_tuple(logits, **options):  # type: ignore[no-untyped-def]
    return 0.5


def non_finite(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    value, grad = _softmax_ce(logits, labels, reduction)
    grad[0, 1] = np.nan
    return value, grad


def strings(logits, **options):  # type: ignore[no-untyped-def]
    return "0.5", [["a"]]


def no_options(logits, labels):  # type: ignore[no-untyped-def]
    return _softmax_ce(logits, labels, "mean")


def not_divided_by_n(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Bug: the gradient of the mean is not divided by N."""
    value, grad = _softmax_ce(logits, labels, "sum")
    if reduction == "mean":
        return value / len(labels), grad
    return _softmax_ce(logits, labels, reduction)


def labels_off_by_one(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Bug: labels read one position off (an offset view)."""
    return _softmax_ce(logits, (labels + 1) % logits.shape[1], reduction)


def one_column_off(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Bug: class 2 is special-cased wrongly."""
    value, grad = _softmax_ce(logits, labels, reduction)
    grad[:, 2] *= 1.01
    return value, grad


def float32_arithmetic(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Computes in float32 whatever it is given."""
    value, grad = _softmax_ce(logits.astype(np.float32), labels, reduction)
    return np.float64(value), grad.astype(np.float64)


def nan_gradient(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    value, grad = _softmax_ce(logits, labels, reduction)
    grad[1, 3] = np.nan
    return value, grad


def ignores_smoothing(  # type: ignore[no-untyped-def]
    logits, *, labels, reduction, loss="softmax_cross_entropy", label_smoothing=0.0
):
    """Bug: accepts label_smoothing and ignores it."""
    return _softmax_ce(logits, labels, reduction)


def wrong_last_row(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """The last row's gradient off by 1e-3 (the loss is right)."""
    value, grad = _softmax_ce(logits, labels, reduction)
    grad[-1] += 1e-3
    return value, grad


def small_error(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Correct but for 2**-40 (about 9e-13, inside every float64 tolerance) on grad[0, 0]."""
    value, grad = _softmax_ce(logits, labels, reduction)
    grad[0, 0] += 2.0**-40
    return value, grad


def doubled_error(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """small_error's error exactly doubled (2**-39), still inside the tolerance."""
    value, grad = _softmax_ce(logits, labels, reduction)
    grad[0, 0] += 2.0**-39
    return value, grad
