"""Checking a fused linear cross-entropy kernel: ``--impl`` on a ``linear:`` spec.

The protocols (docs/impl.md), for hidden states ``H`` (N, D) and the lm_head weight ``W`` in the
spec's layout ((V, D), PyTorch's ``nn.Linear``, by default; (D, V) with ``weight_layout: dv``)
and bias ``b`` (V,) (None when the spec has none), each in the check's dtype:

* NumPy: ``f(hidden, weight, bias=None, *, labels, reduction, **options) -> (loss, dhidden,
  dweight, dbias)``, the gradients of the reduced loss (for ``none``: of the sum of the
  per-sample losses), ``dweight`` in the weight's layout, ``dbias`` None without a bias;
* framework-native (``torch:...``, ``jax:...``): the same arguments as tensors, returning the
  loss; autograd differentiates hidden, weight and bias, back-propagating a seeded
  ``grad_output`` (a scalar in [1.25, 2], or uniform in [0.5, 2] per sample for ``none``);
* ``--impl torch`` (``optax``): ``F.linear`` in the dtype, then PyTorch's (optax's) loss on the
  float32 up-cast.

Every option of the spec is passed by keyword as for a logits kernel (``impl.options_for``);
``--chunks 1,4,7`` calls the kernel once per chunk count (``--chunk-option NAME`` names its
parameter) and holds *each* call to the reference, never to each other.

The reference is :func:`gradcheck_cli.methods.linear.reference`: float64, in row chunks, from the
kernel's own (rounded) inputs, with an error budget per element. The allowance is ``k`` budgets
(tolerance model ``fixed``, the default in every dtype: ``k`` 4); ``--tolerance-model rounded``
holds every element to ``k`` ulps of the truth, ``baseline`` to ``k`` times the naive kernel's
error (:func:`~gradcheck_cli.methods.linear.baseline`), and below float64 every row reports its
ulps, the correctly rounded truth's and the naive baseline's, as for logits kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from gradcheck_cli import guard, tolerance_models
from gradcheck_cli import impl as impl_module
from gradcheck_cli.compare import Comparison, Tolerance, compare
from gradcheck_cli.core.layer import Layer
from gradcheck_cli.core.softmax_ce import CrossEntropyProblem
from gradcheck_cli.errors import CannotCheck
from gradcheck_cli.impl import Implementation, ImplError
from gradcheck_cli.methods import linear as linear_methods
from gradcheck_cli.model import Check, Spec
from gradcheck_cli.precision import dtype_overflow

#: Parameter names ``--chunks`` looks for when ``--chunk-option`` names none.
CHUNK_PARAMETERS = ("chunks", "num_chunks", "n_chunks", "chunk_count")
#: A failed weight gradient whose errors are about this fraction of its largest element (float32
#: and float64 kernels) is diagnosed as a bfloat16 accumulator (bfloat16 keeps 8 bits).
_BF16_RANGE = (2.0**-12, 2.0**-5)


@dataclass(frozen=True)
class LinearOptions:
    """The run's choices that a linear check reads."""

    rtol: float | None = None
    atol: float | None = None
    tolerance_model: tolerance_models.Settings | None = None
    chunks: tuple[int, ...] | None = None
    chunk_option: str | None = None


@dataclass
class LinearOutcome:
    """What a linear check adds to a spec's result."""

    comparisons: list[Comparison] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    reference_loss: np.ndarray | None = None


def kernel_inputs(
    layer: Layer, dtype: str
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray | None], Layer]:
    """The kernel's arrays in ``dtype`` (hidden (N, D), the weight in the spec's layout, the
    bias), and the same values widened to float64 as a layer (the reference's inputs).
    CannotCheck when one of them leaves the dtype's range (``--dtype`` over a spec's own)."""
    if dtype != "float64":
        names = layer.names()
        for key, arr in (
            ("inputs", layer.inputs),
            ("weights", layer.weights),
            ("bias", layer.bias),
        ):
            overflow = None if arr is None else dtype_overflow(arr, dtype)
            if overflow is not None:
                raise CannotCheck(f"cannot run in {dtype}: {names[key]}: {overflow}")
    with np.errstate(over="ignore", under="ignore"):
        h = layer.inputs.astype(dtype)
        w_dk = layer.weights.astype(dtype)
        b = None if layer.bias is None else layer.bias.astype(dtype)
    w = np.ascontiguousarray(layer.given_weight(w_dk))
    wide = replace(
        layer,
        inputs=h.astype(np.float64),
        weights=w_dk.astype(np.float64),
        bias=None if b is None else b.astype(np.float64),
    )
    return (h, w, b), wide


