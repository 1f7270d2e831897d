"""Low-precision kernels for the bfloat16/float16 checks: an accurate one (float32 arithmetic
inside, one rounding at the end, as Liger-Kernel's fix of #1268 does), the #1268 bug itself (the
softmax rounded to the low dtype *before* 1 is subtracted at the label), and a zero gradient;
each as a NumPy (loss, grad) function and, where torch is present, as a torch loss."""

from __future__ import annotations

from typing import Any

import numpy as np


def _f32(
    logits: np.ndarray,
    labels: np.ndarray,
    reduction: str,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> tuple[Any, Any, Any, Any]:
    """float32: the loss, p, the target q (label smoothing; 0 in ignored rows) and the
    reduction's scale per row (mean: 1 / the number of rows not ignored)."""
    z = logits.astype(np.float32)
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    n, k = z.shape
    live = labels != ignore_index
    safe = np.where(live, labels, 0)
    a = np.float32(label_smoothing)
    q = np.full(z.shape, a / k, dtype=np.float32)
    q[np.arange(n), safe] += 1 - a
    q[~live] = 0
    per = -(q * logp).sum(axis=1)
    p = np.exp(logp)
    count = max(int(live.sum()), 1)
    scale = np.where(live, np.float32(1.0 / count) if reduction == "mean" else 1, 0)
    scale = scale.astype(np.float32)[:, None]
    loss = per if reduction == "none" else (per.sum() / count if reduction == "mean" else per.sum())
    return loss, p, q, scale


def accurate(logits, *, labels, reduction, ignore_index=-100, label_smoothing=0.0):  # type: ignore[no-untyped-def]
    """float32 inside, the loss and the gradient rounded once to the logits' dtype."""
    loss, p, q, scale = _f32(logits, labels, reduction, ignore_index, label_smoothing)
    grad = (p - q) * scale
    return np.asarray(loss).astype(logits.dtype), grad.astype(logits.dtype)


def liger_1268(logits, *, labels, reduction, ignore_index=-100, label_smoothing=0.0):  # type: ignore[no-untyped-def]
    """Liger-Kernel #1268: p is rounded to the low dtype, then the target is subtracted."""
    loss, p, q, scale = _f32(logits, labels, reduction, ignore_index, label_smoothing)
    low = logits.dtype
    grad = (p.astype(low) - q.astype(low)).astype(low)
    return np.asarray(loss).astype(low), (grad * scale.astype(low)).astype(low)


def zero_gradient(logits, *, labels, reduction, ignore_index=-100, label_smoothing=0.0):  # type: ignore[no-untyped-def]
    loss, _, _, _ = _f32(logits, labels, reduction, ignore_index, label_smoothing)
    return np.asarray(loss).astype(logits.dtype), np.zeros_like(logits)


try:
    import torch
except ImportError:  # the NumPy kernels above still work
    torch = None  # type: ignore[assignment]

if torch is not None:

    def torch_accurate(
        logits: Any,
        *,
        labels: Any,
        reduction: str,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> Any:
        """Wide arithmetic inside; autograd rounds the gradient once on the way back to
        bfloat16. (float64: PyTorch's float32 CPU cross-entropy is itself off by up to 5% in
        the true-class gradient at p_y = 0.999, V = 32000 on some CPUs, through its float32
        log-sum-exp, which is not the one-rounding kernel this stands for.)"""
        out = torch.nn.functional.cross_entropy(
            logits.double(),
            labels,
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )
        return out.to(logits.dtype)

    class _Liger1268(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, logits: Any, labels: Any, ignore_index: int, smoothing: float) -> Any:  # type: ignore[override]
            z = logits.float()
            loss = torch.nn.functional.cross_entropy(
                z, labels, ignore_index=ignore_index, label_smoothing=smoothing
            )
            n, k = z.shape
            live = labels != ignore_index
            grad = torch.softmax(z, dim=-1).to(logits.dtype)  # rounded first: the bug
            grad -= smoothing / k
            rows = torch.arange(n)[live]
            grad[rows, labels[live]] -= 1 - smoothing
            grad[~live] = 0
            ctx.save_for_backward(grad / max(int(live.sum()), 1))
            return loss.to(logits.dtype)

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:  # type: ignore[override]
            (grad,) = ctx.saved_tensors
            return grad * grad_output, None, None, None

    def torch_liger_1268(
        logits: Any,
        *,
        labels: Any,
        reduction: str,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> Any:
        assert reduction == "mean"
        return _Liger1268.apply(logits, labels, ignore_index, label_smoothing)
