"""``--impl torch``: PyTorch's own losses and autograd behind the implementation protocol.

Softmax cross-entropy is ``torch.nn.functional.cross_entropy`` (weight, ignore_index,
label_smoothing, probability targets); softcap and z-loss, which PyTorch lacks, are composed
around it as Liger-Kernel defines them. Sigmoid cross-entropy is
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


def torch_cross_entropy(logits: np.ndarray, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """The loss and the gradient of its sum, computed by PyTorch (the NumPy protocol of
    ``impl``; ``--impl torch`` runs :func:`torch_loss` natively instead)."""
    from gradcheck_cli.torch_native import TorchNative

    return TorchNative(torch_loss)(logits, **options)