def fused(impl: Implementation, layer: Layer) -> Implementation:
    """``impl``, with xentcheck's built-in framework loss swapped for its fused twin (the
    accepted options stay those of the built-in loss)."""
    if impl.builtin == "torch":
        from gradcheck_cli import torch_adapter, torch_native

        function: Any = partial(torch_adapter.torch_linear_loss, weight_layout=layer.layout)
        adapter: Any = torch_native.TorchNative(
            function, device=impl.device, compile_backend=impl.compile_backend
        )
    elif impl.builtin == "optax":
        from gradcheck_cli import jax_native

        function = partial(jax_native.optax_linear_loss, weight_layout=layer.layout)
        adapter = jax_native.JaxNative(function, device=impl.device)
    else:
        return impl
    accepts = None if impl.accepts is None else impl.accepts | {"class_weight"}
    return replace(impl, function=adapter, native=adapter, accepts=accepts)


def linear_options(spec: Spec, dtype: str) -> dict[str, Any]:
    """The keyword options of a fused kernel: those of a logits kernel
    (:func:`~gradcheck_cli.impl.options_for`), with the class weights as ``class_weight`` (the
    lm_head's ``weight`` is the second argument)."""
    given = impl_module.options_for(spec, dtype)
    if "weight" in given:
        given["class_weight"] = given.pop("weight")
    return given


def chunk_option(impl: Implementation, options: LinearOptions) -> str | None:
    """The kernel's chunk-count parameter for ``--chunks`` (None without ``--chunks``)."""
    if not options.chunks:
        return None
    if options.chunk_option is not None:
        return options.chunk_option
    if impl.accepts is None:
        return CHUNK_PARAMETERS[0]
    for name in CHUNK_PARAMETERS:
        if name in impl.accepts:
            return name
    raise ImplError(
        f"--chunks: implementation {impl.name} has no parameter {', '.join(CHUNK_PARAMETERS)}; "
        "name its chunk-count parameter with --chunk-option NAME"
    )


def check(
    spec: Spec,
    impl: Implementation,
    template: CrossEntropyProblem,
    dtype: str,
    options: LinearOptions,
    tag: str = "impl",
) -> LinearOutcome:
    """The kernel's loss and gradients (hidden, weight, bias) against the chunked float64
    reference, once per ``--chunks`` value; raises ImplError when it cannot be called."""
    layer = spec.layer
    assert layer is not None and layer.fused
    impl = fused(impl, layer)
    arrays, wide = kernel_inputs(layer, dtype)
    n, _, v = layer.shape
    shape: tuple[int, ...] = (n,) if spec.reduction == "none" else ()
    upstream = impl_module.upstream_for(impl, spec, shape)
    roundoff = linear_methods.Roundoff.of(dtype)
    ref = linear_methods.reference(wide, template, upstream, roundoff)
    settings = options.tolerance_model or tolerance_models.Settings()
    settings = replace(settings, model=settings.model or "fixed")
    base = None  # the naive kernel: reported below float32, and the baseline model's measure
    if dtype in ("float16", "bfloat16") or (dtype == "float32" and settings.model == "baseline"):
        base = linear_methods.baseline(wide, template, dtype, upstream)
    outcome = LinearOutcome(reference_loss=ref.loss)
    rows = linear_methods.ROW_CHUNK_ELEMENTS // max(v, 1) or 1
    outcome.notes[f"{tag} linear"] = (
        f"reference: float64 from the kernel's {dtype} inputs, {min(rows, n)} rows at a time "
        f"(never the {n} x {v} logits); allowance: model {settings.model}, k = {settings.k:g}"
        + (" error budgets (methods.linear)" if settings.model == "fixed" else "")
    )
    if upstream is not None:
        outcome.notes[f"{tag} grad_output"] = (
            "back-propagated through the kernel's autograd "
            + impl_module.upstream_note(upstream, given=spec.grad_output is not None)
            + "; the reference gradients are of the same weighted sum"
        )
    if dtype != "float64" and (ref.max_logit or 0.0) > float(np.finfo(np.dtype(dtype)).max):
        raise CannotCheck(
            f"cannot run in {dtype}: the logits reach {ref.max_logit:.6g}, beyond {dtype}'s "
            "largest finite number"
        )
    name = chunk_option(impl, options)
    given = linear_options(spec, dtype)
    if name is not None and name in given:
        raise ImplError(f"--chunk-option {name}: that is an option this spec sets")
    judge = _Judge(spec, layer, wide, template, dtype, settings, options, ref, base, upstream)
    for count in options.chunks or (None,):
        kwargs = given if name is None else {**given, name: count}
        label = f"impl {impl.name}" + ("" if count is None else f" [{name}={count}]")
        loss, grads = call(impl, arrays, kwargs, upstream, shape, layer)
        outcome.comparisons += judge.rows(label, loss, grads)
        outcome.checks += _finiteness(impl.name, loss, grads, ref, layer)
    return outcome


