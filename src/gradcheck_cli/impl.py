"""Checking someone else's implementation (``xentcheck run --impl TARGET``).

The protocol (docs/impl.md)::

    def my_cross_entropy(logits, **options) -> (loss, grad)

``logits`` is a NumPy array of shape (N, K) in the spec's dtype (float64 by default). The options
are passed by keyword, and only those the spec needs:

* always ``reduction`` (``"mean" | "sum" | "none"``) and ``loss``
  (``"softmax_cross_entropy" | "sigmoid_cross_entropy"``);
* ``labels`` (int64 array (N,)) or ``targets`` (float array (N, K));
* each loss option the spec sets: ``weight``, ``ignore_index``, ``label_smoothing``,
  ``softcap``, ``z_loss``, ``pos_weight`` (arrays for the array-valued ones).

It returns the loss (a number, or the per-sample array for ``none``) and the gradient of the
*reduced* loss with respect to the logits, shape (N, K) (for ``none``, row n holds dl_n/dz_n).

An option the function cannot accept (it has no parameter of that name and no ``**kwargs``) is
an error naming the option, never a silent skip: a kernel without label smoothing cannot be
checked on a smoothed spec. Each spec gets three checks, reported like the other comparisons:
the loss against the reference loss, the gradient against the reference gradient element by
element, and the gradient against the implementation's *own* forward pass along seeded random
directions (complex step when the function accepts complex logits, central differences
otherwise), which catches a backward that disagrees with its forward even where conventions
differ from the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.compare import Comparison, Tolerance, compare
from gradcheck_cli.core import Problem
from gradcheck_cli.errors import XentcheckError
from gradcheck_cli.model import Spec, loss_options
from gradcheck_cli.precision import derivative_scale

FloatArray = NDArray[np.float64]
ImplFunction = Callable[..., Any]

#: Seeded random directions of the self-consistency check.
DIRECTIONS = 4
DIRECTION_SEED = 1234

#: Default tolerances of implementation checks: (rtol, atol factor) per dtype and check. The
#: absolute part is the factor times the computation's natural scale (see :func:`scales`): a
#: correct implementation differs from the reference by a few ulps *of its intermediate values*
#: (PyTorch's ``logsumexp - z_y`` and ``p - onehot`` cancel where the exact loss or gradient is
#: tiny), so the allowance follows those, not the possibly tiny result. In float64 the defaults
#: catch a relative error of 1e-9 in a loss and 1e-7 in any gradient element above 1e-5 of the
#: gradient's scale (benchmarks/impl_sensitivity.py measures the smallest planted error caught).
IMPL_TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "float64": {"loss": (1e-11, 1e-13), "grad": (1e-9, 1e-13), "self": (1e-6, 1e-9)},
    "float32": {"loss": (1e-5, 1e-5), "grad": (1e-4, 1e-5), "self": (1e-2, 1e-3)},
    "float16": {"loss": (2e-2, 1e-2), "grad": (5e-2, 1e-2), "self": (0.2, 0.1)},
}


class ImplError(XentcheckError):
    """The implementation could not be loaded or called, or returned something unusable."""


@dataclass(frozen=True)
class Implementation:
    """A loaded implementation."""

    name: str
    """As given on the command line."""
    function: ImplFunction
    accepts: frozenset[str] | None
    """Keyword options the function accepts (None: it takes ``**kwargs``)."""


def load(target: str) -> Implementation:
    """Load ``package.module:function``, ``path/to/file.py:function`` or ``torch``."""
    if target == "torch":
        from gradcheck_cli import torch_adapter

        try:
            torch_adapter.require_torch()
        except XentcheckError as exc:
            raise ImplError(str(exc)) from None
        return _wrap(target, torch_adapter.torch_cross_entropy)
    if ":" not in target:
        raise ImplError(
            f"--impl {target!r}: expected module:function, path/to/file.py:function or torch"
        )
    where, _, attr = target.rpartition(":")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise ImplError(f"--impl {target!r}: no such file {where}")
        spec = importlib.util.spec_from_file_location(f"_xentcheck_impl_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImplError(f"--impl {target!r}: cannot import {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ImplError(
                f"--impl {target!r}: importing {where} raised {type(exc).__name__}: {exc}"
            ) from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise ImplError(
                f"--impl {target!r}: cannot import {where} ({type(exc).__name__}: {exc})"
            ) from None
    function = getattr(module, attr, None)
    if function is None or not callable(function):
        raise ImplError(f"--impl {target!r}: {where} has no function {attr!r}")
    return _wrap(target, function)


def _wrap(name: str, function: ImplFunction) -> Implementation:
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return Implementation(name, function, None)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return Implementation(name, function, None)
    names = frozenset(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )
    return Implementation(name, function, names)


def options_for(spec: Spec) -> dict[str, Any]:
    """The keyword options a spec passes to an implementation (see the module docstring)."""
    options: dict[str, Any] = {"reduction": spec.reduction, "loss": spec.loss}
    if spec.labels is not None:
        options["labels"] = spec.labels.copy()
    if spec.targets is not None:
        options["targets"] = spec.targets.astype(spec.dtype)
    for key, value in loss_options(spec).items():
        options[key] = value.astype(spec.dtype) if isinstance(value, np.ndarray) else value
    return options


def call(impl: Implementation, logits: np.ndarray, options: dict[str, Any]) -> tuple[Any, Any]:
    """Call the implementation; any exception becomes an :class:`ImplError` naming it."""
    if impl.accepts is not None:
        missing = [k for k in options if k not in impl.accepts]
        required = [k for k in missing if k not in ("loss", "reduction")]
        if required:
            raise ImplError(
                f"implementation {impl.name} does not accept option "
                f"{', '.join(repr(k) for k in required)} that this spec sets; add the "
                "parameter (or **options) so it can be checked"
            )
        options = {k: v for k, v in options.items() if k in impl.accepts}
    try:
        out = impl.function(logits.copy(), **options)
    except Exception as exc:
        raise ImplError(f"implementation {impl.name} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(out, tuple) or len(out) != 2:
        raise ImplError(
            f"implementation {impl.name} returned {type(out).__name__}; expected a tuple "
            "(loss, grad)"
        )
    return out


def checked_outputs(
    impl: Implementation,
    logits: np.ndarray,
    options: dict[str, Any],
    loss_shape: tuple[int, ...],
    finite_loss: bool = True,
) -> tuple[FloatArray, FloatArray]:
    """Call and validate: the loss has ``loss_shape`` (``()`` for a reduced loss), the gradient
    has the logits' shape, both are real and numeric, the gradient is finite, and so is the
    loss unless ``finite_loss`` is False (the reference loss itself is nan or inf)."""
    loss, grad = call(impl, logits, options)
    loss_arr = _as_array(impl, "loss", loss)
    grad_arr = _as_array(impl, "gradient", grad)
    if loss_arr.shape != loss_shape:
        raise ImplError(
            f"implementation {impl.name} returned a loss of shape {loss_arr.shape}; expected "
            f"{loss_shape or 'a scalar'}"
        )
    if grad_arr.shape != logits.shape:
        raise ImplError(
            f"implementation {impl.name} returned a gradient of shape {grad_arr.shape}; "
            f"expected {logits.shape} like the logits"
        )
    for what, arr in (("loss", loss_arr), ("gradient", grad_arr)):
        if what == "loss" and not finite_loss:
            continue
        if not np.all(np.isfinite(arr)):
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0]) if arr.ndim else ()
            raise ImplError(
                f"implementation {impl.name} returned a non-finite {what} "
                f"({arr[idx] if arr.ndim else arr}" + (f" at {list(idx)})" if idx else ")")
            )
    return loss_arr, grad_arr


def _as_array(impl: Implementation, what: str, value: Any) -> FloatArray:
    if hasattr(value, "detach"):  # a torch tensor slipped through
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise ImplError(
            f"implementation {impl.name} returned a {what} that is not an array "
            f"({type(value).__name__}: {exc})"
        ) from None
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ImplError(
            f"implementation {impl.name} returned a {what} of type {type(value).__name__} "
            f"(dtype {arr.dtype}); expected real numbers"
        )
    out: FloatArray = arr.astype(np.float64)
    return out


def scales(problem: Problem) -> dict[str, float]:
    """The natural scale of each check's values: ``grad`` is the largest weight a row puts on
    its derivatives (``alpha_n sum(q_n)``, the size of ``p sum(q)`` and ``q``), ``loss`` that
    times ``1 + max|z|`` (the size of ``logsumexp(z)``), ``self`` the gradient's."""
    grad = max(derivative_scale(problem), float(np.finfo(np.float64).tiny))
    finite = np.isfinite(problem.logits)
    top = float(np.max(np.abs(problem.logits[finite]))) if np.any(finite) else 0.0
    n, _ = problem.shape
    rows = n if problem.reduction != "mean" else 1
    return {"grad": grad, "self": grad, "loss": grad * rows * (1.0 + top)}


