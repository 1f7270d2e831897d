"""Framework-native PyTorch losses for --impl torch:...: a correct hand-written
autograd.Function, and one planted bug each that escaped real projects' tests."""

from __future__ import annotations

from typing import Any

import torch


class _CrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy with a hand-written backward (``mode`` plants a bug)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, reduction: str, mode: str
    ) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        target = labels
        if mode == "offset_labels":  # reads one position off (an offset view)
            target = torch.roll(labels, 1)
        per = -logp.gather(-1, target[:, None])[:, 0]
        ctx.save_for_backward(logits, target)
        ctx.reduction, ctx.mode = reduction, mode
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.mean()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:  # type: ignore[override]
        logits, target = ctx.saved_tensors
        n = logits.shape[0]
        if ctx.mode == "inplace":  # the gradient written into the logits' storage
            grad = logits
            grad.copy_(torch.softmax(logits.detach(), dim=-1))
        else:
            grad = torch.softmax(logits, dim=-1)
        grad[torch.arange(n), target] -= 1.0
        if ctx.reduction == "mean":
            grad = grad / n
        if ctx.mode == "first_grad_output" and ctx.reduction == "none":
            grad = grad * grad_output[0]  # Liger-Kernel #1298
        elif ctx.mode == "ignore_grad_output":
            pass
        elif ctx.reduction == "none":
            grad = grad * grad_output[:, None]
        else:
            grad = grad * grad_output
        if ctx.mode == "nondeterministic":
            grad = grad + 1e-9 * torch.rand_like(grad)
        if ctx.mode == "backward_scaled":  # the backward disagrees with its own forward
            grad = grad * 1.01
        return grad, None, None, None


def _make(mode: str) -> Any:
    def loss(logits: torch.Tensor, *, labels: torch.Tensor, reduction: str) -> torch.Tensor:
        return _CrossEntropy.apply(logits, labels, reduction, mode)

    return loss


correct = _make("correct")
first_grad_output = _make("first_grad_output")
ignore_grad_output = _make("ignore_grad_output")
inplace = _make("inplace")
offset_labels = _make("offset_labels")
nondeterministic = _make("nondeterministic")
backward_scaled = _make("backward_scaled")


def f_cross_entropy(
    logits: torch.Tensor,
    *,
    labels: torch.Tensor,
    reduction: str,
    loss: str = "softmax_cross_entropy",
    **options: Any,
) -> torch.Tensor:
    """PyTorch's own, as a user would pass it (softmax cross-entropy only)."""
    return torch.nn.functional.cross_entropy(logits, labels, reduction=reduction, **options)


def _contiguous_only(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reads the labels as if they started at the beginning of their storage (the kind of
    pointer arithmetic a kernel that ignores storage offsets does)."""
    base = torch.as_strided(labels, labels.shape, (1,), 0)
    return base


def ignores_offsets(logits: torch.Tensor, *, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Bug: ignores the labels' storage offset (flash-attn bedf8774's offset-label bug)."""
    return torch.nn.functional.cross_entropy(
        logits, _contiguous_only(logits, labels), reduction=reduction
    )


def compile_diverges(logits: torch.Tensor, *, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Correct eagerly, wrong under torch.compile: a path taken only when compiling (as
    Liger-Kernel #1362's softcap path was) scales the logits."""
    if torch.compiler.is_compiling():
        logits = logits * 1.5
    return torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)


def own_count(
    logits: torch.Tensor,
    *,
    labels: torch.Tensor,
    reduction: str,
    num_items_in_batch: float | None = None,
) -> torch.Tensor:
    """Accepts num_items_in_batch but divides by its own batch's count (the bug transformers
    #34191 fixed): right on a whole batch whose count is M, wrong on each micro-batch."""
    return torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)


def sets_default_dtype(
    logits: torch.Tensor, *, labels: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Correct, but on the spec whose first logit is 13.0 it leaves torch's default dtype at
    float64 (a global a later spec, or a later test, would silently inherit)."""
    if float(logits.detach().reshape(-1)[0]) == 13.0:
        torch.set_default_dtype(torch.float64)
    return torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)
