"""Mutation testing of a spec suite (``xentcheck mutate``): would the specs catch known bugs?

Each :class:`Mutant` is a small, deliberate bug of a cross-entropy kernel, most of them taken
from a real one (docs/mutate.md). A mutant is an implementation (``impl.Implementation``): the
float64 reference of the core with the bug planted, or, with ``impl``, the given
implementation's own outputs with the same bug planted on them. Every spec of the suite is run
against it exactly as ``xentcheck run --impl`` would run it (the same tolerances), and:

* a mutant **applies** to a spec when the spec's options, dtype and shape can show the bug
  (:attr:`Mutant.conditions`) *and* its outputs on the spec's inputs differ from the unmutated
  ones beyond rounding (4 ulps of the dtype at the array's scale); where they are equal it is
  *not exercised* there;
* it is **killed** when some spec it applies to fails (or errors: the output is unusable) while
  the unmutated implementation passes that spec; a spec the unmutated one does not pass
  judges nothing;
* the **mutation score** is killed / applicable mutants. A mutant that applies to no spec is
  *not applicable* (with the condition no spec meets) or *not exercised* (the conditions hold
  somewhere, the numbers never change), and stays out of the score.

Pure computation: specs in, :class:`MutationReport` out; no printing, no YAML.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from gradcheck_cli import impl as impl_module
from gradcheck_cli import linear_check
from gradcheck_cli.compare import Comparison
from gradcheck_cli.core import Problem, SigmoidProblem, build_problem, lowp, reduce_any
from gradcheck_cli.core.layer import Layer
from gradcheck_cli.core.options import SIGMOID, SOFTMAX, options_of
from gradcheck_cli.core.sigmoid_ce import reduction_scale
from gradcheck_cli.core.softmax import logsumexp, softmax
from gradcheck_cli.core.softmax_ce import (
    CrossEntropyProblem,
    capped,
    mean_normalizers,
    reduction_scales,
    weighted_targets,
)
from gradcheck_cli.errors import CannotCheck, XentcheckError
from gradcheck_cli.impl import Implementation, ImplError
from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS
from gradcheck_cli.methods.analytic import softcap_derivative
from gradcheck_cli.model import Spec, SpecResult

__all__ = ["MUTANTS", "Mutant", "MutantResult", "MutationReport", "mutate", "mutate_specs"]

FloatArray = np.ndarray
#: (loss, gradients): the logits protocol's (loss, grad), or a linear kernel's (loss, dhidden,
#: dweight, dbias) as (loss, (dh, dw, db)).
Outputs = tuple[np.ndarray, tuple[np.ndarray | None, ...]]

#: The relative change of the loss of mutant ``loss-ulp``.
LOSS_ULP = 1e-6
#: Outputs within this many units of the dtype's eps (times the array's largest magnitude) of
#: the unmutated ones are "the same beyond rounding".
SAME_ULPS = 4.0
#: The true-class rounding of Liger-Kernel #1268 shows in half precision above this p_y.
CONFIDENT = 0.9
#: Methods the spec runs besides the implementation (the reference is always computed).
METHODS_RUN = ("analytic",)

Status = Literal["killed", "survived", "not exercised", "not applicable", "not liftable"]


class MutateError(XentcheckError):
    """The suite cannot be mutation-tested as given (an invalid spec, no spec at all)."""


# --------------------------------------------------------------------------------------------
# Subjects: what gets mutated (the reference, or a given implementation), with plain outputs.


def _problem(z: np.ndarray, options: dict[str, Any]) -> Problem:
    """The core problem of a protocol call (logits (N, K) and the keyword options), in
    float64 whatever the dtype of the call."""
    loss = options.get("loss", SOFTMAX)
    names = {o.name for o in options_of(loss)}
    given = dict(options)
    if "class_weight" in given:  # a linear kernel's class weights
        given["weight"] = given.pop("class_weight")
    values = {
        k: (np.asarray(v).astype(np.float64) if isinstance(v, np.ndarray) else v)
        for k, v in given.items()
        if k in names
    }
    targets = given.get("targets")
    return build_problem(
        loss,
        np.asarray(z).astype(np.float64),
        given.get("labels"),
        None if targets is None else np.asarray(targets).astype(np.float64),
        given["reduction"],
        values,
    )


def _reference(z: np.ndarray, options: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    """The core's loss and plain gradient (float64) of a protocol call."""
    problem = _problem(z, options)
    loss = np.asarray(reduce_any(problem), dtype=np.float64)
    return loss, METHODS["analytic"](problem, DEFAULT_SETTINGS).grad.astype(np.float64)


