"""A vocabulary-parallel softmax cross-entropy (the Megatron-LM algorithm, written from the
formulas) for ``xentcheck run --impl torch:examples/vocab_parallel_ce.py:vocab_parallel_ce
--tensor-parallel 2``, and the bugs such kernels have had.

Rank r holds the logits of classes [vocab_start, vocab_end) (columns past ``vocab_end -
vocab_start`` are padding of the last shard and must be ignored). With z the local logits:

* m = all-reduce-max of the local row maxima; every rank shifts by the same m;
* S = all-reduce-sum of sum exp(z - m) over the real local columns;
* the target logit z_y comes from the rank that owns y (others add 0), all-reduced;
* loss_n = log S - (z_y - m), and with label smoothing a:
  (1 - a) loss_n + a (log S - mean_c (z_c - m)), the mean over the *global* V (Megatron-LM #737
  used the local V);
* the backward is local: p - (1 - a) onehot - a / V on the rank's columns, times grad_output
  and the reduction's scale; 0 on padding columns.

``vocab_parallel_ce`` is correct; the planted bugs are ``bug_local_vocab`` (smoothing over the
local V, Megatron-LM #737), ``bug_local_max`` (each rank shifts by its own maximum: the forward
survives, the gradient does not), ``bug_boundary_target`` (a label on a shard's first class is
read from the previous rank) and ``bug_padding_mass`` (the last shard's padding counted as
classes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        z: torch.Tensor,
        labels: torch.Tensor,
        group: Any,
        start: int,
        end: int,
        reduction: str,
        ignore_index: int,
        a: float,
        vocab: int,
        bug: str | None,
    ) -> torch.Tensor:
        inner = torch.float64 if z.dtype == torch.float64 else torch.float32
        width = z.shape[1] if bug == "padding_mass" else end - start
        x = z.detach().to(inner)[:, :width]
        n = x.shape[0]
        # a rank past the end of a small vocabulary holds padding only: its maximum is -inf
        empty = torch.full((n,), float("-inf"), dtype=inner)
        m = x.max(dim=1).values if x.shape[1] else empty
        if bug != "local_max":
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        e = torch.exp(x - m[:, None])
        total = e.sum(dim=1)
        dist.all_reduce(total, group=group)
        live = labels != ignore_index
        lo = start + 1 if bug == "boundary_target" else start
        owned = live & (labels >= lo) & (labels < end)
        if bug == "boundary_target":
            owned = owned | (live & (labels == end))  # reads the next rank's first class
        local = (labels - start).clamp(0, max(x.shape[1] - 1, 0))
        if x.shape[1]:
            picked = x.gather(1, local[:, None])[:, 0] - m
            target = torch.where(owned, picked, torch.zeros_like(m))
        else:
            target = torch.zeros_like(m)
        dist.all_reduce(target, group=group)
        log_total = torch.log(total)
        per = log_total - target
        if a:
            shifted_sum = (x - m[:, None]).sum(dim=1)
            dist.all_reduce(shifted_sum, group=group)
            count = float(width if bug == "local_vocab" else vocab)
            smooth = log_total - shifted_sum / count
            per = (1 - a) * per + a * smooth
        per = torch.where(live, per, torch.zeros_like(per))
        n_live = int(live.sum())
        if reduction == "none":
            loss, scale = per, torch.ones_like(per)
        elif reduction == "sum":
            loss, scale = per.sum(), torch.ones_like(per)
        else:
            loss = per.sum() / n_live if n_live else torch.tensor(float("nan"), dtype=inner)
            scale = torch.full_like(per, 1.0 / n_live if n_live else 0.0)
        p = e / total[:, None]
        grad = p.clone()
        rows = torch.nonzero(owned)[:, 0]
        grad[rows, local[rows]] -= 1 - a
        if a:
            grad -= a / (width if bug == "local_vocab" else vocab)
        grad = grad * (scale * live)[:, None]
        full = torch.zeros(z.shape, dtype=inner)
        full[:, :width] = grad
        ctx.save_for_backward(full)
        ctx.reduction, ctx.dtype = reduction, z.dtype
        return loss.to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        g = grad_output.to(grad.dtype)
        g = g[:, None] if ctx.reduction == "none" else g
        return (grad * g).to(ctx.dtype), *([None] * 9)


def _make(bug: str | None) -> Any:
    def loss(  # type: ignore[no-untyped-def]
        logits,
        labels,
        *,
        group,
        vocab_start,
        vocab_end,
        vocab_size,
        reduction="mean",
        ignore_index=-100,
        label_smoothing=0.0,
    ):
        return _VocabParallelCE.apply(
            logits, labels, group, int(vocab_start), int(vocab_end), reduction,
            int(ignore_index), float(label_smoothing), int(vocab_size), bug,
        )  # fmt: skip

    loss.__name__ = bug or "vocab_parallel_ce"
    return loss


vocab_parallel_ce = _make(None)
bug_local_vocab = _make("local_vocab")
bug_local_max = _make("local_max")
bug_boundary_target = _make("boundary_target")
bug_padding_mass = _make("padding_mass")
