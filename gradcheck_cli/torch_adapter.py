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

from gradcheck_cli.errors import XentcheckError


def require_torch() -> None:
    """Raise a clear error when PyTorch is not installed."""
    _torch()


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise XentcheckError(
            "--impl torch needs PyTorch, which is not installed (pip install torch)"
        ) from None
    return torch


def torch_cross_entropy(
    logits: np.ndarray,
    *,
    reduction: str,
    loss: str = "softmax_cross_entropy",
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    pos_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The loss and the gradient of its sum, computed by PyTorch (protocol of ``impl``)."""
    torch = _torch()
    F = torch.nn.functional
    z = torch.tensor(logits, requires_grad=True)

    def t(a: np.ndarray | None) -> Any:
        return None if a is None else torch.tensor(a)

    if loss == "sigmoid_cross_entropy":
        out = F.binary_cross_entropy_with_logits(
            z, t(targets), weight=t(weight), pos_weight=t(pos_weight), reduction=reduction
        )
    else:
        zc = z if softcap is None else softcap * torch.tanh(z / softcap)
        kwargs: dict[str, Any] = {"label_smoothing": label_smoothing, "weight": t(weight)}
        if labels is not None:
            target = torch.tensor(labels)
            valid = torch.ones_like(target, dtype=torch.bool)
            if ignore_index is not None:
                kwargs["ignore_index"] = ignore_index
                valid = target != ignore_index
        else:
            target = t(targets)
            valid = torch.ones(z.shape[0], dtype=torch.bool)
        out = F.cross_entropy(zc, target, reduction=reduction, **kwargs)
        if z_loss:
            # where, not * valid: an ignored row contributes exactly 0 even if lse^2 overflows
            zl = torch.where(valid, z_loss * torch.logsumexp(zc, dim=-1) ** 2, 0.0)
            if reduction == "none":
                out = out + zl
            elif reduction == "sum":
                out = out + zl.sum()
            else:
                out = out + zl.sum() / valid.sum()
    out.sum().backward()
    return out.detach().numpy(), z.grad.numpy()
