"""``--impl torch:module:function``: a PyTorch loss as it is, with PyTorch's own autograd.

The function takes torch tensors and returns the **loss only** (a scalar, or per-sample for
``reduction: none``)::

    def my_loss(logits, *, labels, reduction, **options) -> torch.Tensor

xentcheck builds the tensors (logits with ``requires_grad``, labels int64, every float option
in the logits' dtype), calls the function, and back-propagates an upstream gradient
``grad_output`` through ``torch.autograd.grad``: a seeded non-uniform one per sample for
``none`` and a seeded scalar other than 1 for a reduced loss, so a backward that ignores
``grad_output`` or broadcasts ``grad_output[0]`` (Liger-Kernel #1298) cannot pass. The engine
scales the reference gradient the same way.

:meth:`TorchNative.side_effects` calls the function again on fresh tensors and reports what a
correct kernel never does: changing the logits, labels or weights it was given, returning a
gradient that shares the logits' storage (the in-place bug of Liger-Kernel #272), and giving a
different loss or gradient on a second identical call. torch is imported only here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradcheck_cli.errors import XentcheckError


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise XentcheckError(
            "--impl torch needs PyTorch, which is not installed (pip install torch)"
        ) from None
    return torch


def _tensor(value: Any, device: str = "cpu") -> Any:
    """NumPy arrays as tensors on ``device`` (a copy; integers stay int64); anything else as
    it is."""
    torch = _torch()
    if isinstance(value, np.ndarray):
        return torch.tensor(value, device=device)
    return value


def _device(name: str) -> str:
    """``name`` if PyTorch has that device here; a clear error otherwise."""
    torch = _torch()
    kind = name.split(":", 1)[0]
    if kind == "cpu":
        return name
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= count:
            raise XentcheckError(
                f"--device {name}: this machine has {count} CUDA device(s) visible to PyTorch"
            )
        return name
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise XentcheckError("--device mps: PyTorch has no MPS device here")
        return name
    raise XentcheckError(f"--device {name}: expected cpu, cuda, cuda:N or mps")


class TorchNative:
    """A framework-native torch loss behind xentcheck's ``(loss, grad)`` protocol."""

    def __init__(self, function: Callable[..., Any], device: str = "cpu") -> None:
        self.function = function
        self.device = _device(device)

    def run(
        self, logits: np.ndarray, grad_output: np.ndarray | None, options: dict[str, Any]
    ) -> tuple[Any, Any, dict[str, Any]]:
        """Call the function on fresh tensors and back-propagate ``grad_output`` (ones when
        None): (the logits tensor, the loss tensor, the other tensors given), plus the gradient
        as ``tensors["__grad__"]``."""
        torch = _torch()
        z = torch.tensor(logits, requires_grad=True, device=self.device)
        tensors = {k: _tensor(v, self.device) for k, v in options.items()}
        loss = self.function(z, **tensors)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"returned {type(loss).__name__}; expected a torch tensor (the loss)")
        if grad_output is None:
            upstream = torch.ones_like(loss)
        else:
            upstream = torch.tensor(grad_output, dtype=loss.dtype, device=loss.device).reshape(
                loss.shape
            )
        (grad,) = torch.autograd.grad(loss, z, grad_outputs=upstream, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(z)
        tensors["__grad__"] = grad
        return z, loss, tensors

    def __call__(
        self, logits: np.ndarray, *, grad_output: np.ndarray | None = None, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The loss and the gradient of ``sum(grad_output * loss)`` as NumPy arrays."""
        _, loss, tensors = self.run(logits, grad_output, options)
        return loss.detach().cpu().numpy(), tensors["__grad__"].detach().cpu().numpy()

    def views(
        self, logits: np.ndarray, grad_output: np.ndarray | None, options: dict[str, Any]
    ) -> float:
        """The largest difference between the loss and gradient on fresh contiguous tensors and
        on *views*: the logits as every other column of a wider tensor (non-contiguous) and the
        labels as ``labels[1:]`` of a longer one (storage offset by 8 bytes, not 16-aligned,
        as HF's ``labels[..., 1:]`` shift is)."""
        torch = _torch()
        loss, grad = self(logits, grad_output=grad_output, **options)
        n, k = logits.shape
        wide = torch.zeros((n, 2 * k), dtype=torch.tensor(logits).dtype, device=self.device)
        wide[:, ::2] = torch.tensor(logits, device=self.device)
        z = wide[:, ::2].detach().requires_grad_(True)
        tensors = {key: _tensor(v, self.device) for key, v in options.items()}
        labels = tensors.get("labels")
        if labels is not None:
            longer = torch.zeros(labels.shape[0] + 1, dtype=labels.dtype, device=self.device)
            longer[1:] = labels
            tensors["labels"] = longer[1:]
        out = self.function(z, **tensors)
        upstream = (
            torch.ones_like(out)
            if grad_output is None
            else torch.tensor(grad_output, dtype=out.dtype, device=out.device).reshape(out.shape)
        )
        (g,) = torch.autograd.grad(out, z, grad_outputs=upstream, allow_unused=True)
        g = torch.zeros_like(z) if g is None else g
        return max(
            _spread(out.detach().cpu().numpy(), loss), _spread(g.detach().cpu().numpy(), grad)
        )

    def side_effects(
        self, logits: np.ndarray, grad_output: np.ndarray | None, options: dict[str, Any]
    ) -> tuple[list[str], float]:
        """What the function did besides computing: changed inputs and a gradient sharing the
        logits' storage (each a sentence), and the largest difference between two identical
        calls (0 for a deterministic kernel)."""
        torch = _torch()
        z, loss, tensors = self.run(logits, grad_output, options)
        grad = tensors.pop("__grad__")
        found = []
        given = torch.tensor(logits, device=self.device)
        if not torch.equal(z.detach(), given):
            found.append(f"it changed the logits it received ({_first_change(given, z.detach())})")
        for key, value in options.items():
            if not isinstance(value, np.ndarray):
                continue
            original = torch.tensor(value, device=self.device)
            if not torch.equal(tensors[key], original):
                changed = _first_change(original, tensors[key])
                found.append(f"it changed its argument {key!r} ({changed})")
        if _shares_storage(grad, z):
            found.append(
                "the gradient it returned shares storage with the logits (written in place: an "
                "upstream op that saved the logits would see them corrupted)"
            )
        loss2, grad2 = self(logits, grad_output=grad_output, **options)
        spread = max(
            _spread(loss.detach().cpu().numpy(), loss2),
            _spread(grad.detach().cpu().numpy(), grad2),
        )
        return found, spread


def _spread(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` where equal values (equal infinities, nan and nan) count as 0."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
        diff = np.where(same, 0.0, np.abs(a64 - b64))
    return float(np.max(diff, initial=0.0))


def _first_change(before: Any, after: Any) -> str:
    torch = _torch()
    diff = torch.nonzero(before != after)
    if diff.numel() == 0:
        return "its shape or dtype changed"
    idx = tuple(int(i) for i in diff[0])
    return f"first at {list(idx)}: {float(before[idx]):.8g} -> {float(after[idx]):.8g}"


def _shares_storage(a: Any, b: Any) -> bool:
    try:
        return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())
    except (AttributeError, RuntimeError):
        return False
