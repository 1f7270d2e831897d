"""Checking someone else's implementation (``xentcheck run --impl TARGET``).

The protocol (docs/impl.md)::

    def my_cross_entropy(logits, **options) -> (loss, grad)

``logits`` is a NumPy array of shape (N, K) in the spec's dtype (float64 by default). The options
are passed by keyword, and only those the spec needs:

* always ``reduction`` (``"mean" | "sum" | "none"``) and ``loss``
  (``"softmax_cross_entropy" | "sigmoid_cross_entropy"``);
* ``labels`` (int64 array (N,)) or ``targets`` (float array (N, K));
* each loss option the spec sets, by its name in the option table (``core.options.OPTIONS``:
  ``weight``, ``ignore_index``, ``label_smoothing``, ...; arrays for the array-valued ones).

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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli import guard
from gradcheck_cli.compare import Comparison, Tolerance, compare, ulp
from gradcheck_cli.core import (
    BatchScales,
    CrossEntropyProblem,
    Problem,
    SigmoidProblem,
    batch_scales,
    rows_of,
)
from gradcheck_cli.core.lowp import is_float
from gradcheck_cli.core.options import set_options
from gradcheck_cli.core.sigmoid_ce import reduction_scale
from gradcheck_cli.core.softmax_ce import (
    capped,
    float64_scales,
    label_columns,
    label_weights,
    weighted_targets,
)
from gradcheck_cli.errors import SpecError, XentcheckError
from gradcheck_cli.methods.complex_step import COMPLEX_STEP
from gradcheck_cli.methods.differences import (
    PROBE_SEED,
    SELF_CHECK_SEED,
    balanced_step,
    difference_error,
    directional_quotient,
    pair_differences,
    points,
)
from gradcheck_cli.model import Check, Spec
from gradcheck_cli.precision import derivative_scale

FloatArray = NDArray[np.float64]
ImplFunction = Callable[..., Any]

SOFTMAX = "softmax_cross_entropy"

#: Seeded random directions of the self-consistency check.
DIRECTIONS = 4

#: Default tolerances of implementation checks in float64 and float32: (rtol, atol factor) per
#: check. The absolute part is the factor times the computation's natural scale (:class:`Scales`):
#: a correct implementation differs from the reference by a few ulps *of its intermediate
#: values* (PyTorch's ``logsumexp - z_y`` and ``p - onehot`` cancel where the exact loss or
#: gradient is tiny), so the allowance follows those, not the possibly tiny result. In float64
#: the defaults catch a relative error of 1e-9 in a loss and 1e-7 in any gradient element above
#: 1e-5 of the gradient's scale (benchmarks/impl_sensitivity.py); in float32 the gradient's
#: 1e-6 (8 ulps of the scale) is 7 times the worst error of the correct implementations of
#: benchmarks/trust.py, and catches a gradient scaled by 1 +- 1e-3 at p_y = 0.99.
IMPL_TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "float64": {"loss": (1e-11, 1e-13), "grad": (1e-9, 1e-13), "self": (1e-6, 1e-9)},
    "float32": {"loss": (1e-5, 1e-5), "grad": (1e-4, 1e-6), "self": (1e-2, 1e-3)},
    "float16": {"self": (0.2, 0.1)},
    "bfloat16": {"self": (0.5, 0.5)},
}

#: Half precision: the loss and the gradient are held to what an *accurate* kernel achieves
#: (float32 arithmetic inside, one rounding at the end, as Liger-Kernel's fix of #1268 does):
#: ``HALF_ULPS`` units of the dtype's relative spacing per element, plus ``HALF_FLOOR_ULPS`` ulps
#: of the result's largest magnitude (elements far below the scale need not be accurate to
#: their own ulp) and a few of the smallest subnormal. A kernel that rounds ``p_y`` to half
#: precision before subtracting 1 (Liger-Kernel #1268; also plain float16 arithmetic, as
#: PyTorch's CPU kernels do) loses most of the true-class gradient at p_y >= 0.99 and fails.
HALF_DTYPES = ("float16", "bfloat16")
HALF_ULPS = 4.0
HALF_FLOOR_ULPS = 2.0
#: Besides its one final rounding, an accurate half-precision kernel's result carries float32's
#: rounding of the terms it combined: far below the half dtype's spacing at the size of those
#: terms, but not at an exact zero (at a uniform row with label smoothing 1, p - q is 0 and
#: float32 gives 7e-9, which bfloat16 represents). The half-precision allowances add this many
#: float32 ulps of the check's natural scale (:class:`Scales`); the Liger-Kernel #1268 error at
#: p_y = 0.99 is 1e4 times larger.
INNER_ROUNDINGS = 4.0


class ImplError(XentcheckError):
    """The implementation could not be loaded or called, or returned something unusable."""

    original: BaseException | None = None
    """The implementation's own exception, when it raised one (``--debug`` shows its
    traceback)."""


def _where(exc: BaseException) -> str:
    """`` (at file.py:12 in f: `the line`)`` for the innermost frame of the traceback that is
    not xentcheck's, NumPy's or the standard library's: the user's own line."""
    import traceback
    from pathlib import Path

    ours = str(Path(__file__).resolve().parent)
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(ours)
        and "site-packages" not in f.filename
        and not f.filename.startswith(sys.base_prefix)
    ]
    if not frames:
        return ""
    f = frames[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" (at {f.filename}:{f.lineno} in {f.name}:{code})"


@dataclass(frozen=True)
class Implementation:
    """A loaded implementation."""

    name: str
    """As given on the command line."""
    function: ImplFunction
    accepts: frozenset[str] | None
    """Keyword options the function accepts (None: it takes ``**kwargs``)."""
    native: Any = None
    """For a framework-native loss (``torch:...``): its adapter (``torch_native.TorchNative``),
    which back-propagates a ``grad_output`` and checks side effects; None for the NumPy
    ``(loss, grad)`` protocol."""
    builtin: str | None = None
    """``torch`` or ``optax`` for xentcheck's built-in framework loss (a ``linear:`` spec swaps
    in its fused twin, ``torch_adapter.torch_linear_loss`` or ``jax_native.optax_linear_loss``);
    None for a user's function."""
    device: str = "cpu"
    """Where a framework-native implementation places its tensors (``--device``)."""
    compile_backend: str | None = None
    """The ``torch.compile`` backend (``--compile``), or None."""
    bound: tuple[tuple[str, Any], ...] = ()
    """Keyword options every call of this check passes besides the spec's (``--vocab-chunks``
    binds the kernel's chunk count: :func:`bind`)."""
    target: str | None = None
    """What :func:`load` was given (None for a Python callable): an isolated worker loads the
    implementation again from it."""