def tolerance(check: str, dtype: str, scale: float) -> Tolerance:
    """The default tolerance of an implementation check at the given natural scale."""
    rtol, factor = IMPL_TOLERANCES[dtype][check]
    return Tolerance(rtol=rtol, atol=factor * scale)


def self_consistency(
    impl: Implementation,
    logits: np.ndarray,
    options: dict[str, Any],
    grad: FloatArray,
    tol: Tolerance,
    dtype: str,
) -> Comparison:
    """``g.d`` against the derivative of the implementation's own loss along ``d``, for
    :data:`DIRECTIONS` seeded random unit directions (zero on -inf logits).

    The derivative is a complex step (``h = 1e-20``) when the implementation accepts complex
    logits and returns a complex loss; otherwise Richardson-extrapolated central differences
    (steps ``h`` and ``h/2`` with ``h = eps^(1/5)``, not scaled by ``|z|``: the loss's curvature
    does not grow with the logits' level). Their rounding error, about ``3 eps |L| / h``, is added
    to the absolute tolerance.
    """
    z = logits
    finite = np.isfinite(z)
    rng = np.random.default_rng(DIRECTION_SEED)
    dirs = rng.normal(size=(DIRECTIONS, *z.shape))
    dirs[:, ~finite] = 0.0
    dirs /= np.linalg.norm(dirs.reshape(DIRECTIONS, -1), axis=1).reshape(-1, *([1] * z.ndim))
    predicted = np.array([float(np.sum(grad * d)) for d in dirs])
    measured, how, rounding = _directional(impl, z, finite, options, dirs)
    return compare(
        f"impl self-consistency ({how})",
        measured,
        "impl gradient · d",
        predicted,
        Tolerance(rtol=tol.rtol, atol=tol.atol + rounding),
        quantity="directions",
        dtype=dtype,
    )


