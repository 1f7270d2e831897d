"""``--impl torch``: PyTorch's own losses and autograd behind the implementation protocol.

Softmax cross-entropy is ``torch.nn.functional.cross_entropy`` (weight, ignore_index,
label_smoothing, probability targets); softcap and z-loss, which PyTorch lacks, are composed
around it as Liger-Kernel defines them. A ``loss_mask`` and ``empty_mean: zero``, which PyTorch
lacks too, are composed around its ``reduction='none'`` losses (:func:`_masked_reduction`), so
the backward is still autograd's. Sigmoid cross-entropy is
``binary_cross_entropy_with_logits`` (weight, pos_weight). Gradients come from autograd of the
summed loss. torch is imported only here, and only when asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradcheck_cli.torch_native import _torch


def require_torch() -> None:
    """Raise a clear error when PyTorch is not installed."""
    _torch()


def torch_loss(
    logits: Any,
    *,
    reduction: str,
    loss: str = "softmax_cross_entropy",
    labels: Any = None,
    targets: Any = None,
    weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    pos_weight: Any = None,
    num_items_in_batch: float | None = None,
    loss_mask: Any = None,
    empty_mean: str = "nan",
) -> Any:
    """PyTorch's loss of torch tensors (the framework-native protocol of
    ``torch_native``): ``cross_entropy`` or ``binary_cross_entropy_with_logits``, with softcap
    and z-loss composed around it as Liger-Kernel defines them."""
    torch = _torch()
    F = torch.nn.functional
    if loss == "sigmoid_cross_entropy":
        return F.binary_cross_entropy_with_logits(
            logits, targets, weight=weight, pos_weight=pos_weight, reduction=reduction
        )
    zc = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    kwargs: dict[str, Any] = {"label_smoothing": label_smoothing, "weight": weight}
    if labels is not None:
        target = labels
        valid = torch.ones_like(target, dtype=torch.bool)
        if ignore_index is not None:
            kwargs["ignore_index"] = ignore_index
            valid = target != ignore_index
    else:
        target = targets
        valid = torch.ones(logits.shape[0], dtype=torch.bool)
    if loss_mask is not None or (empty_mean == "zero" and reduction == "mean"):
        per = F.cross_entropy(zc, target, reduction="none", **kwargs)
        return _masked_reduction(
            per,
            zc,
            labels,
            weight,
            valid,
            reduction=reduction,
            z_loss=z_loss,
            num_items_in_batch=num_items_in_batch,
            loss_mask=loss_mask,
            empty_mean=empty_mean,
        )
    by_items = num_items_in_batch is not None and reduction == "mean"
    out = F.cross_entropy(zc, target, reduction="sum" if by_items else reduction, **kwargs)
    if by_items:
        out = out / num_items_in_batch
    if not z_loss:
        return out
    # where, not * valid: an ignored row contributes exactly 0 even if lse^2 overflows
    zl = torch.where(valid, z_loss * torch.logsumexp(zc, dim=-1) ** 2, 0.0)
    if reduction == "none":
        return out + zl
    if reduction == "sum":
        return out + zl.sum()
    return out + zl.sum() / (num_items_in_batch if by_items else valid.sum())


def torch_linear_loss(
    hidden: Any,
    weight: Any,
    bias: Any = None,
    *,
    weight_layout: str = "vd",
    class_weight: Any = None,
    **options: Any,
) -> Any:
    """``--impl torch`` on a ``linear:`` spec: ``F.linear`` in the inputs' dtype, then
    :func:`torch_loss` on the logits up-cast to at least float32 (Liger-Kernel's reference for
    its fused linear cross-entropy). ``weight_layout`` ``dv`` takes a (D, V) weight;
    ``class_weight``: the loss's class weights."""
    torch = _torch()
    if class_weight is not None:
        options["weight"] = class_weight
    if weight_layout == "vd":
        z = torch.nn.functional.linear(hidden, weight, bias)
    else:
        z = hidden @ weight if bias is None else torch.addmm(bias, hidden, weight)
    return torch_loss(z.to(torch.promote_types(z.dtype, torch.float32)), **options)


def _masked_reduction(
    per: Any,
    zc: Any,
    labels: Any,
    weight: Any,
    valid: Any,
    *,
    reduction: str,
    z_loss: float,
    num_items_in_batch: float | None,
    loss_mask: Any,
    empty_mean: str,
) -> Any:
    """PyTorch's per-sample losses ``per`` (ignored rows 0) reduced with the loss mask m:
    ``m_n l_n`` per row; ``mean`` divides by ``sum_n m_n w_{y_n}`` (``sum_n m_n`` for
    probability targets and the z-loss; M with ``num_items_in_batch``), and a zero divisor
    gives nan (PyTorch's 0/0) or 0 (``empty_mean: zero``), with a zero gradient either way."""
    torch = _torch()
    m = torch.ones_like(per) if loss_mask is None else loss_mask.to(per.dtype)
    live = valid & (m > 0)
    # where, not a product: a masked row with an infinite loss contributes exactly 0, and its
    # gradient is 0 (not 0 * inf)
    ce = torch.where(live, m * per, 0.0)
    zl = torch.zeros_like(ce)
    if z_loss:
        zl = torch.where(live, m * z_loss * torch.logsumexp(zc, dim=-1) ** 2, 0.0)
    if reduction == "none":
        return ce + zl
    if reduction == "sum":
        return ce.sum() + zl.sum()
    counts = torch.where(valid, m, 0.0)
    if num_items_in_batch is not None:
        ce_norm = z_norm = per.new_tensor(float(num_items_in_batch))
    else:
        z_norm = counts.sum()
        ce_norm = z_norm
        if labels is not None:
            w = per.new_ones(zc.shape[-1]) if weight is None else weight.to(per.dtype)
            w_y = w[torch.where(valid, labels, 0)]
            ce_norm = (counts * w_y).sum()
    some = ce_norm > 0
    one = torch.ones_like(ce_norm)
    mean = ce.sum() / torch.where(some, ce_norm, one) + zl.sum() / torch.where(
        z_norm > 0, z_norm, one
    )
    # the unselected branch gets a zero gradient, and its divisor is never 0: no nan leaks
    return torch.where(some, mean, 0.0 if empty_mean == "zero" else float("nan"))


def torch_cross_entropy(logits: np.ndarray, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """The loss and the gradient of its sum, computed by PyTorch (the NumPy protocol of
    ``impl``; ``--impl torch`` runs :func:`torch_loss` natively instead)."""
    from gradcheck_cli.torch_native import TorchNative

    return TorchNative(torch_loss)(logits, **options)
