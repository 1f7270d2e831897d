"""Implementations for the trust corpus (tests/trust_cases.py, benchmarks/trust.py).

Softmax cross-entropy with integer labels only, ``reduction`` mean (divides by N), sum or none
(row n of the gradient is dl_n/dz_n). -inf logits outside the label get probability 0 and
gradient 0. Each computes in the dtype of the logits it receives unless its docstring says
otherwise.

CORRECT (xentcheck must pass them): buffers, inplace, float32_inside, log_softmax_route,
torch_f_cross_entropy.
WRONG (xentcheck must catch them): zero_grad, scaled_up, scaled_down, true_class_rounded_first,
loss_off.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _reduce(per: Any, grad: Any, reduction: str) -> tuple[Any, Any]:
    """The loss and gradient of the requested reduction from per-sample values (in their dtype)."""
    n = per.shape[0]
    if reduction == "none":
        return per, grad
    if reduction == "sum":
        return per.sum(dtype=per.dtype), grad
    return per.mean(dtype=per.dtype), grad / grad.dtype.type(n)


def _log_softmax_ce(logits: Any, labels: Any, reduction: str) -> tuple[Any, Any]:
    """The log-softmax formulation in the logits' own dtype (shared by the correct variants)."""
    rows = np.arange(logits.shape[0])
    m = logits.max(axis=1, keepdims=True)
    shifted = logits - m
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    per = -logp[rows, labels]
    grad = np.exp(logp)
    grad[rows, labels] -= 1
    return _reduce(per, grad, reduction)


def _step(logits: Any) -> float:
    """The relative error planted by scaled_up / scaled_down: 1e-3, or 1e-2 in float16 (1e-3 is
    about one float16 ulp, indistinguishable from rounding)."""
    return 1e-2 if logits.dtype == np.float16 else 1e-3


# ---------------------------------------------------------------- correct implementations


