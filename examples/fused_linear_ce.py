"""Fused linear cross-entropy kernels for ``xentcheck run --impl`` on ``linear:`` specs.

``chunked_linear_ce`` is a correct chunked kernel of the kind Liger-Kernel, cut-cross-entropy and
torchtune ship: a ``torch.autograd.Function`` that never materialises the (N, V) logits. The
forward takes the rows ``chunks`` slices at a time (logits ``h W^T + b`` in the inputs' dtype,
the cross-entropy on their float32 up-cast, exactly as PyTorch's own reference does); the
backward recomputes each slice's softmax and accumulates ``dW`` and ``db`` in float32 across
slices, rounding once at the end. It takes ``grad_output`` per sample for ``reduction='none'``.

The ``bug_*`` functions are the same kernel with one escaped bug each planted (the checks must
catch every one and name the gradient):

* ``bug_no_bias``: the forward leaves the bias out (torchtune's reference omitted it);
* ``bug_bf16_dw``: ``dW`` accumulated in bfloat16 across chunks (axolotl #1601);
* ``bug_grad_output0``: with ``reduction='none'`` every row scaled by ``grad_output[0]``
  (Liger-Kernel #1298);
* ``bug_drop_last``: the last partial chunk skipped when N is not a multiple of the chunk size.

``numpy_linear_ce`` is the NumPy protocol: it returns ``(loss, dhidden, dweight, dbias)``.

    xentcheck run benchmarks/specs/llm_linear.yaml \\
        --impl torch:examples/fused_linear_ce.py:chunked_linear_ce --chunks 1,4,7
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _bounds(n: int, chunks: int, drop_last: bool) -> list[tuple[int, int]]:
    size = -(-n // max(1, chunks))  # ceil: the last chunk is partial unless chunks divides n
    starts = range(0, n, size)
    out = [(s, min(s + size, n)) for s in starts]
    if drop_last and out and out[-1][1] - out[-1][0] < size:
        out = out[:-1]
    return out


def _chunk_grad(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    smoothing: float,
    use_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses (r,) and dl_n/dz_n (r, V), float32, for one chunk of rows."""
    z = h @ weight.T
    if bias is not None and use_bias:
        z = z + bias
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # float32 at least, float64 stays
    logp = torch.log_softmax(z, dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0)
    v = z.shape[-1]
    nll = -logp.gather(1, safe[:, None])[:, 0]
    per = (1 - smoothing) * nll - smoothing * logp.mean(dim=-1)
    per = torch.where(valid, per, 0.0)
    g = torch.exp(logp)
    target = torch.full_like(g, smoothing / v)
    target.scatter_add_(1, safe[:, None], torch.full_like(g[:, :1], 1 - smoothing))
    g = torch.where(valid[:, None], g - target, 0.0)
    return per, g


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        reduction: str,
        ignore_index: int,
        smoothing: float,
        chunks: int,
        bug: str | None,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        wide = torch.promote_types(hidden.dtype, torch.float32)
        per = torch.zeros(n, dtype=wide, device=hidden.device)
        for s, e in _bounds(n, chunks, bug == "drop_last"):
            part, _ = _chunk_grad(
                hidden[s:e], weight, bias, labels[s:e], ignore_index, smoothing, bug != "no_bias"
            )
            per[s:e] = part
        count = (labels != ignore_index).sum().clamp(min=1).to(wide)
        ctx.save_for_backward(hidden, weight, bias, labels, count)
        ctx.options = (reduction, ignore_index, smoothing, chunks, bug)
        if reduction == "none":
            return per
        return per.sum() / count if reduction == "mean" else per.sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, labels, count = ctx.saved_tensors
        reduction, ignore_index, smoothing, chunks, bug = ctx.options
        n = hidden.shape[0]
        wide = torch.promote_types(hidden.dtype, torch.float32)
        acc = torch.bfloat16 if bug == "bf16_dw" else wide
        d_h = torch.zeros_like(hidden)
        d_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        d_b = None if bias is None else torch.zeros(bias.shape, dtype=wide)
        for s, e in _bounds(n, chunks, bug == "drop_last"):
            _, g = _chunk_grad(
                hidden[s:e], weight, bias, labels[s:e], ignore_index, smoothing, bug != "no_bias"
            )
            if reduction == "none":
                up = grad_output[:1] if bug == "grad_output0" else grad_output[s:e]
                g = g * up[:, None].to(wide)
            else:
                g = g * (grad_output.to(wide) / (count if reduction == "mean" else 1.0))
            gd = g.to(hidden.dtype)
            d_h[s:e] = gd @ weight
            d_w += (g.T @ hidden[s:e].to(wide)).to(acc)
            if d_b is not None:
                d_b += g.sum(dim=0)
        out_b = None if d_b is None or bias is None else d_b.to(bias.dtype)
        return d_h, d_w.to(weight.dtype), out_b, None, None, None, None, None, None


def chunked_linear_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    labels: torch.Tensor,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunks: int = 1,
    _bug: str | None = None,
) -> torch.Tensor:
    """The correct chunked kernel (``_bug`` plants one of the bugs of the module docstring)."""
    return _ChunkedLinearCE.apply(  # type: ignore[no-untyped-call,no-any-return]
        hidden, weight, bias, labels, reduction, ignore_index, label_smoothing, chunks, _bug
    )


def _planted(bug: str) -> Any:
    def kernel(
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        labels: torch.Tensor,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        chunks: int = 1,
    ) -> torch.Tensor:
        return chunked_linear_ce(
            hidden,
            weight,
            bias,
            labels=labels,
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            chunks=chunks,
            _bug=bug,
        )

    kernel.__name__ = f"bug_{bug}"
    return kernel


bug_no_bias = _planted("no_bias")
bug_bf16_dw = _planted("bf16_dw")
bug_grad_output0 = _planted("grad_output0")
bug_drop_last = _planted("drop_last")


def numpy_linear_ce(
    hidden: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    labels: np.ndarray,
    reduction: str = "mean",
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray | None]:
    """The NumPy protocol: (loss, dhidden, dweight, dbias) of a plain linear cross-entropy,
    weight (V, D), computed in the inputs' dtype (max-shifted log-sum-exp)."""
    z = hidden @ weight.T + (0 if bias is None else bias)
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(z.shape[0])
    per = (m[:, 0] + np.log(s[:, 0])) - z[rows, labels]
    g = e / s
    g[rows, labels] -= 1
    if reduction == "mean":
        loss: Any = per.mean()
        g /= z.shape[0]
    else:
        loss = per.sum() if reduction == "sum" else per
    return loss, g @ weight, g.T @ hidden, None if bias is None else g.sum(axis=0)