def is_native_target(target: str) -> bool:
    """Whether ``--impl target`` names a framework-native loss (torch, JAX/optax)."""
    return target in ("torch", "optax") or target.startswith(("torch:", "jax:"))


def reference(
    target: str, device: str = "cpu", compile_backend: str | None = None
) -> Implementation:
    """An implementation *named* but not loaded: an isolated run's parent never imports the
    code under test (its worker loads it from ``target``, ``gradcheck_cli.isolation``).
    Calling it is a bug. The options are checked as :func:`load` checks them."""
    _check_placement(target, device, compile_backend)
    name = target if compile_backend is None else f"{target} [compiled: {compile_backend}]"
    return Implementation(
        name,
        _not_loaded,
        None,
        builtin=target if target in ("torch", "optax") else None,
        device=device,
        compile_backend=compile_backend,
        target=target,
    )


def _not_loaded(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("an isolated implementation runs in its worker, not here")


def bound_label(impl: Implementation) -> str:
    """`` [name=value]`` for each bound option (empty when none): tells apart the rows of one
    implementation checked with several chunk counts."""
    return "".join(f" [{k}={v}]" for k, v in impl.bound)


def bind(impl: Implementation, name: str, value: Any) -> Implementation:
    """``impl`` called with ``name=value`` on every call, and named so in reports."""
    return replace(impl, name=f"{impl.name} [{name}={value}]", bound=(*impl.bound, (name, value)))


def load(target: str, device: str = "cpu", compile_backend: str | None = None) -> Implementation:
    """Load ``package.module:function``, ``path/to/file.py:function`` (the NumPy protocol), or
    a framework-native loss: ``torch``, ``torch:package.module:function``,
    ``torch:path/to/file.py:function`` (``gradcheck_cli.torch_native``), ``optax``,
    ``jax:package.module:function``, ``jax:path/to/file.py:function``
    (``gradcheck_cli.jax_native``). ``device`` places the tensors: torch ``cpu``, ``cuda``,
    ``cuda:N``, ``mps``; JAX ``cpu``, ``cuda``/``gpu``, ``tpu`` (``:N``). ``compile_backend``:
    the torch loss under ``torch.compile`` with that backend, named ``TARGET [compiled:
    BACKEND]``."""
    _check_placement(target, device, compile_backend)
    if target == "optax" or target.startswith("jax:"):
        return _native(target, "jax:", "optax", device)
    if target == "torch" or target.startswith("torch:"):
        return _native(target, "torch:", "torch", device, compile_backend)
    return replace(wrap(target, _import_function(target, target)), target=target)


def _check_placement(target: str, device: str, compile_backend: str | None) -> None:
    """ImplError for ``--compile`` on a target that is not torch, or ``--device`` on a NumPy
    one."""
    is_torch = target == "torch" or target.startswith("torch:")
    if compile_backend is not None and not is_torch:
        raise ImplError(f"--compile applies to torch implementations only, not {target!r}")
    if device != "cpu" and not is_native_target(target):
        raise ImplError(f"--device {device}: a NumPy implementation runs where NumPy does")


def _native(
    target: str, prefix: str, builtin: str, device: str, compile_backend: str | None = None
) -> Implementation:
    """A framework-native implementation: the built-in loss (``torch``: PyTorch's own,
    ``optax``: optax's) or ``prefix`` + a function to import, behind its framework's adapter
    (``torch_native.TorchNative`` or ``jax_native.JaxNative``)."""
    try:
        if prefix == "torch:":
            from gradcheck_cli import torch_adapter, torch_native

            own: ImplFunction = torch_adapter.torch_loss
            make: Callable[[ImplFunction], Any] = partial(
                torch_native.TorchNative, device=device, compile_backend=compile_backend
            )
        else:
            from gradcheck_cli import jax_native

            jax_native._jax()
            own = jax_native.optax_loss
            make = partial(jax_native.JaxNative, device=device)
        function = own if target == builtin else _import_function(target, target[len(prefix) :])
        user = wrap(target, function)
        adapter = make(user.function)
    except ImplError:
        raise
    except XentcheckError as exc:  # the framework is missing, or the device is
        raise ImplError(str(exc)) from None
    accepts = None if user.accepts is None else user.accepts | {"grad_output"}
    name = target if compile_backend is None else f"{target} [compiled: {compile_backend}]"
    return Implementation(
        name,
        adapter,
        accepts,
        native=adapter,
        builtin=builtin if target == builtin else None,
        device=device,
        compile_backend=compile_backend,
        target=target,
    )


def _import_function(target: str, location: str) -> ImplFunction:
    """The function named by ``location`` (``module:function`` or ``file.py:function``)."""
    if ":" not in location:
        raise ImplError(
            f"--impl {target!r}: expected module:function, path/to/file.py:function, torch, "
            "torch:module:function, optax or jax:module:function"
        )
    where, _, attr = location.rpartition(":")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise ImplError(f"--impl {target!r}: no such file {where}")
        spec = importlib.util.spec_from_file_location(f"_xentcheck_impl_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImplError(f"--impl {target!r}: cannot import {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        folder = str(path.resolve().parent)  # the file may import modules that sit beside it
        if folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            with guard.calling("import"):
                spec.loader.exec_module(module)
        except Exception as exc:
            raise ImplError(
                f"--impl {target!r}: importing {where} raised {type(exc).__name__}: {exc}"
            ) from None
    else:
        try:
            with guard.calling("import"):
                module = importlib.import_module(where)
        except Exception as exc:
            raise ImplError(
                f"--impl {target!r}: cannot import {where} ({type(exc).__name__}: {exc})"
            ) from None
    function = getattr(module, attr, None)
    if function is None or not callable(function):
        raise ImplError(f"--impl {target!r}: {where} has no function {attr!r}")
    return function  # type: ignore[no-any-return]


def wrap(name: str, function: ImplFunction) -> Implementation:
    """An :class:`Implementation` of a callable, with the keyword options it accepts."""
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


def options_for(spec: Spec, dtype: str | None = None) -> dict[str, Any]:
    """The keyword options a spec passes to an implementation (see the module docstring).

    Every floating-point array (targets, class weights, pos_weight) is in the check's ``dtype``
    (default: the spec's), like the logits: a float32 kernel gets float32 weights, never a mix.
    Labels stay int64.
    """
    dtype = dtype or spec.dtype
    options: dict[str, Any] = {"reduction": spec.reduction, "loss": spec.loss}
    if spec.labels is not None:
        options["labels"] = spec.labels.astype(np.int64)
    if spec.targets is not None:
        options["targets"] = spec.targets.astype(dtype)
    for key, value in set_options(spec).items():
        options[key] = value.astype(dtype) if isinstance(value, np.ndarray) else value
    return options


def call(
    impl: Implementation, logits: np.ndarray, options: dict[str, Any], label: str = "call"
) -> tuple[Any, Any]:
    """Call the implementation (guarded, as ``label``: :func:`guard.calling`); any exception
    becomes an :class:`ImplError` naming it."""
    options = accepted_options(impl, options)
    try:
        # a framework adapter copies into its own tensors; a NumPy function gets a copy
        given = logits if impl.native is not None else logits.copy()
        with guard.calling(label):
            out = impl.function(given, **options)
    except Exception as exc:
        error = ImplError(
            f"implementation {impl.name} raised {type(exc).__name__}: {exc}{_where(exc)}"
            f"{guard.memory_hint(exc)}"
        )
        error.original = exc
        raise error from None
    if not isinstance(out, tuple) or len(out) != 2:
        raise ImplError(
            f"implementation {impl.name} returned {type(out).__name__}; expected a tuple "
            "(loss, grad)"
        )
    return out


def accepted_options(impl: Implementation, options: dict[str, Any]) -> dict[str, Any]:
    """The options the implementation takes; an :class:`ImplError` for one the spec sets
    that it does not take (``reduction`` and ``loss`` excepted: offered, not forced)."""
    if impl.accepts is not None:
        if "loss" not in impl.accepts and options.get("loss", SOFTMAX) != SOFTMAX:
            raise ImplError(
                f"implementation {impl.name} takes no 'loss' parameter, so it is a softmax "
                f"cross-entropy implementation, and this spec is {options['loss']}; add a "
                "'loss' parameter (or **options) if it implements that loss too"
            )
        missing = [k for k in options if k not in impl.accepts]
        required = [k for k in missing if k not in ("loss", "reduction")]
        if required:
            raise ImplError(
                f"implementation {impl.name} does not accept option "
                f"{', '.join(repr(k) for k in required)} that this spec sets; add the "
                "parameter (or **options) so it can be checked"
            )
        options = {k: v for k, v in options.items() if k in impl.accepts}
    return options


def upstream_gradient(shape: tuple[int, ...]) -> np.ndarray:
    """The seeded ``grad_output`` a framework-native loss is back-propagated with: uniform in
    [0.5, 2] per sample (or element) for ``none``, and for a reduced loss a scalar in [1.25, 2]
    (never 1: a backward that ignores ``grad_output`` must show)."""
    rng = np.random.default_rng([SELF_CHECK_SEED, 1])
    if not shape:
        return np.asarray(rng.uniform(1.25, 2.0))
    return rng.uniform(0.5, 2.0, size=shape)


def upstream_for(impl: Implementation, spec: Spec, shape: tuple[int, ...]) -> np.ndarray | None:
    """The ``grad_output`` a loss of shape ``shape`` ((), (N,) or (N, K)) is back-propagated
    with: the spec's own ``grad_output`` when it gives one, else the seeded
    :func:`upstream_gradient`; None for the NumPy protocol, which returns the plain gradient."""
    if impl.native is None:
        return None
    if spec.grad_output is None:
        return upstream_gradient(shape)
    given = np.asarray(spec.grad_output, dtype=np.float64)
    if given.shape != shape or not np.all(np.isfinite(given)):
        raise SpecError(
            spec.file,
            f"expected finite numbers of shape {shape} like the loss, found shape "
            f"{given.shape}" + ("" if np.all(np.isfinite(given)) else " with a nan or inf"),
            field="grad_output",
        )
    return given


#: Most values of a given ``grad_output`` a note prints.
NOTE_VALUES = 8


def upstream_note(upstream: np.ndarray, given: bool) -> str:
    """How the implementation was back-propagated (``impl grad_output`` in the notes): the
    seeded default, or the spec's ``grad_output`` with its values (ones included: the user
    chose them) and what such values cannot show."""
    if not given:
        return "with a seeded grad_output " + (
            f"of {float(upstream):.6g}" if upstream.ndim == 0 else "uniform in [0.5, 2] per sample"
        )
    flat = np.ravel(upstream)
    shown = ", ".join(f"{float(x):.6g}" for x in flat[:NOTE_VALUES])
    if upstream.ndim:
        more = f", ... ({flat.size} values)" if flat.size > NOTE_VALUES else ""
        shape = f" (shape {upstream.shape}, row by row)" if upstream.ndim > 1 else ""
        shown = f"[{shown}{more}]{shape}"
    blind = []
    if not np.any(flat):
        blind.append("a backward that returns zeros")
    if np.all(flat == 1.0):
        blind.append("a backward that ignores grad_output")
    if flat.size > 1 and np.all(flat == flat[0]):
        blind.append("a backward that uses grad_output[0] for every row")
    caveat = f" ({'; '.join(blind)}: each would pass with these values)" if blind else ""
    return f"with the spec's grad_output {shown}{caveat}"


def native_checks(
    impl: Implementation,
    logits: np.ndarray,
    options: dict[str, Any],
    upstream: np.ndarray,
    checks: NativeChecks | None = None,
    previous: tuple[np.ndarray, np.ndarray] | bytes | None = None,
) -> list[Check]:
    """A framework-native loss's side effects and determinism, as checks: its inputs are
    unchanged after the call, its gradient does not share the logits' storage (unless
    ``allow_inplace``), two identical calls agree (within ``nondeterministic_tol``: atomics
    make some kernels non-deterministic), and with ``views`` it gives the same result on a
    non-contiguous logits view and offset labels."""
    checks = checks or NativeChecks()
    given = accepted_options(impl, {k: v for k, v in options.items() if k != "grad_output"})
    try:
        with guard.calling("side-effect and determinism calls"):
            found, spread = impl.native.side_effects(logits, upstream, given, previous)
        view_spread = None
        if checks.views:
            with guard.calling("views call"):
                view_spread = impl.native.views(logits, upstream, given)
    except Exception as exc:
        raise ImplError(
            f"implementation {impl.name} raised {type(exc).__name__}: {exc}{_where(exc)}"
        ) from None
    if checks.allow_inplace:
        found = [f for f in found if "shares storage" not in f]
    effects = "; ".join(found) if found else "inputs unchanged, gradient in its own storage"
    tol = checks.nondeterministic_tol
    out = [
        Check("impl_side_effects", not found, effects),
        Check(
            "impl_deterministic",
            spread <= tol,
            f"two identical calls differ by at most {spread:.3g} (allowed {tol:g})",
        ),
    ]
    if view_spread is not None:
        out.append(
            Check(
                "impl_views",
                view_spread <= tol,
                "on a non-contiguous logits view and labels[1:] of a longer tensor the result "
                f"differs by at most {view_spread:.3g} (allowed {tol:g})",
            )
        )
    return out


@dataclass(frozen=True)
class NativeChecks:
    """Choices for the framework-native checks (``--allow-inplace``, ``--nondeterministic-tol``,
    ``--views``)."""

    allow_inplace: bool = False
    nondeterministic_tol: float = 0.0
    views: bool = False


def checked_outputs(
    impl: Implementation,
    logits: np.ndarray,
    options: dict[str, Any],
    loss_shape: tuple[int, ...],
    widen: bool = True,
) -> tuple[FloatArray, FloatArray]:
    """Call and validate: the loss has ``loss_shape`` (``()`` for a reduced loss), the gradient
    has the logits' shape, and both are real numbers, as float64 (``widen=False``: a floating
    gradient keeps its dtype, so fast mode holds no (N, K) float64 copy). Non-finite values are
    *results*, not errors: :func:`finiteness` turns them into failed checks."""
    loss, grad = call(impl, logits, options)
    loss_arr = _as_array(impl, "loss", loss)
    grad_arr = _as_array(impl, "gradient", grad, widen)
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
    return loss_arr, grad_arr


def finiteness(
    impl: Implementation,
    loss: FloatArray,
    grad: FloatArray,
    ref_loss: FloatArray,
    ref_grad: FloatArray,
) -> list[Check]:
    """A failed ``impl_finite`` check for a nan or inf the implementation returned where the
    reference is finite, naming the first such element (none when everything agrees)."""
    out = []
    for what, got, ref in (("loss", loss, ref_loss), ("gradient", grad, ref_grad)):
        bad = ~np.isfinite(got) & np.isfinite(np.broadcast_to(ref, got.shape))
        if not np.any(bad):
            continue
        idx = tuple(int(i) for i in np.argwhere(bad)[0]) if got.ndim else ()
        where = f" at {list(idx)}" if idx else ""
        out.append(
            Check(
                "impl_finite",
                False,
                f"implementation {impl.name} returned {got[idx] if got.ndim else got} in the "
                f"{what}{where} where the reference is finite "
                f"({float(np.broadcast_to(ref, got.shape)[idx]):.10g}); "
                f"{int(np.count_nonzero(bad))} such element(s)",
            )
        )
    return out


def _as_array(impl: Implementation, what: str, value: Any, widen: bool = True) -> FloatArray:
    if hasattr(value, "detach"):  # a torch tensor slipped through
        value = _torch_values(value)
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise ImplError(
            f"implementation {impl.name} returned a {what} that is not an array "
            f"({type(value).__name__}: {exc})"
        ) from None
    if (arr.dtype.kind not in "fiu" and not is_float(arr.dtype)) or arr.dtype == np.bool_:
        raise ImplError(
            f"implementation {impl.name} returned a {what} of type {type(value).__name__} "
            f"(dtype {arr.dtype}); expected real numbers"
        )
    if not widen and is_float(arr.dtype):
        return arr
    out: FloatArray = arr.astype(np.float64)
    return out


@dataclass(frozen=True)
class Scales:
    """The sizes that set the default tolerances of one implementation check (all float64).

    ``grad``: the largest weight a row puts on its derivatives, ``alpha_n sum(q_n)`` (the size
    of ``p sum(q)`` and ``q``, whose difference is the gradient). ``loss``: the size of the terms a
    *stable* forward pass adds up, at the shifted scale: per row ``alpha_n sum(q_n) (1 + log K +
    max_c (m_n - z_c))`` over target classes (``logsumexp(z) - z_y = log sum exp(z - m) + (m -
    z_y)``, two non-negative terms), plus the z-loss ``beta_n s (|m_n| + log K + 1)^2``; summed
    over rows for a reduced loss, the largest row for ``none``. ``forward``: the same at the raw
    scale ``1 + log K + max|z_n|``, summed over rows: what a correct forward pass may lose to
    rounding when it subtracts numbers near ``|z|`` (the self-consistency check differences it).
    ``curvature``: a bound on the fifth directional derivative of the summed loss along a unit
    direction (truncation of Richardson differences). ``subtraction``: ``alpha_n sum(q_n)
    max|z_n|`` (summed, or the largest row for ``none``), the size of the two numbers that the
    textbook formula ``logsumexp(z) - z_y`` (optax's) subtracts at the raw scale: the loss
    allowance adds :data:`RAW_ROUNDINGS` ulps of it, so such correct code passes at large logits
    while any error that is not rounding still fails (a relative 1e-9 in float64 as long as
    ``max|z| <= 1e5 L``).
    """

    grad: float
    loss: float
    forward: float
    curvature: float
    subtraction: float = 0.0


#: Roundings of the final raw-scale subtraction ``logsumexp(z) - z_y`` allowed in a loss.
RAW_ROUNDINGS = 4.0


def scales(problem: Problem, rows_per: int | None = None) -> Scales:
    """The :class:`Scales` of a problem (its logits in the check's dtype).

    With ``rows_per`` the rows are taken that many at a time (fast mode: no (N, K) float64
    array is built); every scale is a sum or a maximum over rows, so the chunks combine exactly.
    """
    n = problem.shape[0]
    if rows_per is None or n <= rows_per:
        return _finish(_scale_parts(problem), problem)
    whole = batch_scales(problem)
    dtype = str(problem.logits.dtype)
    parts = [
        _scale_parts(_chunk(problem, slice(s, s + rows_per), whole, dtype))
        for s in range(0, n, rows_per)
    ]
    summed = problem.reduction != "none"
    grad = max(p[0] for p in parts)
    loss = sum(p[1] for p in parts) if summed else max(p[1] for p in parts)
    forward = sum(p[2] for p in parts)
    curvature = max(p[3] for p in parts)
    subtraction = sum(p[4] for p in parts) if summed else max(p[4] for p in parts)
    return _finish((grad, loss, forward, curvature, subtraction), problem)


def _chunk(problem: Problem, rows: slice, whole: BatchScales, dtype: str) -> Problem:
    """Rows of ``problem`` carrying the batch's reduction scales in float64 (``rows_of``
    rounds them to the logits' dtype, which the scales need not)."""
    part = rows_of(problem, rows, whole, dtype)
    if isinstance(part, CrossEntropyProblem) and isinstance(whole, tuple):
        part = replace(part, row_scales=(whole[0][rows], whole[1][rows]))
    return part


def _finish(parts: tuple[float, float, float, float, float], problem: Problem) -> Scales:
    grad, loss, forward, curvature, subtraction = parts
    grad = max(grad, float(np.finfo(np.float64).tiny))
    if isinstance(problem, SigmoidProblem):
        return Scales(grad, max(loss, grad), forward, max(curvature, grad))
    return Scales(grad, max(loss, grad), forward, max(curvature, grad), subtraction)


def _scale_parts(problem: Problem) -> tuple[float, float, float, float, float]:
    """(grad, loss, forward, curvature, subtraction) of :class:`Scales` before the floors,
    for a whole problem or a chunk of rows carrying the batch's reduction scales."""
    if isinstance(problem, CrossEntropyProblem) and problem.one_hot and problem.softcap is None:
        return _one_hot_parts(problem)
    return _general_parts(problem)


def _general_parts(problem: Problem) -> tuple[float, float, float, float, float]:
    """:func:`_scale_parts` from the weighted targets ``q`` (N, K): any problem."""
    grad = derivative_scale(problem)
    z = problem.logits.astype(np.float64)
    n, k = problem.shape
    finite = np.isfinite(z)
    log_k = float(np.log(k))
    combine = np.max if problem.reduction == "none" else np.sum
    if isinstance(problem, SigmoidProblem):
        w = np.ones((n, k)) if problem.weight is None else problem.weight.astype(np.float64)
        r = 1.0 if problem.pos_weight is None else problem.pos_weight.astype(np.float64)
        y = problem.targets.astype(np.float64)
        terms = w * np.maximum(r * y, 1.0 - y) * (1.0 + np.abs(z)) * reduction_scale(problem)
        return grad, float(combine(terms)), float(np.sum(terms)), grad, 0.0
    zc = np.where(finite, capped(problem, np.where(finite, z, 0.0)), -np.inf)
    m = np.max(zc, axis=-1)
    carried = problem.row_scales  # a chunk's share of the batch's scales, else the batch's own
    alpha, beta = (
        float64_scales(problem)
        if carried is None
        else (carried[0].astype(np.float64), carried[1].astype(np.float64))
    )
    q = weighted_targets(problem).astype(np.float64)
    weight = alpha * np.sum(q, axis=-1)
    gap = np.where((q > 0) & finite, m[:, None] - zc, 0.0)
    shifted = 1.0 + log_k + np.max(gap, axis=-1)
    top_z = np.max(np.where(finite, np.abs(zc), 0.0), axis=-1)
    raw = 1.0 + log_k + top_z
    zl = np.zeros_like(beta)
    if problem.z_loss:
        with np.errstate(over="ignore"):  # logits near 1e300: the scale is inf, not a warning
            zl = beta * problem.z_loss * (np.abs(m) + log_k + 1.0) ** 2
    curvature = grad
    if problem.softcap is not None:  # derivatives of c tanh(z / c) grow like c^(1 - order)
        curvature *= 1.0 + 20.0 / min(1.0, problem.softcap) ** 4
    return (
        grad,
        float(combine(weight * shifted + zl)),
        float(np.sum(weight * raw + zl)),
        curvature,
        float(combine(weight * top_z)),
    )


def _one_hot_parts(problem: CrossEntropyProblem) -> tuple[float, float, float, float, float]:
    """:func:`_scale_parts` for index labels without smoothing or softcap, from per-row
    maxima and the label column alone: the same numbers with no (N, K) float64 temporary
    (the one target class per row makes the sums over ``q`` a gather)."""
    z = problem.logits
    n, k = problem.shape
    log_k = float(np.log(k))
    carried = problem.row_scales
    alpha, beta = (
        float64_scales(problem)
        if carried is None
        else (carried[0].astype(np.float64), carried[1].astype(np.float64))
    )
    weight = alpha * label_weights(problem).astype(np.float64)
    m = np.max(z, axis=-1).astype(np.float64)  # every row has a finite entry
    top_z = np.max(np.abs(z), axis=-1, where=np.isfinite(z), initial=0.0).astype(np.float64)
    assert problem.labels is not None
    z_y = z[np.arange(n), label_columns(problem)].astype(np.float64)
    gap = np.where(np.isfinite(z_y) & (weight > 0), m - z_y, 0.0)
    zl = np.zeros_like(beta)
    grad = float(np.max(weight, initial=0.0))
    if problem.z_loss:
        with np.errstate(over="ignore"):
            zl = beta * problem.z_loss * (np.abs(m) + log_k + 1.0) ** 2
        top = float(np.max(top_z, initial=0.0))
        grad += float(np.max(beta, initial=0.0)) * problem.z_loss * 4.0 * (1.0 + top)
    combine = np.max if problem.reduction == "none" else np.sum
    return (
        grad,
        float(combine(weight * (1.0 + log_k + gap) + zl)),
        float(np.sum(weight * (1.0 + log_k + top_z) + zl)),
        grad,
        float(combine(weight * top_z)),
    )


def tolerance(
    check: str, dtype: str, natural: Scales, reference: np.ndarray | float | None = None
) -> Tolerance:
    """The default tolerance of an implementation check (``loss``, ``grad`` or ``self``);
    ``reference`` (the reference values) sets the floor of the half-precision model."""
    if dtype in HALF_DTYPES and check != "self":
        values = np.abs(np.asarray(reference, dtype=np.float64))
        finite = values[np.isfinite(values)]
        top = float(np.max(finite)) if finite.size else 0.0
        info = np.finfo(dtype)
        tiny = float(info.smallest_subnormal)
        atol = HALF_FLOOR_ULPS * ulp(top, dtype) + 4.0 * tiny + inner_rounding(check, natural)
        return Tolerance(rtol=HALF_ULPS * float(info.eps), atol=atol)
    rtol, factor = IMPL_TOLERANCES[dtype][check]
    if check != "loss":
        return Tolerance(rtol=rtol, atol=factor * natural.grad)
    raw = RAW_ROUNDINGS * float(np.finfo(dtype).eps) * natural.subtraction
    return Tolerance(rtol=rtol, atol=factor * natural.loss + raw)


def scaled_tolerance(
    check: str,
    dtype: str,
    natural: Scales,
    values: np.ndarray | float | None,
    factor: np.ndarray,
    rtol: float | None = None,
    atol: float | None = None,
) -> Tolerance:
    """:func:`tolerance` for an implementation back-propagated with ``grad_output`` values
    ``factor``: the gradient's absolute part scaled by the largest of them; ``rtol`` and
    ``atol`` (the command line's, when given) replace either part."""
    default = tolerance(check, dtype, natural, values)
    scale = float(np.max(np.abs(factor))) if check == "grad" else 1.0
    return Tolerance(
        rtol=default.rtol if rtol is None else rtol,
        atol=default.atol * scale if atol is None else atol,
    )


def inner_rounding(check: str, natural: Scales) -> float:
    """:data:`INNER_ROUNDINGS` float32 ulps of the natural scale of ``check`` (``loss`` or
    ``grad``): what float32 arithmetic inside a half-precision kernel may leave at a result
    that is exactly zero."""
    scale = natural.loss if check == "loss" else natural.grad
    return INNER_ROUNDINGS * float(np.finfo(np.float32).eps) * scale


def self_consistency(
    impl: Implementation,
    problem: Problem,
    options: dict[str, Any],
    grad: FloatArray,
    tol: Tolerance,
    dtype: str,
    known: np.ndarray | None = None,
) -> tuple[Comparison, str]:
    """The implementation's gradient against the derivative of its own loss along
    :data:`DIRECTIONS` seeded random unit directions ``d`` (zero on -inf logits; projected to
    sum zero per row where the loss is shift-invariant, which removes the common component that
    only adds rounding), and a note saying how the derivatives were taken and why.

    Shapes: ``problem.logits`` and ``grad`` (N, K); ``known`` (N, K) bool, where ``grad`` is
    known (None: everywhere; the directions are 0 elsewhere: rows whose upstream gradient was
    0 tell nothing of the gradient per unit of it). The derivative is a complex step when the
    implementation demonstrably supports one (:func:`_complex_step_agrees`), else Richardson
    differences (:func:`_richardson`), whose predicted error is added to the absolute tolerance.
    """
    z = problem.logits
    finite = np.isfinite(z)
    dirs = _directions(problem, finite if known is None else finite & known)
    natural = scales(problem)
    total = _summed_loss(impl, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a probe with complex logits may warn in user code
        use_complex, why = _complex_step_agrees(total, problem)
        if use_complex:
            measured = np.array([_complex_step(total, z, finite, d) for d in dirs])
            expected = np.array([float(np.sum(grad * d)) for d in dirs])
            errors = np.full(len(dirs), _complex_step_error(problem, natural))
            how = "complex step"
        else:
            measured, errors, step, moves = _richardson(total, z, finite, dirs, natural)
            linear = [[float(np.sum(grad * move)) for move in row] for row in moves]
            expected = np.array([_combine(row, step) for row in linear])
            how = "Richardson differences"
            why += f" (h = {step:.3g}, predicted error {float(np.max(errors)):.3g})"
    bound = float(np.max(errors))
    comparison = compare(
        f"impl self-consistency ({how}){bound_label(impl)}",
        measured,
        "impl gradient · d",
        expected,
        Tolerance(rtol=tol.rtol, atol=tol.atol + bound),
        quantity="directions",
        predicted=bound,
        dtype=dtype,
        ulps=VACUITY_ULPS,
    )
    return comparison, why


#: A passing element whose allowance admits zero still proves something when the value is
#: within this many ulps of the reference (see ``compare.vacuity``).
VACUITY_ULPS = 4.0


def _directions(problem: Problem, finite: np.ndarray) -> FloatArray:
    """Seeded random unit directions, shape (DIRECTIONS, N, K)."""
    rng = np.random.default_rng(SELF_CHECK_SEED)
    dirs = rng.normal(size=(DIRECTIONS, *problem.shape))
    dirs[:, ~finite] = 0.0
    shift_invariant = isinstance(problem, CrossEntropyProblem) and problem.plain
    if shift_invariant:  # remove each row's mean over its finite entries
        count = np.maximum(np.sum(finite, axis=-1), 1)
        mean = np.sum(dirs, axis=-1) / count
        dirs = np.where(finite, dirs - mean[..., None], 0.0)
    norms = np.linalg.norm(dirs.reshape(DIRECTIONS, -1), axis=1)
    out: FloatArray = dirs / np.where(norms > 0, norms, 1.0)[:, None, None]
    return out


def _summed_loss(impl: Implementation, options: dict[str, Any]) -> Callable[[np.ndarray], Any]:
    """``z -> sum(impl loss(z))`` (real or complex, as the implementation returns it)."""

    def total(values: np.ndarray) -> Any:
        loss, _ = call(impl, values, options, "self-consistency probe")
        if hasattr(loss, "detach"):
            loss = _torch_values(loss)
        return np.sum(np.asarray(loss))

    return total


def _forward_roundings(k: int) -> float:
    """How many units of ``eps * forward scale`` a correct forward pass may lose: a handful of
    roundings per element, and a sum over K classes (``sqrt(K)``: rounding errors of a long sum
    add like a random walk; pairwise summation does better)."""
    return 8.0 + float(np.sqrt(k))


def _richardson(
    total: Callable[[np.ndarray], Any],
    z: np.ndarray,
    finite: np.ndarray,
    dirs: FloatArray,
    natural: Scales,
) -> tuple[FloatArray, FloatArray, float, list[list[FloatArray]]]:
    """Richardson-extrapolated central differences of ``total`` along each direction.

    ``R = (4 D(h/2) - D(h)) / 3`` with ``D(t) = (L(z + t d) - L(z - t d)) / 2t``. Its error is the
    truncation ``h^4 |L^(5)| / 480`` plus the forward's rounding ``3 c eps F / h`` (``F`` the
    forward scale, ``c`` :func:`_forward_roundings`); the step minimises their sum,
    ``h = (360 c eps F / |L^(5)|)^(1/5)`` (at most 1), so it grows with the logits' magnitude
    (``differences.balanced_step`` and ``difference_error``, scheme ``richardson``).
    The perturbed logits are rounded to the dtype, so each evaluation point moves by
    ``Δ = fl(z + t d) - z`` rather than ``t d``: the caller combines ``g · Δ`` (exact in float64)
    the same way (:func:`_combine`), and the remaining second-order mismatch, at most
    ``ulp(max|z|) sqrt(N K) |grad|``, is part of the predicted error.

    Returns the measured derivatives and their predicted errors (each shape (DIRECTIONS,)), the
    step ``h``, and per direction the four moves ``Δ`` (N, K) at ``h, -h, h/2, -h/2``
    (``differences.OFFSETS``).
    """
    eps = float(np.finfo(z.dtype).eps)
    zf = np.where(finite, z, 0).astype(z.dtype)
    roundings = _forward_roundings(z.shape[-1])
    model = (natural.curvature, roundings, eps, natural.forward)
    h = min(1.0, balanced_step("richardson", *model))
    top = float(np.max(np.abs(zf.astype(np.float64))))
    mismatch = float(np.spacing(np.asarray(top, dtype=z.dtype))) * np.sqrt(z.size) * natural.grad
    error = difference_error("richardson", h, *model)
    measured, moves = [], []
    for d in dirs:
        at = [np.where(finite, p, z) for p in points("richardson", zf, h * d)]
        measured.append(_combine([float(np.real(total(p))) for p in at], h))
        moves.append([np.where(finite, p.astype(np.float64) - zf, 0.0) for p in at])
    return np.array(measured), np.full(len(dirs), error + mismatch), h, moves


def _combine(values: Sequence[float], h: float) -> float:
    """Richardson's combination of the four values at ``h, -h, h/2, -h/2``:
    ``(4 D(h/2) - D(h)) / 3`` (``differences.directional_quotient``)."""
    diffs = pair_differences("richardson", values)
    return float(directional_quotient("richardson", diffs, h))


def _complex_step(
    total: Callable[[np.ndarray], Any], z: np.ndarray, finite: np.ndarray, d: FloatArray
) -> float:
    """``Im L(z + i h d) / h`` with ``h`` = :data:`COMPLEX_STEP` (nan if the loss is real)."""
    with np.errstate(all="ignore"):
        value = total(np.where(finite, z + 1j * COMPLEX_STEP * d, z))
    if not np.iscomplexobj(value):
        return float("nan")
    return float(np.imag(value)) / COMPLEX_STEP


def _complex_step_error(problem: Problem, natural: Scales) -> float:
    """Predicted error of a complex-step derivative along a unit direction: a few roundings of
    the derivative's terms (``|p - q| . d``, at most ``grad scale * sqrt(N K)``)."""
    eps = float(np.finfo(problem.logits.dtype).eps)
    n, k = problem.shape
    return _forward_roundings(k) * eps * natural.grad * float(np.sqrt(n * k))


def _complex_step_agrees(total: Callable[[np.ndarray], Any], problem: Problem) -> tuple[bool, str]:
    """Whether a complex step can be trusted for this implementation, and why.

    Accepting complex logits proves nothing: a NumPy function that writes into real buffers
    drops (part of) the imaginary perturbation silently. So on a well-conditioned probe (seeded
    standard-normal logits of the problem's shape and dtype, its -inf entries kept) the
    complex-step derivative along one seeded direction (not projected: every component counts)
    must agree with Richardson differences along it to twice their predicted errors, and that
    derivative must be large enough against those errors to tell.
    """
    z = problem.logits
    finite = np.isfinite(z)
    rng = np.random.default_rng(PROBE_SEED)
    probe = np.where(finite, rng.normal(size=z.shape), z).astype(z.dtype)
    d = np.where(finite, rng.normal(size=z.shape), 0.0)
    d /= max(float(np.linalg.norm(d)), float(np.finfo(np.float64).tiny))
    try:
        with np.errstate(all="ignore"):
            cs = _complex_step(total, probe, finite, d)
    except ImplError:
        return False, "Richardson differences: the implementation does not accept complex logits"
    if not np.isfinite(cs):
        return False, "Richardson differences: the implementation returns no complex loss"
    conditioned = replace(problem, logits=probe)
    natural = scales(conditioned)
    (richardson,), (error,), _, _ = _richardson(total, probe, finite, d[None], natural)
    allowed = 2.0 * (error + _complex_step_error(conditioned, natural))
    if not abs(cs - richardson) <= allowed:
        return False, (
            f"Richardson differences: the implementation accepts complex logits but its complex "
            f"step ({cs:.6g}) disagrees with differences ({richardson:.6g}) on a probe, so it "
            "does not carry imaginary parts through (real buffers, abs, max?)"
        )
    if abs(richardson) <= 10 * allowed:
        return False, (
            "Richardson differences: the probe's derivative is too small against the "
            "differences' error to vouch for a complex step"
        )
    return True, (
        f"complex step: the implementation carries imaginary parts (on a probe its complex "
        f"step agreed with Richardson differences: {cs:.10g} vs {richardson:.10g})"
    )


def _torch_values(tensor: Any) -> np.ndarray:
    """A torch tensor that slipped through, as NumPy (bfloat16 included)."""
    from gradcheck_cli.torch_native import to_numpy

    return to_numpy(tensor)