def _directional(
    impl: Implementation,
    z: np.ndarray,
    finite: np.ndarray,
    options: dict[str, Any],
    dirs: np.ndarray,
) -> tuple[FloatArray, str, float]:
    """Directional derivatives of the implementation's summed loss, how they were taken, and
    the rounding error to expect from them."""

    def total(values: np.ndarray) -> Any:
        loss, _ = call(impl, values, options)
        return np.sum(np.asarray(loss.detach().numpy() if hasattr(loss, "detach") else loss))

    h = 1e-20
    try:
        with np.errstate(all="ignore"):
            probe = total(np.where(finite, z + 1j * h * dirs[0], z))
        complex_ok = bool(np.iscomplexobj(probe) and np.isfinite(probe))
    except ImplError:
        complex_ok = False
    if complex_ok:
        out = [float(np.imag(total(np.where(finite, z + 1j * h * d, z)))) / h for d in dirs]
        return np.array(out), "complex step", 0.0
    eps = float(np.finfo(z.dtype).eps)
    zf = np.where(finite, z, 0.0)
    step = eps ** (1 / 5)

    def central(d: np.ndarray, hh: float) -> float:
        up = np.where(finite, (zf + hh * d).astype(z.dtype), z)
        down = np.where(finite, (zf - hh * d).astype(z.dtype), z)
        return (float(np.real(total(up))) - float(np.real(total(down)))) / (2 * hh)

    out = [(4 * central(d, step / 2) - central(d, step)) / 3 for d in dirs]
    level = abs(float(np.real(total(z))))
    return np.array(out), "Richardson differences", 3 * eps * max(1.0, level) / step