def _per_row(upstream: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """``grad_output`` broadcast against a gradient (N, K): a scalar, per row, or per element."""
    u = np.asarray(upstream, dtype=np.float64)
    return u[:, None] if u.ndim == 1 and grad.ndim == 2 else u


def _ones(upstream_shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(upstream_shape) if upstream_shape else np.asarray(1.0)


def _loss_shape(options: dict[str, Any], z: np.ndarray) -> tuple[int, ...]:
    if options["reduction"] != "none":
        return ()
    return z.shape if options.get("loss") == SIGMOID else z.shape[:1]


@dataclass(frozen=True)
class _Linear:
    """A ``linear:`` spec's layer: the kernel's weight is (V, D) (``vd``) or (D, V)."""

    layer: Layer

    @property
    def layout(self) -> str:
        return self.layer.layout

    def dk(self, w: np.ndarray) -> np.ndarray:
        """The weight as (D, V), float64."""
        wide = np.asarray(w).astype(np.float64)
        return wide.T if self.layout == "vd" else wide

    def logits(self, arrays: Sequence[np.ndarray | None], drop_bias: bool = False) -> FloatArray:
        h, w, b = arrays
        assert h is not None and w is not None
        z: FloatArray = np.asarray(h).astype(np.float64) @ self.dk(w)
        if b is not None and not drop_bias:
            z = z + np.asarray(b).astype(np.float64)
        return z

    def chain(
        self, arrays: Sequence[np.ndarray | None], g: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """(dhidden, dweight in the kernel's layout, dbias) from the logits' gradient ``g``."""
        h, w, b = arrays
        assert h is not None and w is not None
        w_dk = self.dk(w)
        dh = g @ w_dk.T
        dw_dk = np.asarray(h).astype(np.float64).T @ g
        dw = dw_dk.T if self.layout == "vd" else dw_dk
        return dh, dw, None if b is None else np.sum(g, axis=0)


class Subject:
    """What the mutants are planted in: plain (``grad_output`` 1) float64 outputs of the logits
    protocol and of the linear one, and the upstream-scaled ones of the framework-native
    protocol. This one is the core's reference."""

    name = "the reference"
    #: Whether :meth:`linear_scaled` can weight a linear kernel's rows by ``grad_output``.
    scales_linear = True

    def logits(self, z: np.ndarray, options: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
        return _reference(z, options)

    def scaled(
        self, z: np.ndarray, options: dict[str, Any], upstream: np.ndarray
    ) -> tuple[FloatArray, FloatArray] | None:
        """The gradient back-propagated with ``upstream`` (None: this subject cannot)."""
        loss, grad = self.logits(z, options)
        return loss, grad * _per_row(upstream, grad)

    def linear(
        self, arrays: Sequence[np.ndarray | None], options: dict[str, Any], layout: _Linear
    ) -> Outputs:
        loss, g = _reference(layout.logits(arrays), options)
        return loss, layout.chain(arrays, g)

    def linear_scaled(
        self,
        arrays: Sequence[np.ndarray | None],
        options: dict[str, Any],
        layout: _Linear,
        upstream: np.ndarray,
    ) -> Outputs | None:
        loss, g = _reference(layout.logits(arrays), options)
        return loss, layout.chain(arrays, g * _per_row(upstream, g))


class ImplSubject(Subject):
    """A given implementation (``--impl``): its outputs, with ``grad_output`` 1 for a
    framework-native one."""

    def __init__(self, impl: Implementation) -> None:
        self.impl = impl
        self.name = impl.name
        self.scales_linear = impl.native is not None

    def logits(self, z: np.ndarray, options: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
        out = self.scaled(z, options, _ones(_loss_shape(options, z)))
        assert out is not None
        return out

    def scaled(
        self, z: np.ndarray, options: dict[str, Any], upstream: np.ndarray
    ) -> tuple[FloatArray, FloatArray] | None:
        shape = _loss_shape(options, z)
        if self.impl.native is None:
            loss, grad = impl_module.checked_outputs(self.impl, z, options, shape)
            return loss, grad * _per_row(upstream, grad)
        given = {**options, "grad_output": upstream}
        return impl_module.checked_outputs(self.impl, z, given, shape)

    def linear(
        self, arrays: Sequence[np.ndarray | None], options: dict[str, Any], layout: _Linear
    ) -> Outputs:
        n = np.asarray(arrays[0]).shape[0]
        out = self._linear_call(arrays, options, layout, _ones((n,) if _none(options) else ()))
        assert out is not None
        return out

    def linear_scaled(
        self,
        arrays: Sequence[np.ndarray | None],
        options: dict[str, Any],
        layout: _Linear,
        upstream: np.ndarray,
    ) -> Outputs | None:
        if self.impl.native is None:
            return None  # plain gradients of a sum cannot be re-weighted per row
        return self._linear_call(arrays, options, layout, upstream)

    def _linear_call(
        self,
        arrays: Sequence[np.ndarray | None],
        options: dict[str, Any],
        layout: _Linear,
        upstream: np.ndarray,
    ) -> Outputs:
        h, w, b = arrays
        layer = layout.layer
        impl = linear_check.fused(self.impl, layer)
        shape = (np.asarray(h).shape[0],) if _none(options) else ()
        up = None if self.impl.native is None else upstream
        assert h is not None and w is not None
        loss, grads = linear_check.call(impl, (h, w, b), options, up, shape, layer)
        return loss, (grads["inputs"], layer.given_weight(grads["weights"]), grads.get("bias"))


def _none(options: dict[str, Any]) -> bool:
    return bool(options["reduction"] == "none")


# --------------------------------------------------------------------------------------------
# The mutants.

Predicate = Callable[[Spec, str], bool]


@dataclass(frozen=True)
class Condition:
    """An input condition a mutant needs to show (read from the spec's options and dtype)."""

    text: str
    """As in "no spec has <text>"."""
    holds: Predicate


@dataclass(frozen=True)
class Mutant:
    """One planted bug."""

    name: str
    """Short identifier (the table's first column, ``--format json``'s key)."""
    title: str
    """What the bug does, in a few words."""
    models: str
    """The real bug it models (or why it is there)."""
    conditions: tuple[Condition, ...]
    """When the mutant applies by the spec's options (all must hold)."""
    plant: Callable[[Subject, np.ndarray, dict[str, Any]], tuple[FloatArray, FloatArray]]
    """The mutated logits-protocol outputs (float64) of a subject's call."""
    plant_linear: Callable[[Subject, Sequence[Any], dict[str, Any], _Linear], Outputs] | None
    """The same for a linear kernel; None: defined by :attr:`plant` through the logits."""
    upstream: bool = False
    """A backward-pass bug: the mutant takes ``grad_output`` (framework-native protocol)."""

    def applies(self, spec: Spec, dtype: str) -> bool:
        return all(c.holds(spec, dtype) for c in self.conditions)


def _has_labels(spec: Spec) -> bool:
    return spec.labels is not None


def _softmax(spec: Spec) -> bool:
    return spec.loss == SOFTMAX


def _ignored_rows(spec: Spec) -> bool:
    return (
        spec.labels is not None
        and spec.ignore_index is not None
        and bool(np.any(spec.labels == spec.ignore_index))
    )


def _rows(spec: Spec) -> int:
    return int(spec.logits.shape[0])


def _fused(spec: Spec) -> bool:
    return spec.layer is not None and spec.layer.fused


def _zero_grad(s: Subject, z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    loss, grad = s.logits(z, o)
    return loss, np.zeros_like(grad)


def _zero_grad_linear(s: Subject, a: Sequence[Any], o: dict[str, Any], lay: _Linear) -> Outputs:
    loss, grads = s.linear(a, o, lay)
    return loss, tuple(None if g is None else np.zeros_like(g) for g in grads)


def _mean_divisor(z: np.ndarray, o: dict[str, Any]) -> float:
    """The divisor of ``mean`` (the core's: Σ w_y over counted rows, N for probability targets,
    N·K for sigmoid, num_items_in_batch); 1 for ``sum`` and ``none``."""
    if o["reduction"] != "mean":
        return 1.0
    problem = _problem(z, o)
    if isinstance(problem, SigmoidProblem):
        scale = float(reduction_scale(problem))
        return 1.0 / scale if scale else 1.0
    divisor = mean_normalizers(problem)[0]
    return divisor if divisor else 1.0


def _times_n(s: Subject, z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    loss, grad = s.logits(z, o)
    return loss, grad * _mean_divisor(z, o)


def _times_n_linear(s: Subject, a: Sequence[Any], o: dict[str, Any], lay: _Linear) -> Outputs:
    loss, grads = s.linear(a, o, lay)
    factor = _mean_divisor(lay.logits(a), o)
    return loss, tuple(None if g is None else g * factor for g in grads)


def _loss_ulp(s: Subject, z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    loss, grad = s.logits(z, o)
    return loss * (1.0 + LOSS_ULP), grad


def _loss_ulp_linear(s: Subject, a: Sequence[Any], o: dict[str, Any], lay: _Linear) -> Outputs:
    loss, grads = s.linear(a, o, lay)
    return loss * (1.0 + LOSS_ULP), grads


def _shifted(o: dict[str, Any]) -> dict[str, Any]:
    """Row n reads row n−1's label (or target row): an offset view (flash-attn's shift)."""
    out = dict(o)
    for key in ("labels", "targets"):
        if out.get(key) is not None:
            out[key] = np.roll(np.asarray(out[key]), 1, axis=0)
    return out


def _label_shift(s: Subject, z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    return s.logits(z, _shifted(o))


def _label_shift_linear(s: Subject, a: Sequence[Any], o: dict[str, Any], lay: _Linear) -> Outputs:
    return s.linear(a, _shifted(o), lay)


Delta = Callable[[np.ndarray, dict[str, Any]], tuple[FloatArray, FloatArray]]


def _delta_mutant(delta: Delta) -> tuple[Any, Any]:
    """A mutant defined on the reference: the subject's outputs plus (mutated reference −
    reference) at the same inputs (through the layer for a linear kernel)."""

    def plant(s: Subject, z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
        loss, grad = s.logits(z, o)
        dloss, dgrad = delta(z, o)
        return loss + dloss, grad + dgrad

    def plant_linear(s: Subject, a: Sequence[Any], o: dict[str, Any], lay: _Linear) -> Outputs:
        loss, grads = s.linear(a, o, lay)
        dloss, dg = delta(lay.logits(a), o)
        moved = lay.chain(a, dg)
        return loss + dloss, tuple(
            None if g is None or m is None else g + m for g, m in zip(grads, moved, strict=True)
        )

    return plant, plant_linear


def _true_class_rounding(z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    """Liger-Kernel #1268: the gradient ``alpha (fl(p) Σq − q)`` with the softmax rounded to the
    call's dtype before q is subtracted."""
    problem = _problem(z, o)
    assert isinstance(problem, CrossEntropyProblem)
    zc = capped(problem, problem.logits)
    p = softmax(zc)
    with np.errstate(over="ignore", under="ignore"):
        rounded = p.astype(np.asarray(z).dtype).astype(np.float64)
    mass = np.sum(weighted_targets(problem), axis=-1, keepdims=True)
    alpha = reduction_scales(problem)[0]
    dgrad = (rounded - p) * mass * alpha[:, None]
    chain = softcap_derivative(problem)
    if chain is not None:
        dgrad = dgrad * chain
    return np.zeros(np.shape(reduce_any(problem))), dgrad


def _local_vocab_smoothing(z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    """Megatron #737 on a 2-way vocabulary split: smoothing normalised by ceil(K/2), not K.

    The loss is linear in the smoothing a, ``L(a) = (1 − a) L(0) + a L(1)`` (the z-loss aside),
    and the bug scales the smoothing target by ``K / ceil(K/2)``, so the mutant adds
    ``a (K / ceil(K/2) − 1)`` times the cross-entropy of the uniform target (a = 1, no z-loss).
    """
    problem = _problem(z, o)
    assert isinstance(problem, CrossEntropyProblem)
    a = problem.label_smoothing
    k = problem.shape[1]
    factor = a * (k / math.ceil(k / 2) - 1.0)
    uniform = replace(problem, label_smoothing=1.0, z_loss=0.0)
    loss = np.asarray(reduce_any(uniform), dtype=np.float64)
    return factor * loss, factor * METHODS["analytic"](uniform, DEFAULT_SETTINGS).grad


def _z_loss_of_ignored(z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    """The z-loss ``s lse²`` counted for ignored rows too (with the weight a counted row gets)."""
    problem = _problem(z, o)
    assert isinstance(problem, CrossEntropyProblem)
    n = problem.shape[0]
    ignored = ~problem.valid
    zc = capped(problem, problem.logits)
    lse = logsumexp(zc)
    p = softmax(zc)
    scale = np.ones(n)
    if problem.reduction == "mean":
        count = mean_normalizers(problem)[1]
        scale = scale / (count if count else n)
    if problem.loss_mask is not None:
        scale = scale * problem.loss_mask
    scale = np.where(ignored, scale, 0.0)
    s = problem.z_loss
    rows = scale * s * lse**2
    dloss = rows if problem.reduction == "none" else np.asarray(np.sum(rows))
    dgrad = (2.0 * s * scale * lse)[:, None] * p
    chain = softcap_derivative(problem)
    if chain is not None:
        dgrad = dgrad * chain
    return dloss, dgrad


def _masked_lanes_kept(z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    """The other convention for −inf lanes under a softcap (unsloth #10616).

    The reference maps a −inf logit through the cap, ``c tanh(−inf / c) = −c``, so the lane gets
    probability mass (docs/losses.md, section 3: the torch composition). A kernel may instead keep
    it masked (probability 0). The two differ wherever a spec has a −inf logit and a softcap;
    the mutant is the convention the reference does not use.
    """
    problem = _problem(z, o)
    assert isinstance(problem, CrossEntropyProblem)
    zero_loss = np.zeros(np.shape(reduce_any(problem)))
    finite = np.isfinite(problem.logits)
    if problem.softcap is None or np.all(finite):
        return zero_loss, np.zeros(problem.shape)
    kept = replace(
        problem, logits=np.where(finite, capped(problem, problem.logits), -np.inf), softcap=None
    )
    chain = softcap_derivative(problem)
    assert chain is not None
    with np.errstate(invalid="ignore"):
        grad = METHODS["analytic"](kept, DEFAULT_SETTINGS).grad * chain
        ref_loss, ref_grad = _reference(z, o)
        loss = np.asarray(reduce_any(kept), dtype=np.float64)
    return loss - ref_loss, grad - ref_grad


def _bias_dropped(s: Subject, a: Sequence[Any], o: dict[str, Any], lay: _Linear) -> Outputs:
    """The forward leaves the bias out: the subject's outputs plus (reference without the bias
    − reference), its bias gradient that of the biasless loss."""
    loss, grads = s.linear(a, o, lay)
    ref_loss, ref_g = _reference(lay.logits(a), o)
    off_loss, off_g = _reference(lay.logits(a, drop_bias=True), o)
    moved = lay.chain(a, off_g - ref_g)
    return loss + (off_loss - ref_loss), tuple(
        None if g is None or m is None else g + m for g, m in zip(grads, moved, strict=True)
    )


def _no_linear_bias(s: Subject, z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    raise AssertionError("bias-dropped is a linear-kernel mutant")  # never called: conditions


def _first_row_upstream(
    s: Subject, z: np.ndarray, o: dict[str, Any]
) -> tuple[FloatArray, FloatArray]:
    return s.logits(z, o)  # the upstream part is in :func:`_native_function`


_TRUE_CLASS = _delta_mutant(_true_class_rounding)
_SMOOTHING = _delta_mutant(_local_vocab_smoothing)
_Z_LOSS = _delta_mutant(_z_loss_of_ignored)
_MASKED = _delta_mutant(_masked_lanes_kept)

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "zero-grad",
        "gradient set to zero",
        "a backward that never writes its output buffer",
        (),
        _zero_grad,
        _zero_grad_linear,
    ),
    Mutant(
        "grad-times-n",
        "gradient not divided by the mean's N",
        "a backward that forgets the 1/N of reduction mean (loss right, gradient N times too big)",
        (Condition("reduction mean", lambda s, d: s.reduction == "mean"),),
        _times_n,
        _times_n_linear,
    ),
    Mutant(
        "true-class-rounding",
        "p_y rounded to the dtype before 1 is subtracted",
        "Liger-Kernel #1268: the softmax rounded to the low dtype, then the target subtracted",
        (
            Condition("a softmax loss", lambda s, d: _softmax(s)),
            Condition("a dtype below float64", lambda s, d: d != "float64"),
        ),
        *_TRUE_CLASS,
    ),
    Mutant(
        "smoothing-local-vocab",
        "label smoothing normalised by ceil(K/2) instead of K",
        "Megatron-LM #737: smoothing over the local vocabulary of a 2-way tensor-parallel split",
        (
            Condition("label_smoothing > 0", lambda s, d: s.label_smoothing > 0),
            Condition("K > 1", lambda s, d: s.logits.shape[1] > 1),
        ),
        *_SMOOTHING,
    ),
    Mutant(
        "z-loss-ignored-rows",
        "z-loss counted for ignored rows",
        "a z-loss (lse²) term that skips the ignore_index mask the cross-entropy applies",
        (
            Condition("z_loss > 0", lambda s, d: s.z_loss > 0),
            Condition("an ignored row (ignore_index)", lambda s, d: _ignored_rows(s)),
        ),
        *_Z_LOSS,
    ),
    Mutant(
        "grad-output-first-row",
        "every row scaled by grad_output[0]",
        "Liger-Kernel #1298: the backward multiplies every row by the first row's upstream "
        "gradient (seen through the framework-native protocol only)",
        (
            Condition("reduction none", lambda s, d: s.reduction == "none"),
            Condition("N >= 2 rows", lambda s, d: _rows(s) >= 2),
        ),
        _first_row_upstream,
        None,
        upstream=True,
    ),
    Mutant(
        "loss-ulp",
        f"loss off by a relative {LOSS_ULP:g}",
        "an accumulation or normaliser off by a few ulps of float32 (the finest error a "
        "suite should resolve in float64)",
        (),
        _loss_ulp,
        _loss_ulp_linear,
    ),
    Mutant(
        "label-shift",
        "row n scored against row n−1's label",
        "flash-attn's shifted-view bug: labels read from an offset of one row",
        (Condition("N >= 2 rows", lambda s, d: _rows(s) >= 2),),
        _label_shift,
        _label_shift_linear,
    ),
    Mutant(
        "bias-dropped",
        "the lm_head bias left out of the forward",
        "a fused linear cross-entropy kernel that ignores its bias argument",
        (
            Condition("a linear: spec", lambda s, d: _fused(s)),
            Condition(
                "a linear: spec with a bias",
                lambda s, d: _fused(s) and s.layer is not None and s.layer.bias is not None,
            ),
        ),
        _no_linear_bias,
        _bias_dropped,
    ),
    Mutant(
        "softcap-minus-inf",
        "−inf lanes under a softcap given the other convention",
        "unsloth #10616: c·tanh(−inf/c) = −c gives padding lanes probability mass; the "
        "reference does that (the torch composition), so the mutant keeps them masked",
        (
            Condition("softcap", lambda s, d: s.softcap is not None),
            Condition("a −inf logit", lambda s, d: bool(np.any(np.isneginf(s.logits)))),
        ),
        *_MASKED,
    ),
)
BY_NAME = {m.name: m for m in MUTANTS}


# --------------------------------------------------------------------------------------------
# Mutants as implementations.


@dataclass(frozen=True)
class _NoSideEffects:
    """The framework-native adapter of a mutant: it takes ``grad_output`` and has no state."""

    linear_outputs: Callable[[Sequence[Any], np.ndarray | None, dict[str, Any]], Any] | None = None

    def side_effects(
        self, logits: Any, upstream: Any, options: Any, previous: Any
    ) -> tuple[list[str], float]:
        return [], 0.0

    def views(self, logits: Any, upstream: Any, options: Any) -> float:
        return 0.0

    def linear(
        self, arrays: Sequence[Any], upstream: np.ndarray | None, options: dict[str, Any]
    ) -> Any:
        assert self.linear_outputs is not None
        return self.linear_outputs(arrays, upstream, options)


def _in_dtype(values: Any, like: Any) -> Any:
    """Float64 results in the call's dtype (an accurate kernel rounds once, at the end)."""
    dtype = np.asarray(like).dtype
    if values is None:
        return None
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return np.asarray(values, dtype=np.float64).astype(dtype)


def _first(upstream: np.ndarray) -> np.ndarray:
    """Every row's upstream replaced by the first row's (a scalar stays itself)."""
    u = np.asarray(upstream, dtype=np.float64)
    return u if u.ndim == 0 else np.broadcast_to(u[0], u.shape).copy()


def implementation(
    mutant: Mutant | None, subject: Subject, spec: Spec, native: bool
) -> Implementation | None:
    """The implementation whose outputs are ``subject``'s with ``mutant`` planted (None: the
    unmutated control), in the logits or the linear protocol as the spec needs, and in the
    framework-native protocol when ``native`` (it takes ``grad_output``). None when the mutant
    cannot be planted in that subject (a NumPy linear kernel's gradients cannot be re-weighted
    per row)."""
    label = "control" if mutant is None else mutant.name
    name = f"{label} of {subject.name}"
    if _fused(spec):
        assert spec.layer is not None
        return _linear_implementation(mutant, subject, _Linear(spec.layer), native, name)

    def plain(z: np.ndarray, o: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
        return subject.logits(z, o) if mutant is None else mutant.plant(subject, z, o)

    def numpy_fn(logits: np.ndarray, **options: Any) -> tuple[Any, Any]:
        _real(logits)
        loss, grad = plain(logits, options)
        return _in_dtype(loss, logits), _in_dtype(grad, logits)

    if not native:
        return Implementation(name, numpy_fn, None)

    def native_fn(logits: np.ndarray, grad_output: Any = None, **options: Any) -> tuple[Any, Any]:
        _real(logits)
        if grad_output is None:  # the self-consistency check differentiates the loss only
            loss, grad = plain(logits, options)
            return _in_dtype(loss, logits), _in_dtype(grad, logits)
        upstream = np.asarray(grad_output, dtype=np.float64)
        if mutant is not None and mutant.upstream:
            out = subject.scaled(logits, options, _first(upstream))
        elif mutant is None:
            out = subject.scaled(logits, options, upstream)
        else:
            loss, grad = mutant.plant(subject, logits, options)
            out = loss, grad * _per_row(upstream, grad)
        assert out is not None
        return _in_dtype(out[0], logits), _in_dtype(out[1], logits)

    return Implementation(name, native_fn, None, native=_NoSideEffects())


def _real(logits: np.ndarray) -> None:
    if np.iscomplexobj(logits):  # the probe for a complex step: differences are used instead
        raise TypeError("a mutant takes real logits only")


def _linear_implementation(
    mutant: Mutant | None, subject: Subject, layout: _Linear, native: bool, name: str
) -> Implementation | None:
    def plain(arrays: Sequence[Any], o: dict[str, Any]) -> Outputs:
        if mutant is None:
            return subject.linear(arrays, o, layout)
        if mutant.plant_linear is None:
            raise AssertionError(f"{mutant.name} has no linear form")
        return mutant.plant_linear(subject, arrays, o, layout)

    def rounded(arrays: Sequence[Any], out: Outputs) -> tuple[Any, list[Any]]:
        like = arrays[0]
        return _in_dtype(out[0], like), [_in_dtype(g, like) for g in out[1]]

    def numpy_fn(hidden: Any, weight: Any, bias: Any = None, **options: Any) -> tuple[Any, ...]:
        arrays = (hidden, weight, bias)
        loss, grads = rounded(arrays, plain(arrays, options))
        return (loss, *grads)

    if not native:
        return Implementation(name, numpy_fn, None)

    def linear_outputs(
        arrays: Sequence[Any], upstream: np.ndarray | None, options: dict[str, Any]
    ) -> tuple[Any, list[Any]]:
        assert upstream is not None
        u = np.asarray(upstream, dtype=np.float64)
        out: Outputs | None
        if mutant is not None and mutant.upstream:
            out = subject.linear_scaled(arrays, options, layout, _first(u))
            if out is None:
                loss, grads = subject.linear(arrays, options, layout)
                first = float(np.ravel(u)[0])
                out = loss, tuple(None if g is None else g * first for g in grads)
        elif mutant is None:
            out = subject.linear_scaled(arrays, options, layout, u)
        else:
            out = None  # only the upstream mutant needs the native protocol on a linear spec
        if out is None:
            raise ImplError(f"{name}: cannot back-propagate a per-row grad_output here")
        return rounded(arrays, out)

    if mutant is not None and mutant.upstream and not subject.scales_linear:
        return None
    return Implementation(name, numpy_fn, None, native=_NoSideEffects(linear_outputs))


# --------------------------------------------------------------------------------------------
# Results.


@dataclass(frozen=True)
class SpecOutcome:
    """One mutant on one spec."""

    spec: str
    """The spec's name."""
    status: Literal["killed", "survived", "not exercised", "not applicable", "not judged"]
    detail: str
    """What failed (killed), how close it came (survived), or why it did not run."""
    closeness: float = 0.0
    """For a survivor: its worst deviation as a fraction of the tolerance that admitted it."""

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class MutantResult:
    """One mutant over the whole suite."""

    name: str
    title: str
    models: str
    status: Status
    """``killed``: some spec failed; ``survived``: it applies somewhere and every such spec
    passed; ``not exercised``: its conditions hold on some spec but its outputs never change;
    ``not applicable``: no spec meets its conditions; ``not liftable``: it cannot be planted in
    the given implementation."""
    killed_by: tuple[str, ...]
    """The specs that killed it, in suite order."""
    reason: str
    """For a killed mutant what failed first; otherwise why it was not killed (computed)."""
    outcomes: tuple[SpecOutcome, ...] = ()
    """Every spec it ran on (or was judged for), in suite order."""
    claimed: bool = False
    """The suite claims to cover it by its options: some spec meets the mutant's input
    conditions (a mutant without conditions, such as zero-grad, is claimed by no option)."""

    @property
    def applicable(self) -> bool:
        return self.status in ("killed", "survived")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "models": self.models,
            "status": self.status,
            "claimed": self.claimed,
            "killed_by": list(self.killed_by),
            "reason": self.reason,
            "specs": [o.to_dict() for o in self.outcomes],
        }


@dataclass(frozen=True)
class MutationReport:
    """The mutants of one suite and what became of each."""

    target: str
    """``the reference`` or the given implementation's name."""
    specs: tuple[str, ...]
    """The specs of the suite, in order."""
    mutants: tuple[MutantResult, ...]
    unusable: tuple[tuple[str, str], ...] = ()
    """Specs the unmutated target does not pass (they judge nothing), with why."""
    seconds: float = 0.0
    min_score: float | None = None
    """The bar of ``--min-score`` (None: none)."""

    @property
    def killed(self) -> int:
        return sum(m.status == "killed" for m in self.mutants)

    @property
    def applicable(self) -> int:
        return sum(m.applicable for m in self.mutants)

    @property
    def score(self) -> float | None:
        """Killed / applicable mutants (None when none applies)."""
        return self.killed / self.applicable if self.applicable else None

    @property
    def survivors(self) -> tuple[MutantResult, ...]:
        return tuple(m for m in self.mutants if m.status == "survived")

    @property
    def uncovered(self) -> tuple[MutantResult, ...]:
        """Survivors the suite claims to cover by its options (they make the exit code 1)."""
        return tuple(m for m in self.survivors if m.claimed)

    @property
    def below_bar(self) -> bool:
        if self.min_score is None:
            return False
        return (self.score if self.score is not None else 0.0) < self.min_score

    @property
    def exit_code(self) -> int:
        """1 if a mutant the suite claims to cover by its options survived, or the score is
        below the bar; else 0."""
        return 1 if self.uncovered or self.below_bar else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "score": self.score,
            "killed": self.killed,
            "applicable": self.applicable,
            "min_score": self.min_score,
            "seconds": self.seconds,
            "specs": list(self.specs),
            "unusable": [{"spec": s, "reason": r} for s, r in self.unusable],
            "mutants": [m.to_dict() for m in self.mutants],
        }


# --------------------------------------------------------------------------------------------
# Running.


def _run(spec: Spec, impl: Implementation, rtol: float | None, atol: float | None) -> SpecResult:
    """``xentcheck run --impl`` on one spec; an error result when the output is unusable."""
    from gradcheck_cli.engine import RunOptions, run_spec
    from gradcheck_cli.model import error_result, skipped_result

    options = RunOptions(methods=METHODS_RUN, impl=impl, rtol=rtol, atol=atol)
    try:
        return run_spec(spec, options)
    except CannotCheck as exc:
        return skipped_result(spec.name, spec.file, str(exc))
    except XentcheckError as exc:
        return error_result(spec.name, spec.file, str(exc))


def _impl_rows(result: SpecResult) -> list[Comparison]:
    return [c for c in result.comparisons if c.method.startswith("impl ")]


def _failure(result: SpecResult) -> str:
    """What failed in a mutant's run, in a few words."""
    if result.status == "error":
        return f"error: {(result.message or '').splitlines()[0]}"
    for row in _impl_rows(result):
        if not row.passed:
            return (
                f"{row.quantity}: {row.failed_elements} element(s) beyond rtol {row.rtol:.3g} / "
                f"atol {row.atol:.3g} (max |Δ| {row.max_abs_error:.3g})"
            )
    for check in result.checks:
        if not check.passed:
            return f"{check.name}: {check.detail}"
    for row in result.comparisons:
        if not row.passed:
            return f"{row.method} vs {row.reference}: {row.failed_elements} element(s) failed"
    return "failed"


def _closeness(result: SpecResult) -> tuple[float, str]:
    """A passing mutant's worst deviation as a fraction of its allowance, and the words."""
    best, words = 0.0, "no implementation row"
    for row in _impl_rows(result):
        allowed = row.atol + row.rtol * abs(row.reference_value)
        ratio = (
            row.max_abs_error / allowed if allowed > 0 else (math.inf if row.max_abs_error else 0)
        )
        if ratio >= best:
            best = ratio
            words = (
                f"{row.quantity} off by {row.max_abs_error:.3g}, tolerance rtol {row.rtol:.3g} / "
                f"atol {row.atol:.3g} admits it ({ratio:.2g} of the allowance)"
            )
    return best, words


def _same(a: Any, b: Any, dtype: str) -> bool:
    """Equal beyond rounding: within :data:`SAME_ULPS` eps of ``dtype`` (the check's) times the
    array's largest magnitude."""
    if a is None or b is None:
        return a is None and b is None
    x = np.asarray(a).astype(np.float64)
    y = np.asarray(b).astype(np.float64)
    if x.shape != y.shape:
        return False
    equal = (x == y) | (np.isnan(x) & np.isnan(y))
    if np.all(equal):
        return True
    finite = np.isfinite(y)
    if np.any(~equal & ~(np.isfinite(x) & finite)):
        return False
    lowp.register(dtype)
    eps = float(np.finfo(np.dtype(dtype)).eps)
    top = float(np.max(np.abs(y[finite]), initial=0.0))
    with np.errstate(invalid="ignore"):
        return bool(np.all(equal | (np.abs(x - y) <= SAME_ULPS * eps * top)))


def _outputs(impl: Implementation, spec: Spec, dtype: str) -> list[Any]:
    """The implementation's outputs on the spec's own inputs (in the check's dtype)."""
    from gradcheck_cli.engine import build_problem as spec_problem

    shape: tuple[int, ...]
    if _fused(spec):
        assert spec.layer is not None
        arrays, _ = linear_check.kernel_inputs(spec.layer, dtype)
        options = linear_check.linear_options(spec, dtype)
        n = arrays[0].shape[0]
        shape = (n,) if spec.reduction == "none" else ()
        up = impl_module.upstream_gradient(shape) if impl.native is not None else None
        loss, grads = linear_check.call(impl, arrays, options, up, shape, spec.layer)
        return [loss, *(grads[k] for k in sorted(grads))]
    logits = spec_problem(spec).logits.astype(dtype)
    options = impl_module.options_for(spec, dtype)
    shape = _loss_shape(options, logits)
    if impl.native is not None:
        options["grad_output"] = impl_module.upstream_gradient(shape)
    loss, grad = impl_module.checked_outputs(impl, logits, options, shape, widen=False)
    return [loss, grad]


def _exercised(mutant: Implementation, control: Implementation, spec: Spec, dtype: str) -> bool:
    """Whether the mutant's outputs differ from the control's beyond rounding on the spec."""
    try:
        got = _outputs(mutant, spec, dtype)
    except ImplError:
        return True  # unusable output is a change (the run will say how)
    want = _outputs(control, spec, dtype)
    return not all(_same(a, b, dtype) for a, b in zip(got, want, strict=True))


@dataclass
class _Tally:
    outcomes: list[SpecOutcome] = field(default_factory=list)
    conditions_met: bool = False


def mutate_specs(
    specs: Sequence[Spec],
    impl: Implementation | None = None,
    *,
    mutants: Sequence[Mutant] = MUTANTS,
    rtol: float | None = None,
    atol: float | None = None,
    min_score: float | None = None,
    every_spec: bool = False,
) -> MutationReport:
    """Run every mutant against the specs it applies to (see the module docstring), in suite
    order, until one kills it (``every_spec``: on all of them, to list every killer).

    ``impl``: plant the mutants in this implementation's outputs instead of the reference's;
    ``rtol``/``atol``: override every implementation tolerance (as ``xentcheck run``'s do).
    """
    started = time.perf_counter()
    subject: Subject = Subject() if impl is None else ImplSubject(impl)
    controls: dict[tuple[int, bool], Implementation | None] = {}
    judged: dict[tuple[int, bool], str | None] = {}  # None: the control passes

    def control(i: int, native: bool) -> tuple[Implementation | None, str | None]:
        key = (i, native)
        if key not in controls:
            made = implementation(None, subject, specs[i], native)
            controls[key] = made
            if made is None:
                judged[key] = "the target cannot be called this way"
            else:
                result = _run(specs[i], made, rtol, atol)
                judged[key] = (
                    None
                    if result.status == "pass"
                    else f"skipped: {result.message}"
                    if result.status == "skip"
                    else _failure(result)
                )
        return controls[key], judged[key]

    results = []
    for mutant in mutants:
        tally = _Tally()
        liftable = True
        for i, spec in enumerate(specs):
            dtype = spec.dtype
            if not mutant.applies(spec, dtype):
                continue
            tally.conditions_met = True
            made = implementation(mutant, subject, spec, mutant.upstream)
            if made is None:
                liftable = False
                continue
            reference, why = control(i, mutant.upstream)
            if why is not None or reference is None:
                tally.outcomes.append(SpecOutcome(spec.name, "not judged", f"control: {why}"))
                continue
            if not _exercised(made, reference, spec, dtype):
                tally.outcomes.append(
                    SpecOutcome(
                        spec.name, "not exercised", "outputs equal the unmutated ones in " + dtype
                    )
                )
                continue
            result = _run(spec, made, rtol, atol)
            if result.status in ("fail", "error"):
                tally.outcomes.append(SpecOutcome(spec.name, "killed", _failure(result)))
                if not every_spec:
                    break
            elif result.status == "skip":
                tally.outcomes.append(
                    SpecOutcome(spec.name, "not exercised", result.message or "skipped")
                )
            else:
                ratio, words = _closeness(result)
                tally.outcomes.append(SpecOutcome(spec.name, "survived", words, ratio))
        results.append(_summarise(mutant, tally, liftable, specs))
    return MutationReport(
        target=subject.name,
        specs=tuple(s.name for s in specs),
        mutants=tuple(results),
        unusable=tuple(
            (specs[i].name, why) for (i, _), why in sorted(judged.items()) if why is not None
        ),
        seconds=time.perf_counter() - started,
        min_score=min_score,
    )


def _summarise(
    mutant: Mutant, tally: _Tally, liftable: bool, specs: Sequence[Spec]
) -> MutantResult:
    outcomes = tuple(tally.outcomes)
    killed = tuple(o.spec for o in outcomes if o.status == "killed")
    survived = [o for o in outcomes if o.status == "survived"]
    base: dict[str, Any] = {
        "name": mutant.name,
        "title": mutant.title,
        "models": mutant.models,
        "claimed": bool(mutant.conditions) and tally.conditions_met,
    }
    if killed:
        first = next(o for o in outcomes if o.status == "killed")
        return MutantResult(
            **base, status="killed", killed_by=killed, reason=first.detail, outcomes=outcomes
        )
    if survived:
        closest = max(survived, key=lambda o: o.closeness)
        reason = f"closest on {closest.spec}: {closest.detail}"
        hint = _hint(mutant, specs, [o.spec for o in survived])
        return MutantResult(
            **base,
            status="survived",
            killed_by=(),
            reason=reason + (f"; {hint}" if hint else ""),
            outcomes=outcomes,
        )
    if not liftable:
        return MutantResult(
            **base,
            status="not liftable",
            killed_by=(),
            reason="it cannot be planted in this implementation's outputs (a NumPy linear "
            "kernel returns gradients of the plain sum, which cannot be re-weighted per row)",
            outcomes=outcomes,
        )
    if tally.conditions_met:
        same = [o.spec for o in outcomes if o.status == "not exercised"]
        unjudged = [o.spec for o in outcomes if o.status == "not judged"]
        parts = []
        if same:
            parts.append(f"on {_names(same)} its outputs equal the unmutated ones beyond rounding")
        if unjudged:
            verb, them = ("judges", "it") if len(unjudged) == 1 else ("judge", "them")
            parts.append(f"{_names(unjudged)} {verb} nothing (the unmutated target fails {them})")
        hint = _hint(mutant, specs, [o.spec for o in outcomes])
        return MutantResult(
            **base,
            status="not exercised",
            killed_by=(),
            reason="; ".join(parts + ([hint] if hint else [])) or "no spec exercises it",
            outcomes=outcomes,
        )
    return MutantResult(
        **base,
        status="not applicable",
        killed_by=(),
        reason="not applicable: " + _missing(mutant, specs),
        outcomes=outcomes,
    )


def _names(names: Sequence[str], most: int = 3) -> str:
    """``a, b, c and 4 more``."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def _missing(mutant: Mutant, specs: Sequence[Spec]) -> str:
    """Which input condition no spec meets (or which ones no spec meets together)."""
    for c in mutant.conditions:
        if not any(c.holds(s, s.dtype) for s in specs):
            return f"no spec has {c.text}"
    return "no spec has " + " and ".join(c.text for c in mutant.conditions) + " together"


def _hint(mutant: Mutant, specs: Sequence[Spec], names: Iterable[str]) -> str | None:
    """A mutant-specific fact about the specs it survived on (computed from them)."""
    if mutant.name != "true-class-rounding":
        return None
    chosen = set(names)
    top = 0.0
    for spec in specs:
        if spec.name in chosen and spec.labels is not None and spec.loss == SOFTMAX:
            from gradcheck_cli.engine import build_problem as spec_problem

            problem = spec_problem(spec)
            assert isinstance(problem, CrossEntropyProblem)
            p = softmax(capped(problem, problem.logits))
            rows = np.flatnonzero(problem.valid)
            assert problem.labels is not None
            if rows.size:
                top = max(top, float(np.max(p[rows, problem.labels[rows]])))
    if top <= CONFIDENT:
        return f"no spec has p_y > {CONFIDENT:g} (the largest is {top:.4g}), where it shows"
    return f"the largest p_y there is {top:.4g}"


def mutate(
    paths: Iterable[str],
    impl: Implementation | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    min_score: float | None = None,
    every_spec: bool = False,
    exclude: Iterable[str] = (),
    limits: dict[str, int] | None = None,
) -> MutationReport:
    """Load the specs of ``paths`` (files, directories, globs) and :func:`mutate_specs` them.
    Raises :class:`MutateError` with every located message when a spec is invalid."""
    from gradcheck_cli.errors import SpecError
    from gradcheck_cli.spec import discover, load_file

    specs: list[Spec] = []
    errors: list[str] = []
    for found in discover(paths, exclude):
        if isinstance(found, SpecError):
            errors.append(str(found))
            continue
        path, display = found
        for item in load_file(path, display, **(limits or {})):
            if isinstance(item, SpecError):
                errors.extend(item.all_messages())
            else:
                specs.append(item)
    if errors:
        raise MutateError("\n".join(errors))
    if not specs:
        raise MutateError("no specs to mutate")
    return mutate_specs(
        specs, impl, rtol=rtol, atol=atol, min_score=min_score, every_spec=every_spec
    )
