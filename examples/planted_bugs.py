"""Cross-entropy kernels with the bugs that escaped real projects' tests, for ``xentcheck hunt``.

One kernel, written twice: a NumPy function following the ``--impl`` protocol
(``f(logits, *, labels, reduction, ignore_index, label_smoothing, z_loss) -> (loss, grad)``) and
a PyTorch ``autograd.Function`` with a hand-written backward (``--impl torch:...``). Both compute
in float32 for half-precision inputs (float64 for float64 ones, float32 for float32) and round
once at the end, as an accurate kernel does. ``correct`` is the fixed kernel; every other name
plants one bug:

=======================  ==========================================================================
``true_class_rounded``   Liger-Kernel #1268: p_y rounded to the input dtype before 1 is subtracted
``first_grad_output``    Liger-Kernel #1298: every row scaled by grad_output[0] (torch only)
``zloss_ignored_rows``   z-loss s·lse² counted on ignored rows too
``mean_all_rows``        ``mean`` divides by N, not by the rows that are not ignored
``no_max_shift``         exp(z) without subtracting the row maximum (overflows above 88 in float32)
``global_max``           one maximum for the whole batch instead of one per row
``smoothing_count``      label smoothing normalised by K − 1 instead of K
=======================  ==========================================================================

Run ``xentcheck hunt --impl examples/planted_bugs.py:mean_all_rows`` (NumPy) or
``xentcheck hunt --impl torch:examples/planted_bugs.py:torch_first_grad_output``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BUGS = (
    "true_class_rounded",
    "first_grad_output",
    "zloss_ignored_rows",
    "mean_all_rows",
    "no_max_shift",
    "global_max",
    "smoothing_count",
)


def _inner(dtype: Any) -> Any:
    """The arithmetic dtype: float64 for float64 inputs, float32 otherwise."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _forward(
    z: np.ndarray, labels: np.ndarray, ignore_index: int, a: float, s: float, bug: str | None
) -> tuple[np.ndarray, ...]:
    """Per-row loss (N,), p (N, K), the smoothed target q (N, K; 0 in ignored rows), the live
    mask (N,) and lse (N,), in z's dtype."""
    n, k = z.shape
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if bug == "no_max_shift":
            m = np.zeros((n, 1), dtype=z.dtype)
        elif bug == "global_max":
            m = np.full((n, 1), z.max(), dtype=z.dtype)
        else:
            m = z.max(axis=1, keepdims=True)
        e = np.exp(z - m)
        total = e.sum(axis=1, keepdims=True)
        lse = (m + np.log(total))[:, 0]
        p = e / total
        logp = z - lse[:, None]
        live = labels != ignore_index
        safe = np.where(live, labels, 0)
        count = k - 1 if bug == "smoothing_count" and k > 1 else k
        q = np.zeros_like(z)
        q[np.arange(n), safe] = 1 - a
        q = q + np.asarray(a / count, dtype=z.dtype)
        q[~live] = 0
        lp = np.where(q > 0, logp, 0)  # -inf lanes that the target skips contribute 0
        per = -(q * lp).sum(axis=1)
        zrows = live if bug != "zloss_ignored_rows" else np.ones(n, dtype=bool)
        per = per + np.where(zrows, s * lse * lse, 0).astype(z.dtype)
    return per, p, q, live, lse, zrows


