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

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from gradcheck_cli import guard
from gradcheck_cli.errors import XentcheckError


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise XentcheckError(
            "--impl torch needs PyTorch, which is not installed (pip install torch)"
        ) from None
    return torch


def _backward(loss: Any, z: Any, grad_output: np.ndarray | None) -> Any:
    """d(sum(grad_output * loss))/dz by torch's autograd (``grad_output`` None: ones), zeros
    when the loss does not depend on ``z``."""
    torch = _torch()
    (grad,) = torch.autograd.grad(
        loss, z, grad_outputs=_upstream(loss, grad_output), allow_unused=True
    )
    return torch.zeros_like(z) if grad is None else grad


def _upstream(loss: Any, grad_output: np.ndarray | None) -> Any:
    """``grad_output`` as a tensor shaped like the loss (ones when None)."""
    torch = _torch()
    if grad_output is None:
        return torch.ones_like(loss)
    return torch.tensor(grad_output, dtype=loss.dtype, device=loss.device).reshape(loss.shape)


def _tensor(value: Any, device: str = "cpu") -> Any:
    """NumPy arrays as tensors on ``device`` (a copy; integers stay int64); anything else as
    it is."""
    if isinstance(value, np.ndarray):
        return from_numpy(value, device)
    return value


def from_numpy(value: np.ndarray, device: str = "cpu", copy: bool = True) -> Any:
    """A NumPy array as a tensor of the same dtype on ``device``: a copy, or (``copy=False``,
    on the CPU) sharing its memory. bfloat16 (ml_dtypes, which torch does not read) goes
    through its bits, exactly."""
    torch = _torch()
    if value.dtype.name == "bfloat16":
        with warnings.catch_warnings():  # read-only: the bits are cloned or only read
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.from_numpy(np.ascontiguousarray(value).view(np.int16))
        bits = raw.view(torch.bfloat16)
        return bits.clone().to(device) if copy else bits.to(device)
    if copy or device != "cpu":
        return torch.tensor(value, device=device)
    with warnings.catch_warnings():  # a read-only array: fine, the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(value))


