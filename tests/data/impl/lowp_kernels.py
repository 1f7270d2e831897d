"""Low-precision kernels for the bfloat16/float16 checks: an accurate one (float32 arithmetic
inside, one rounding at the end, as Liger-Kernel's fix of #1268 does), the #1268 bug itself (the
softmax rounded to the low dtype *before* 1 is subtracted at the label), and a zero gradient;
each as a NumPy (loss, grad) function and, where torch is present, as a torch loss."""

from __future__ import annotations

from typing import Any

import numpy as np


def _f32(logits: np.ndarray, labels: np.ndarray, reduction: str) -> tuple[Any, Any, Any]:
    z = logits.astype(np.float32)
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    n = len(labels)
    per = -logp[np.arange(n), labels]
    p = np.exp(logp)
    scale = np.float32(1.0 / n) if reduction == "mean" else np.float32(1.0)
    loss = per if reduction == "none" else (per.mean() if reduction == "mean" else per.sum())
    return loss, p, scale


def accurate(logits, *, labels, reduction):  # type: ignore[no-untyped-def]
    """float32 inside, the loss and the gradient rounded once to the logits' dtype."""
    loss, p, scale = _f32(logits, labels, reduction)
    grad = p.copy()
    grad[np.arange(len(labels)), labels] -= 1.0
    return np.asarray(loss).astype(logits.dtype), (grad * scale).astype(logits.dtype)


def liger_1268(logits, *, labels, reduction):  # type: ignore[no-untyped-def]
    """Liger-Kernel #1268: p is rounded to the low dtype, then 1 is subtracted at the label."""
    loss, p, scale = _f32(logits, labels, reduction)
    grad = p.astype(logits.dtype)
    rows = np.arange(len(labels))
    grad[rows, labels] = (grad[rows, labels] - np.asarray(1.0, dtype=logits.dtype)).astype(
        logits.dtype
    )
    return np.asarray(loss).astype(logits.dtype), (grad * scale).astype(logits.dtype)


def zero_gradient(logits, *, labels, reduction):  # type: ignore[no-untyped-def]
    loss, _, _ = _f32(logits, labels, reduction)
    return np.asarray(loss).astype(logits.dtype), np.zeros_like(logits)


try:
    import torch
except ImportError:  # the NumPy kernels above still work
    torch = None  # type: ignore[assignment]

if torch is not None:

    def torch_accurate(logits: Any, *, labels: Any, reduction: str) -> Any:
        """float32 inside; autograd rounds the gradient once on the way back to bfloat16."""
        out = torch.nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)
        return out.to(logits.dtype)

    class _Liger1268(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, logits: Any, labels: Any) -> Any:  # type: ignore[override]
            z = logits.float()
            loss = torch.nn.functional.cross_entropy(z, labels)
            grad = torch.softmax(z, dim=-1).to(logits.dtype)  # rounded first: the bug
            grad[torch.arange(len(labels)), labels] -= 1
            ctx.save_for_backward(grad / len(labels))
            return loss.to(logits.dtype)

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:  # type: ignore[override]
            (grad,) = ctx.saved_tensors
            return grad * grad_output, None

    def torch_liger_1268(logits: Any, *, labels: Any, reduction: str) -> Any:
        assert reduction == "mean"
        return _Liger1268.apply(logits, labels)