def numpy_kernel(
    logits: np.ndarray,
    labels: np.ndarray,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    bug: str | None,
) -> tuple[Any, Any]:
    """The loss and the gradient of the reduced loss, rounded once to the logits' dtype."""
    low = logits.dtype
    z = np.asarray(logits).astype(_inner(low))
    per, p, q, live, lse, zrows = _forward(z, labels, ignore_index, label_smoothing, z_loss, bug)
    n = z.shape[0]
    count = n if bug == "mean_all_rows" else int(live.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        if reduction == "none":
            loss, row_scale = per, np.ones(n)
        elif reduction == "sum":
            loss, row_scale = per.sum(), np.ones(n)
        else:
            loss = per.sum() / count if count else np.float64("nan")
            row_scale = np.full(n, 1.0 / count if count else 0.0)
        target_mass = q.sum(axis=1, keepdims=True)  # 1 in live rows, 0 in ignored ones
        grad = p * target_mass - q
        if bug == "true_class_rounded":  # p rounded to the input dtype, then the target
            grad = (p.astype(low).astype(z.dtype) * target_mass - q).astype(z.dtype)
        zl = np.where(zrows, 2 * z_loss * lse, 0)[:, None] * p
        grad = (grad + zl) * row_scale[:, None].astype(z.dtype)
    return np.asarray(loss).astype(low), grad.astype(low)


def _numpy(bug: str | None) -> Any:
    def kernel(  # type: ignore[no-untyped-def]
        logits, *, labels, reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0
    ):
        return numpy_kernel(logits, labels, reduction, ignore_index, label_smoothing, z_loss, bug)

    kernel.__name__ = bug or "correct"
    kernel.__doc__ = f"The NumPy kernel{'' if bug is None else ' with bug ' + bug}."
    return kernel


correct = _numpy(None)
true_class_rounded = _numpy("true_class_rounded")
zloss_ignored_rows = _numpy("zloss_ignored_rows")
mean_all_rows = _numpy("mean_all_rows")
no_max_shift = _numpy("no_max_shift")
global_max = _numpy("global_max")
smoothing_count = _numpy("smoothing_count")


# --- the same kernel in PyTorch -------------------------------------------------------------


def _torch_function() -> Any:
    import torch

    class CrossEntropy(torch.autograd.Function):
        """Forward by the NumPy kernel's arithmetic in torch; backward written by hand."""

        @staticmethod
        def forward(  # type: ignore[override]
            ctx: Any,
            logits: torch.Tensor,
            labels: torch.Tensor,
            reduction: str,
            ignore_index: int,
            a: float,
            s: float,
            bug: str | None,
        ) -> torch.Tensor:
            inner = torch.float64 if logits.dtype == torch.float64 else torch.float32
            z = logits.detach().to(inner)
            n, k = z.shape
            if bug == "no_max_shift":
                m = torch.zeros((n, 1), dtype=inner)
            elif bug == "global_max":
                m = z.max().expand(n, 1)
            else:
                m = z.max(dim=1, keepdim=True).values
            e = torch.exp(z - m)
            total = e.sum(dim=1, keepdim=True)
            lse = (m + torch.log(total))[:, 0]
            p = e / total
            live = labels != ignore_index
            safe = torch.where(live, labels, torch.zeros_like(labels))
            count_k = k - 1 if bug == "smoothing_count" and k > 1 else k
            q = torch.zeros_like(z)
            q[torch.arange(n), safe] = 1 - a
            q = q + a / count_k
            q[~live] = 0
            logp = torch.where(q > 0, z - lse[:, None], torch.zeros_like(z))
            zrows = live if bug != "zloss_ignored_rows" else torch.ones_like(live)
            per = -(q * logp).sum(dim=1) + torch.where(zrows, s * lse * lse, 0.0)
            count = n if bug == "mean_all_rows" else int(live.sum())
            if reduction == "none":
                loss, row_scale = per, torch.ones(n, dtype=inner)
            elif reduction == "sum":
                loss, row_scale = per.sum(), torch.ones(n, dtype=inner)
            else:
                loss = per.sum() / count if count else torch.tensor(float("nan"), dtype=inner)
                row_scale = torch.full((n,), 1.0 / count if count else 0.0, dtype=inner)
            grad = p * q.sum(dim=1, keepdim=True) - q
            if bug == "true_class_rounded":
                grad = p.to(logits.dtype).to(inner) * q.sum(dim=1, keepdim=True) - q
            grad = grad + torch.where(zrows, 2 * s * lse, 0.0)[:, None] * p
            ctx.save_for_backward(grad * row_scale[:, None])
            ctx.reduction, ctx.bug, ctx.dtype = reduction, bug, logits.dtype
            return loss.to(logits.dtype)

        @staticmethod
        def backward(ctx: Any, grad_output: torch.Tensor) -> Any:  # type: ignore[override]
            (grad,) = ctx.saved_tensors
            g = grad_output.to(grad.dtype)
            if ctx.reduction == "none":
                g = (g[0].expand(grad.shape[0]) if ctx.bug == "first_grad_output" else g)[:, None]
            return (grad * g).to(ctx.dtype), None, None, None, None, None, None

    return CrossEntropy


def _torch(bug: str | None) -> Any:
    def loss(  # type: ignore[no-untyped-def]
        logits, *, labels, reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0
    ):
        return _torch_function().apply(
            logits, labels, reduction, int(ignore_index), float(label_smoothing), float(z_loss),
            bug,
        )  # fmt: skip

    loss.__name__ = f"torch_{bug or 'correct'}"
    return loss


torch_correct = _torch(None)
torch_true_class_rounded = _torch("true_class_rounded")
torch_first_grad_output = _torch("first_grad_output")
torch_zloss_ignored_rows = _torch("zloss_ignored_rows")
torch_mean_all_rows = _torch("mean_all_rows")
torch_no_max_shift = _torch("no_max_shift")
torch_global_max = _torch("global_max")
torch_smoothing_count = _torch("smoothing_count")