def to_numpy(tensor: Any) -> np.ndarray:
    """A tensor's values as a NumPy array of the same dtype (bfloat16 as ml_dtypes')."""
    torch = _torch()
    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        from gradcheck_cli.core.lowp import bfloat16

        out: np.ndarray = t.view(torch.int16).numpy().view(bfloat16())
        return out
    array: np.ndarray = t.numpy()
    return array


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

    def __init__(
        self, function: Callable[..., Any], device: str = "cpu", compile_backend: str | None = None
    ) -> None:
        self.device = _device(device)
        self.compile_backend = compile_backend
        """``torch.compile`` backend the function runs under (None: eager)."""
        if compile_backend is None:
            self.function = function
        else:  # lazy: compilation (and a missing compiler) shows at the first call
            try:
                self.function = _torch().compile(function, backend=compile_backend)
            except Exception as exc:  # an unknown backend
                raise XentcheckError(f"--compile-backend {compile_backend}: {exc}") from None

    def run(
        self, logits: np.ndarray, grad_output: np.ndarray | None, options: dict[str, Any]
    ) -> tuple[Any, Any, dict[str, Any]]:
        """Call the function on fresh tensors and back-propagate ``grad_output`` (ones when
        None): (the logits tensor, the loss tensor, the other tensors given), plus the gradient
        as ``tensors["__grad__"]``."""
        torch = _torch()
        z = from_numpy(logits, self.device).requires_grad_(True)
        tensors = {k: _tensor(v, self.device) for k, v in options.items()}
        with guard.calling("forward"):
            loss = self.function(z, **tensors)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"returned {type(loss).__name__}; expected a torch tensor (the loss)")
        with guard.calling("backward"):
            tensors["__grad__"] = _backward(loss, z, grad_output)
        return z, loss, tensors

    def __call__(
        self, logits: np.ndarray, *, grad_output: np.ndarray | None = None, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The loss and the gradient of ``sum(grad_output * loss)`` as NumPy arrays."""
        _, loss, tensors = self.run(logits, grad_output, options)
        return to_numpy(loss), to_numpy(tensors["__grad__"])

    def linear(
        self,
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None],
        grad_output: np.ndarray | None,
        options: dict[str, Any],
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """A fused linear cross-entropy ``f(hidden, weight, bias, **options) -> loss`` (bias
        None when the layer has none) on fresh leaf tensors: the loss and the gradients of
        ``sum(grad_output * loss)`` for hidden, weight and bias, as NumPy arrays."""
        torch = _torch()
        leaves = [
            None if a is None else from_numpy(a, self.device).requires_grad_(True) for a in arrays
        ]
        tensors = {k: _tensor(v, self.device) for k, v in options.items()}
        with guard.calling("forward"):
            loss = self.function(*leaves, **tensors)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"returned {type(loss).__name__}; expected a torch tensor (the loss)")
        wanted = [t for t in leaves if t is not None]
        with guard.calling("backward"):
            found = iter(
                torch.autograd.grad(loss, wanted, _upstream(loss, grad_output), allow_unused=True)
            )
        grads: list[np.ndarray | None] = []
        for t in leaves:
            if t is None:
                grads.append(None)
                continue
            g = next(found)
            grads.append(to_numpy(torch.zeros_like(t) if g is None else g))
        return to_numpy(loss), grads

    def forward(self, logits: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        """The loss alone, without building a graph (``torch.no_grad``): what the
        self-consistency check differences at LLM scale. On the CPU the tensor shares the
        array's memory (no copy of a 0.5 GB point): the caller rewrites the array before
        every call, so a kernel that writes into its input cannot corrupt the check."""
        torch = _torch()
        with torch.no_grad():
            z = _as_tensor(logits, self.device)
            tensors = {k: _tensor(v, self.device) for k, v in options.items()}
            with guard.calling("forward"):
                loss = self.function(z, **tensors)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"returned {type(loss).__name__}; expected a torch tensor (the loss)")
        return to_numpy(loss)

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
        given = from_numpy(logits, self.device)
        wide = torch.zeros((n, 2 * k), dtype=given.dtype, device=self.device)
        wide[:, ::2] = given
        z = wide[:, ::2].detach().requires_grad_(True)
        tensors = {key: _tensor(v, self.device) for key, v in options.items()}
        labels = tensors.get("labels")
        if labels is not None:
            longer = torch.zeros(labels.shape[0] + 1, dtype=labels.dtype, device=self.device)
            longer[1:] = labels
            tensors["labels"] = longer[1:]
        with guard.calling("forward"):
            out = self.function(z, **tensors)
        with guard.calling("backward"):
            g = _backward(out, z, grad_output)
        return max(_spread(to_numpy(out), loss), _spread(to_numpy(g), grad))

    def side_effects(
        self,
        logits: np.ndarray,
        grad_output: np.ndarray | None,
        options: dict[str, Any],
        previous: Previous = None,
    ) -> tuple[list[str], float]:
        """What the function did besides computing: changed inputs and a gradient sharing the
        logits' storage (each a sentence), and the largest difference between two identical
        calls (0 for a deterministic kernel): this call and ``previous`` (see
        :func:`call_spread`)."""
        torch = _torch()
        z, loss, tensors = self.run(logits, grad_output, options)
        grad = tensors.pop("__grad__")
        found = []
        given = _as_tensor(logits, self.device)  # no copy on the CPU
        if not torch.equal(z.detach(), given):
            found.append(f"it changed the logits it received ({_first_change(given, z.detach())})")
        for key, value in options.items():
            if not isinstance(value, np.ndarray):
                continue
            original = _as_tensor(value, self.device)
            if not torch.equal(tensors[key], original):
                changed = _first_change(original, tensors[key])
                found.append(f"it changed its argument {key!r} ({changed})")
        if _shares_storage(grad, z):
            found.append(
                "the gradient it returned shares storage with the logits (written in place: an "
                "upstream op that saved the logits would see them corrupted)"
            )
        del z, tensors  # a third call, if any, need not hold this one's inputs
        spread = call_spread(
            to_numpy(loss),
            to_numpy(grad),
            previous,
            lambda: self(logits, grad_output=grad_output, **options),
        )
        return found, spread


#: An earlier identical call for the determinism check: its (loss, gradient), their
#: :func:`fingerprint` (so that a 0.5 GB gradient need not be kept), or None.
Previous = tuple[np.ndarray, np.ndarray] | bytes | None


def fingerprint(loss: np.ndarray, grad: np.ndarray) -> bytes:
    """SHA-256 of the loss (as float64) and the gradient (in its own dtype), with their
    shapes: equal fingerprints mean bit-identical results (0.3 s for 0.5 GB here)."""
    digest = hashlib.sha256()
    for a in (np.asarray(loss, dtype=np.float64), np.asarray(grad)):
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.reshape(-1).view(np.uint8).data)
    return digest.digest()


def call_spread(
    loss: np.ndarray,
    grad: np.ndarray,
    previous: Previous,
    again: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> float:
    """The largest difference between this call's results and ``previous``: 0 at once when a
    fingerprint matches, else the values of ``previous`` or, when it is None or only a
    fingerprint that differs, of one more call (``again``)."""
    if isinstance(previous, bytes):
        if fingerprint(loss, grad) == previous:
            return 0.0
        previous = None
    loss2, grad2 = previous if previous is not None else again()
    return max(_spread(loss, loss2), _spread(grad, grad2))


def _as_tensor(value: np.ndarray, device: str) -> Any:
    """``value`` as a tensor on ``device``, sharing its memory on the CPU (for comparisons
    only: never handed to the function under test)."""
    return from_numpy(value, device, copy=False)


#: Values per block when two large results are compared (2^22: 32 MiB in float64).
_BLOCK = 1 << 22


def _spread(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` where equal values (equal infinities, nan and nan) count as 0; 0 at once
    when the two are identical, otherwise in float64 blocks (no copy of a large gradient)."""
    a, b = np.asarray(a), np.asarray(b)
    flat_a, flat_b = np.ravel(a), np.ravel(b)
    if flat_a.size != flat_b.size:
        flat_b = np.broadcast_to(b, a.shape).ravel()
    blocks = range(0, flat_a.size, _BLOCK)
    if (
        a.shape == b.shape
        and all(  # identical (the usual case): no float64 pass at all
            np.array_equal(flat_a[s : s + _BLOCK], flat_b[s : s + _BLOCK]) for s in blocks
        )
    ):
        return 0.0
    top = 0.0
    for s in blocks:
        a64 = flat_a[s : s + _BLOCK].astype(np.float64)
        b64 = flat_b[s : s + _BLOCK].astype(np.float64)
        with np.errstate(invalid="ignore"):
            same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
            diff = np.where(same, 0.0, np.abs(a64 - b64))
        top = max(top, float(np.max(diff, initial=0.0)))
    return top


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


#: Exception names and messages by which torch.compile says the machine cannot compile (no C++
#: compiler, no Triton), as opposed to the function failing under compilation.
_NO_COMPILER = ("InvalidCxxCompiler", "No working C++ compiler", "Cannot find a working triton")


def missing_compiler(exc: BaseException) -> str | None:
    """torch.compile's own sentence when ``exc`` means this machine has no working compiler
    for the backend (rather than a bug of the compiled function), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{type(current).__name__}: {current}"
        if any(marker in text for marker in _NO_COMPILER):
            return str(current).strip().splitlines()[0]
        current = current.__cause__ or current.__context__
    return None