def buffers(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Every intermediate written into preallocated real float buffers through ufunc out=."""
    n, k = logits.shape
    real = np.finfo(logits.dtype).dtype  # the float type of the logits (float64 for complex128)
    rows = np.arange(n)
    m = np.empty((n, 1), dtype=real)
    np.max(logits, axis=1, keepdims=True, out=m)  # complex logits: raises (no complex->real cast)
    e = np.empty((n, k), dtype=real)
    np.subtract(logits, m, out=e)
    np.exp(e, out=e)
    s = np.zeros((n, 1), dtype=real)
    np.sum(e, axis=1, keepdims=True, out=s)
    grad = np.zeros((n, k), dtype=real)
    np.divide(e, s, out=grad)
    grad[rows, labels] -= 1
    per = np.empty(n, dtype=real)
    np.log(s[:, 0], out=per)
    np.subtract(per, logits[rows, labels] - m[:, 0], out=per)
    return _reduce(per, grad, reduction)


def real_buffers(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Copies the logits into a float64 buffer (np.zeros(shape)) and computes there: complex
    logits are *accepted*, their imaginary part silently dropped (NumPy's ComplexWarning)."""
    n, k = logits.shape
    rows = np.arange(n)
    z = np.zeros((n, k))
    z[...] = logits
    m = z.max(axis=1, keepdims=True)
    z -= m
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    # logsumexp from the real buffer, the label's logit from the argument: with complex logits
    # the loss comes back complex, but carries only part of the imaginary perturbation
    per = (m[:, 0] + np.log(s[:, 0])) - logits[rows, labels]
    grad = e / s
    grad[rows, labels] -= 1.0
    return _reduce(per, grad, reduction)


def inplace(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Max-shift, exp, normalization and the gradient all done in place on one copy."""
    rows = np.arange(logits.shape[0])
    z = logits.copy()
    m = z.max(axis=1, keepdims=True)
    z -= m
    shifted_label = z[rows, labels].copy()
    np.exp(z, out=z)
    s = z.sum(axis=1, keepdims=True)
    per = np.log(s[:, 0]) - shifted_label
    z /= s
    z[rows, labels] -= 1
    return _reduce(per, z, reduction)


def float32_inside(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """float16 input: computed in float32, loss and gradient rounded to float16 once at the end."""
    if logits.dtype != np.float16:
        return _log_softmax_ce(logits, labels, reduction)
    value, grad = _log_softmax_ce(logits.astype(np.float32), labels, reduction)
    return np.asarray(value).astype(np.float16), grad.astype(np.float16)


def log_softmax_route(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """logp = (z - m) - log(sum exp(z - m)); loss = -logp[label]; grad = exp(logp) - onehot."""
    return _log_softmax_ce(logits, labels, reduction)


def torch_f_cross_entropy(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """torch.nn.functional.cross_entropy with autograd (none: the gradient of the summed loss)."""
    import torch

    z = torch.from_numpy(logits).requires_grad_(True)
    out = torch.nn.functional.cross_entropy(z, torch.from_numpy(labels), reduction=reduction)
    (out.sum() if reduction == "none" else out).backward()  # type: ignore[no-untyped-call]
    assert z.grad is not None
    return out.detach().numpy(), z.grad.numpy()


# ---------------------------------------------------------------- wrong implementations


def zero_grad(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Correct loss, gradient all zeros."""
    value, grad = _log_softmax_ce(logits, labels, reduction)
    return value, np.zeros_like(grad)


def scaled_up(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Correct loss, gradient times 1 + r (r = 1e-3; 1e-2 in float16)."""
    value, grad = _log_softmax_ce(logits, labels, reduction)
    return value, grad * grad.dtype.type(1 + _step(logits))


def scaled_down(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Correct loss, gradient times 1 - r (r = 1e-3; 1e-2 in float16)."""
    value, grad = _log_softmax_ce(logits, labels, reduction)
    return value, grad * grad.dtype.type(1 - _step(logits))


def true_class_rounded_first(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Liger-Kernel #1268: p in float32, p at the label rounded to the input dtype before - 1."""
    dtype = logits.dtype
    rows = np.arange(logits.shape[0])
    work = np.promote_types(dtype, np.float32)  # float32 for float16 input, else the input's
    z = logits.astype(work)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    p = e / s  # probabilities in float32 (or float64)
    per = np.log(s[:, 0]) - shifted[rows, labels]
    grad = p.copy()
    # The bug: p_y is stored in the input dtype first, and 1 is subtracted from that.
    grad[rows, labels] = p[rows, labels].astype(dtype).astype(work) - work.type(1)
    value, grad = _reduce(per, grad, reduction)
    return np.asarray(value).astype(dtype), grad.astype(dtype)


def loss_off(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """Loss times 1 + 1e-6, gradient correct."""
    value, grad = _log_softmax_ce(logits, labels, reduction)
    return value * (1 + 1e-6), grad


def loss_zero_at_large_logits(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    """PyTorch 0.4.1's log_softmax bug (#11752) in spirit: the loss collapses to 0 for logits
    around 1e4 (the gradient stays right), so only the loss comparison can catch it."""
    value, grad = _log_softmax_ce(logits, labels, reduction)
    return value * 0.0, grad


def strict_dtypes(logits, *, labels, reduction, loss="softmax_cross_entropy", weight=None):  # type: ignore[no-untyped-def]
    """Refuses any floating-point argument whose dtype differs from the logits' (as typed
    kernels do), then computes the weighted loss in float64."""
    if weight is not None and weight.dtype != logits.dtype:
        raise TypeError(f"weight is {weight.dtype}, logits are {logits.dtype}")
    if labels.dtype != np.int64:
        raise TypeError(f"labels are {labels.dtype}, expected int64")
    z = logits.astype(np.float64)
    w = np.ones(z.shape[1]) if weight is None else weight.astype(np.float64)
    rows = np.arange(z.shape[0])
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    wy = w[labels]
    per = -wy * logp[rows, labels]
    grad = np.exp(logp) * wy[:, None]
    grad[rows, labels] -= wy
    if reduction == "none":
        return per, grad
    if reduction == "sum":
        return per.sum(), grad
    return per.sum() / wy.sum(), grad / wy.sum()


def softmax_only(logits, *, labels=None, targets=None, reduction):  # type: ignore[no-untyped-def]
    """A softmax cross-entropy function with no 'loss' parameter."""
    raise AssertionError("must not be called on a sigmoid spec")