def call(
    impl: Implementation,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    options: dict[str, Any],
    upstream: np.ndarray | None,
    shape: tuple[int, ...],
    layer: Layer,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Call the kernel and validate what it returned: the loss (``shape``) and the gradients by
    the layer's internal names (weights as (D, V)), as float64."""
    given = impl_module.accepted_options(impl, options)
    try:
        if impl.native is not None:
            with guard.calling("call"):
                loss, grads = impl.native.linear(arrays, upstream, given)
        else:
            with guard.calling("call"):
                out = impl.function(*(None if a is None else a.copy() for a in arrays), **given)
            if not isinstance(out, tuple) or len(out) != 4:
                raise ImplError(
                    f"implementation {impl.name} returned {type(out).__name__}; expected a "
                    "tuple (loss, dhidden, dweight, dbias) for a linear spec"
                )
            loss, grads = out[0], list(out[1:])
    except ImplError:
        raise
    except Exception as exc:
        error = ImplError(
            f"implementation {impl.name} raised {type(exc).__name__}: {exc}"
            f"{impl_module._where(exc)}"
        )
        error.original = exc
        raise error from None
    h, w, b = arrays
    loss_arr = impl_module._as_array(impl, "loss", loss)
    if loss_arr.shape != shape:
        raise ImplError(
            f"implementation {impl.name} returned a loss of shape {loss_arr.shape}; expected "
            f"{shape or 'a scalar'}"
        )
    out_grads: dict[str, np.ndarray] = {}
    for key, what, like, got in (
        ("inputs", "dhidden", h, grads[0]),
        ("weights", "dweight", w, grads[1]),
        ("bias", "dbias", b, grads[2]),
    ):
        if like is None:
            continue
        if got is None:
            raise ImplError(f"implementation {impl.name} returned no {what}")
        arr = impl_module._as_array(impl, what, got)
        if arr.shape != like.shape:
            raise ImplError(
                f"implementation {impl.name} returned {what} of shape {arr.shape}; expected "
                f"{like.shape}" + (f" (weight_layout: {layer.layout})" if key == "weights" else "")
            )
        out_grads[key] = layer.given_weight(arr) if key == "weights" else arr
    return loss_arr, out_grads


class _Judge:
    """Each quantity of a kernel's call against the reference, under the run's model."""

    def __init__(
        self,
        spec: Spec,
        layer: Layer,
        wide: Layer,
        template: CrossEntropyProblem,
        dtype: str,
        settings: tolerance_models.Settings,
        options: LinearOptions,
        ref: linear_methods.LinearResult,
        base: linear_methods.LinearResult | None,
        upstream: np.ndarray | None,
    ) -> None:
        self.spec, self.layer, self.wide, self.template = spec, layer, wide, template
        self.dtype, self.settings, self.options = dtype, settings, options
        self.ref, self.base, self.upstream = ref, base, upstream
        self._plain: linear_methods.LinearResult | None = None
        self._no_bias: np.ndarray | None = None

    def rows(self, label: str, loss: np.ndarray, grads: dict[str, np.ndarray]) -> list[Comparison]:
        names = self.layer.names()
        out = [self._row(label, "loss", loss, self.ref.loss, _of(self.base, "loss"), "loss")]
        for key in ("inputs", "weights", "bias"):
            if key in grads:
                truth, base = self.ref.grads[key], _of(self.base, key)
                out.append(self._row(label, names[key], grads[key], truth, base, key))
        if any(not r.passed for r in out):
            out = self._diagnosed(out, loss, grads)
        return out

    def _row(
        self,
        label: str,
        quantity: str,
        got: np.ndarray,
        truth: np.ndarray,
        base: np.ndarray | None,
        key: str,
    ) -> Comparison:
        dtype, s, o = self.dtype, self.settings, self.options
        budget = self.ref.budget
        assert budget is not None
        shown = self.layer.given_weight
        if key == "weights":
            got, truth = shown(got), shown(truth)
            base = None if base is None else shown(base)
        allowance = None
        if o.rtol is not None or o.atol is not None:
            u = float(np.finfo(np.dtype(dtype)).eps)
            tol = Tolerance(
                rtol=s.k * u if o.rtol is None else o.rtol, atol=0.0 if o.atol is None else o.atol
            )
        elif s.model == "rounded":
            tol = tolerance_models.rounded(truth, dtype, s.k, s.floor_ulps)
        elif s.model == "baseline" and base is not None:
            tol, allowance = tolerance_models.baseline_allowance(
                truth, base, dtype, s.k, s.floor_ulps
            )
        else:
            b = budget[key]
            allowance = s.k * (shown(b) if key == "weights" else b)
            u = float(np.finfo(np.dtype(dtype)).eps) / 2
            tol = Tolerance(rtol=s.k * u, atol=float(np.max(allowance, initial=0.0)))
        row = compare(
            label, got, "reference", truth, tol, quantity, dtype=dtype, allowance=allowance
        )
        if dtype == "float64" or o.rtol is not None or o.atol is not None:
            return row

        def accepts(values: np.ndarray) -> bool:
            return compare(
                label, values, "reference", truth, tol, quantity, dtype=dtype, allowance=allowance
            ).passed

        # the vacuity probe (would a zero pass?) costs a second comparison: the loss only
        planted = {"a zero loss": np.zeros_like(truth)} if key == "loss" else {}
        precision = tolerance_models.measure(got, truth, base, dtype, s, planted, accepts)
        return replace(row, precision=precision)

    def _diagnosed(
        self, rows: list[Comparison], loss: np.ndarray, grads: dict[str, np.ndarray]
    ) -> list[Comparison]:
        """Failed rows with what the evidence shows: a dropped bias, a misused grad_output,
        zero rows of dhidden (a dropped chunk), a bfloat16 accumulator."""
        why_all = self._dropped_bias(loss)
        keys = {"loss": "loss", **{name: key for key, name in self.layer.names().items()}}
        out = []
        for row in rows:
            if row.passed:
                out.append(row)
                continue
            key = keys[row.quantity]
            why = why_all
            if why is None and key != "loss":
                why = self._upstream(key, grads[key])
            if why is None and key == "inputs":
                why = _zero_rows(grads[key], self.ref.grads[key])
            if why is None and key == "weights" and self.dtype in ("float32", "float64"):
                why = _bf16_like(grads[key], self.ref.grads[key])
            out.append(replace(row, diagnosis=why) if why else row)
        return out

    def _dropped_bias(self, loss: np.ndarray) -> str | None:
        if self.wide.bias is None:
            return None
        if self._no_bias is None:
            self._no_bias = linear_methods.forward_loss(
                replace(self.wide, bias=None), self.template
            )
        gap_without = float(np.max(np.abs(loss - self._no_bias), initial=0.0))
        gap_with = float(np.max(np.abs(loss - self.ref.loss), initial=0.0))
        if gap_without < 0.01 * gap_with:
            return (
                "the loss is the layer's without its bias (off by "
                f"{gap_without:.3g} from it, {gap_with:.3g} from the reference): the forward "
                "leaves the bias out"
            )
        return None

    def _upstream(self, key: str, got: np.ndarray) -> str | None:
        if self.upstream is None:
            return None
        if self._plain is None:
            self._plain = linear_methods.reference(self.wide, self.template)
        plain = self._plain.grads[key]
        what = f"d{self.layer.names()[key]}"
        scale = float(np.max(np.abs(plain), initial=0.0)) or 1.0
        flat = np.ravel(self.upstream)  # (a spec's all-ones or constant one tells neither)
        if not np.all(flat == 1.0) and _near(got, plain, scale):
            return f"{what} is the gradient of the plain sum: the backward ignores grad_output"
        head = float(flat[0])
        spread = not np.all(flat == head)
        if self.upstream.ndim and spread and _near(got, plain * head, scale * abs(head)):
            return (
                f"{what} is the plain gradient times grad_output[0] = {head:.6g}: every row "
                "scaled by the first row's grad_output instead of its own (Liger-Kernel #1298)"
            )
        return None


def _near(got: np.ndarray, other: np.ndarray, scale: float) -> bool:
    """Agreement to 1e-4 of the scale: far tighter than the wrong answers a diagnosis tells
    apart, loose enough for a float32 kernel."""
    return bool(np.max(np.abs(got - other), initial=0.0) <= 1e-4 * scale)


def _of(result: linear_methods.LinearResult | None, key: str) -> np.ndarray | None:
    if result is None:
        return None
    return result.loss if key == "loss" else result.grads.get(key)


def _zero_rows(got: np.ndarray, ref: np.ndarray) -> str | None:
    """Rows of dhidden that are exactly 0 where the reference's are not."""
    dead = np.flatnonzero(~np.any(got, axis=1) & np.any(ref, axis=1))
    if not dead.size:
        return None
    n = got.shape[0]
    tail = dead[-1] == n - 1 and dead.size == n - dead[0]
    where = f"rows {dead[0]}..{dead[-1]}" if dead.size > 1 else f"row {dead[0]}"
    if tail:
        return (
            f"dhidden is exactly 0 in the last {dead.size} of {n} {where.split()[0]} "
            f"({where}): the last partial chunk is dropped"
        )
    return f"dhidden is exactly 0 in {dead.size} row(s), first {where}, where the reference is not"


def _bf16_like(got: np.ndarray, ref: np.ndarray) -> str | None:
    """A weight gradient off by about bfloat16's precision of its scale."""
    top = float(np.max(np.abs(ref), initial=0.0))
    if top == 0.0:
        return None
    rel = float(np.max(np.abs(got - ref), initial=0.0)) / top
    if not _BF16_RANGE[0] <= rel <= _BF16_RANGE[1]:
        return None
    return (
        f"dweight is off by {rel:.2g} of its largest element, bfloat16's precision (8 bits): an "
        "accumulator or intermediate in bfloat16 (axolotl #1601)?"
    )


def _finiteness(
    name: str,
    loss: np.ndarray,
    grads: dict[str, np.ndarray],
    ref: linear_methods.LinearResult,
    layer: Layer,
) -> list[Check]:
    """A failed ``impl_finite`` for any nan or inf returned where the reference is finite."""
    names = layer.names()
    found: Sequence[tuple[str, np.ndarray, np.ndarray]] = [
        ("loss", loss, ref.loss),
        *((f"d{names[k]}", g, ref.grads[k]) for k, g in grads.items()),
    ]
    out = []
    for what, got, truth in found:
        bad = ~np.isfinite(got) & np.isfinite(np.broadcast_to(truth, got.shape))
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0]) if got.ndim else ()
            out.append(
                Check(
                    "impl_finite",
                    False,
                    f"implementation {name} returned {got[idx] if got.ndim else got} in {what}"
                    f"{f' at {list(idx)}' if idx else ''} where the reference is finite; "
                    f"{int(np.count_nonzero(bad))} such element(s)",
                )
            )
    return out
