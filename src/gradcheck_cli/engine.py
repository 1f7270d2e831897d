"""Run one validated spec: forward pass, every gradient method, comparisons and checks.

Pure computation: takes a :class:`~gradcheck_cli.model.Spec`, returns a
:class:`~gradcheck_cli.model.SpecResult`; no printing, no files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradcheck_cli import checks
from gradcheck_cli.compare import Comparison, Tolerance, compare, default_tolerance
from gradcheck_cli.core import Problem, SigmoidProblem, reduce_any
from gradcheck_cli.core.loss import (
    CrossEntropyProblem,
    capped,
    dense_targets,
    loss_note,
    per_sample_loss,
    reduction_scales,
    weighted_targets,
)
from gradcheck_cli.core.sigmoid import sigmoid
from gradcheck_cli.core.softmax import softmax
from gradcheck_cli.methods import METHODS, REFERENCE_METHOD, NotComputable
from gradcheck_cli.methods import layer as layer_methods
from gradcheck_cli.methods.jacobian import JACOBIAN_CHUNK_ELEMENTS
from gradcheck_cli.model import Check, Layer, Spec, SpecResult


@dataclass(frozen=True)
class RunOptions:
    """Command-line choices that override every spec of a run."""

    methods: tuple[str, ...] | None = None
    """Methods to run instead of each spec's own list (``None``: the spec's, or all)."""
    rtol: float | None = None
    """Relative tolerance for every comparison (wins over the spec's)."""
    atol: float | None = None
    """Absolute tolerance for every comparison (wins over the spec's)."""


def resolve_tolerance(spec: Spec, method: str, options: RunOptions) -> Tolerance:
    """Each of rtol and atol from the first level that sets it: command line, the spec's
    per-method tolerance, the spec's overall tolerance, then the method's default."""
    default = default_tolerance(method)
    per_method = spec.method_tolerances.get(method)
    levels = (options, per_method, spec.tolerance)

    def pick(attr: str, fallback: float) -> float:
        for level in levels:
            value = getattr(level, attr, None) if level is not None else None
            if value is not None:
                return float(value)
        return fallback

    return Tolerance(rtol=pick("rtol", default.rtol), atol=pick("atol", default.atol))


def build_problem(spec: Spec) -> Problem:
    """The core problem a spec describes (its logits, targets and loss options)."""
    if spec.loss == "sigmoid_cross_entropy":
        assert spec.targets is not None
        n, k = spec.logits.shape
        weight = None if spec.weight is None else np.broadcast_to(spec.weight, (n, k)).copy()
        return SigmoidProblem(
            spec.logits, spec.targets, spec.reduction, weight=weight, pos_weight=spec.pos_weight
        )
    return CrossEntropyProblem(
        spec.logits,
        labels=spec.labels,
        targets=spec.targets,
        reduction=spec.reduction,
        weight=spec.weight,
        ignore_index=spec.ignore_index,
        label_smoothing=spec.label_smoothing,
        softcap=spec.softcap,
        z_loss=spec.z_loss,
    )


def spec_options(spec: Spec) -> dict[str, object]:
    """The loss options a spec set, by spec key, for reports."""
    options: dict[str, object] = {}
    if spec.weight is not None:
        options["weight"] = spec.weight
    if spec.ignore_index is not None:
        options["ignore_index"] = spec.ignore_index
    if spec.label_smoothing:
        options["label_smoothing"] = spec.label_smoothing
    if spec.softcap is not None:
        options["softcap"] = spec.softcap
    if spec.z_loss:
        options["z_loss"] = spec.z_loss
    if spec.pos_weight is not None:
        options["pos_weight"] = spec.pos_weight
    return options


def run_spec(spec: Spec, options: RunOptions | None = None) -> SpecResult:
    """Compute everything a spec asks for and decide pass or fail."""
    options = options or RunOptions()
    problem = build_problem(spec)

    def shaped(a: np.ndarray) -> np.ndarray:
        return a[0] if spec.single else a

    loss = reduce_any(problem)
    if isinstance(problem, SigmoidProblem):
        probs = sigmoid(problem.logits)
        note = None if np.all(np.isfinite(np.asarray(loss))) else "the loss is not finite"
        if spec.single and isinstance(loss, np.ndarray):
            loss = loss[0]
    else:
        probs = softmax(capped(problem, problem.logits))
        note = loss_note(problem, loss)

    requested = options.methods or spec.methods or tuple(METHODS)
    # The reference is always computed: every other method is compared against it.
    names = [REFERENCE_METHOD] + [m for m in requested if m != REFERENCE_METHOD]
    gradients: dict[str, np.ndarray | None] = {}
    not_computable: dict[str, str] = {}
    notes: dict[str, str] = {}
    for name in names:
        try:
            out = METHODS[name](problem)
        except NotComputable as exc:
            gradients[name] = None
            not_computable[name] = exc.reason
            continue
        gradients[name] = out.grad
        if out.note:
            notes[name] = out.note

    reference = gradients[REFERENCE_METHOD]
    assert reference is not None  # the closed form is always computable
    comparisons = _compare_all(
        spec, options, "logits", {m: g for m, g in gradients.items()}, shaped
    )

    parameter_gradients: dict[str, dict[str, np.ndarray | None]] = {}
    if spec.layer is not None:
        parameter_gradients = _layer_gradients(spec.layer, problem, gradients, not_computable)
        if spec.single:  # the inputs were one vector (D,)
            parameter_gradients["inputs"] = {
                m: (None if g is None else g[0]) for m, g in parameter_gradients["inputs"].items()
            }
        for quantity, by_method in parameter_gradients.items():
            comparisons += _compare_all(spec, options, quantity, by_method, lambda a: a)

    found = _checks(spec, problem, probs, loss, reference, note)
    if spec.expect is not None:
        found.extend(checks.expectations(spec.expect, loss, shaped(probs), shaped(reference)))

    passed = all(c.passed for c in comparisons) and all(c.passed for c in found)
    return SpecResult(
        name=spec.name,
        file=spec.file,
        status="pass" if passed else "fail",
        message=note,
        shape=spec.logits[0].shape if spec.single else spec.logits.shape,
        classes=spec.classes,
        reduction=spec.reduction,
        loss_kind=spec.loss,
        options=spec_options(spec),
        logits=shaped(problem.logits),
        targets=shaped(_display_targets(problem)),
        labels=spec.labels,
        loss=loss,
        loss_note=note,
        probs=shaped(probs),
        gradients={m: (None if g is None else shaped(g)) for m, g in gradients.items()},
        not_computable=not_computable,
        method_notes=notes,
        parameter_gradients=parameter_gradients,
        reference=REFERENCE_METHOD,
        comparisons=tuple(comparisons),
        checks=tuple(found),
    )


def _display_targets(problem: Problem) -> np.ndarray:
    if isinstance(problem, SigmoidProblem):
        return problem.targets
    return dense_targets(problem)


def _compare_all(
    spec: Spec,
    options: RunOptions,
    quantity: str,
    by_method: dict[str, np.ndarray | None],
    shaped: Callable[[np.ndarray], np.ndarray],
) -> list[Comparison]:
    """Every computed method against the reference, for one quantity."""
    ref = by_method.get(REFERENCE_METHOD)
    if ref is None:
        return []
    return [
        compare(
            name,
            shaped(grad),
            REFERENCE_METHOD,
            shaped(ref),
            resolve_tolerance(spec, name, options),
            quantity=quantity,
        )
        for name, grad in by_method.items()
        if name != REFERENCE_METHOD and grad is not None
    ]


def _layer_gradients(
    layer: Layer,
    problem: Problem,
    gradients: dict[str, np.ndarray | None],
    not_computable: dict[str, str],
) -> dict[str, dict[str, np.ndarray | None]]:
    """Each method's gradients with respect to the layer's parameters, by parameter."""
    out: dict[str, dict[str, np.ndarray | None]] = {}
    for method, grad in gradients.items():
        try:
            if method == "finite_difference":
                found = layer_methods.finite_differences(layer, problem)
            elif grad is None:
                found = {}
            elif method == "jacobian":
                found = layer_methods.explicit_chain(layer, grad)
            else:
                found = layer_methods.closed_form(layer, grad)
        except NotComputable as exc:
            not_computable[f"{method} (layer)"] = exc.reason
            found = {}
        for name in layer_methods.PARAMETERS:
            if name == "bias" and layer.bias is None:
                continue
            out.setdefault(name, {})[method] = found.get(name)
    return out


def _checks(
    spec: Spec,
    problem: Problem,
    probs: np.ndarray,
    loss: float | np.ndarray,
    reference: np.ndarray,
    note: str | None,
) -> list[Check]:
    """The invariant checks that apply to this problem (see ``checks``)."""
    found: list[Check] = []
    finite = bool(np.all(np.isfinite(np.asarray(loss))))
    if not finite:
        expected = spec.expect is not None and spec.expect.loss is not None
        found.append(
            Check(
                "loss_is_finite",
                expected,
                (note or "the loss is not finite")
                + ("; the spec expects this value" if expected else ""),
            )
        )
    if isinstance(problem, SigmoidProblem):
        if problem.pos_weight is None:
            found.append(checks.label_flip_symmetry(problem))
        return found
    _, k = problem.shape
    found.append(checks.probs_sum_to_one(probs))
    if problem.plain:
        alpha, _ = reduction_scales(problem)
        found.append(checks.grad_rows_sum_to_zero(reference, weighted_targets(problem), alpha))
    if k * k <= JACOBIAN_CHUNK_ELEMENTS:
        found.append(checks.jacobian_properties(probs))
    if problem.plain and finite:
        found.append(checks.shift_invariance(problem, loss))
    if k == 2:
        found.append(checks.binary_equivalence(problem))
    return found


@dataclass(frozen=True, eq=False)
class JacobianView:
    """The softmax Jacobian of one sample and, with a label, the chain rule through it.

    Shapes: ``logits``, ``probs`` (K,); ``jacobian`` (K, K); ``dl_dp``, ``chain``, ``closed_form``
    (K,) when a label is given.
    """

    logits: np.ndarray
    probs: np.ndarray
    jacobian: np.ndarray
    """``J[i, j] = dp_i/dz_j``: ``p_i (1 - p_i)`` on the diagonal, ``-p_i p_j`` off it."""
    max_asymmetry: float
    """``max |J - J^T|`` (exactly 0 in floating point)."""
    row_sums: np.ndarray
    """``|sum_j J[i, j]|`` for each row i, shape (K,)."""
    row_sum_bounds: np.ndarray
    """Rounding bound on each row sum, shape (K,) (``checks.jacobian_row_sum_bound``)."""
    classes: tuple[str, ...] | None = None
    label: int | None = None
    loss: float | None = None
    dl_dp: np.ndarray | None = None
    """``dL/dp = -onehot(y) / p``."""
    chain: np.ndarray | None = None
    """``J^T dL/dp``, or None where ``p_y`` is below the smallest normal float64."""
    chain_note: str | None = None
    """Why ``chain`` is missing."""
    closed_form: np.ndarray | None = None
    """``p - onehot(y)``."""

    @property
    def symmetric(self) -> bool:
        return self.max_asymmetry == 0.0

    @property
    def max_row_sum(self) -> float:
        return float(np.max(self.row_sums))

    @property
    def rows_sum_to_zero(self) -> bool:
        return bool(np.all(self.row_sums <= self.row_sum_bounds))


def jacobian_view(
    logits: np.ndarray, label: int | None = None, classes: tuple[str, ...] | None = None
) -> JacobianView:
    """Everything ``xentcheck jacobian`` shows, for logits of shape (K,)."""
    from gradcheck_cli.core.softmax import softmax_jacobian

    problem_logits = logits[None, :]
    probs = softmax(problem_logits)[0]
    jac = softmax_jacobian(probs)
    view = JacobianView(
        logits=logits,
        probs=probs,
        jacobian=jac,
        max_asymmetry=float(np.max(np.abs(jac - jac.T))),
        row_sums=np.abs(np.sum(jac, axis=1)),
        row_sum_bounds=checks.jacobian_row_sum_bound(probs),
        classes=classes,
    )
    if label is None:
        return view
    problem = CrossEntropyProblem(
        problem_logits, labels=np.array([label], dtype=np.int64), reduction="sum"
    )
    dl_dp = np.zeros_like(probs)
    with np.errstate(divide="ignore"):
        dl_dp[label] = -1.0 / probs[label]
    chain: np.ndarray | None = None
    note: str | None = None
    try:
        chain = METHODS["jacobian"](problem).grad[0]
    except NotComputable as exc:
        note = exc.reason
    return JacobianView(
        logits=view.logits,
        probs=view.probs,
        jacobian=view.jacobian,
        max_asymmetry=view.max_asymmetry,
        row_sums=view.row_sums,
        row_sum_bounds=view.row_sum_bounds,
        classes=classes,
        label=label,
        loss=float(per_sample_loss(problem)[0]),
        dl_dp=dl_dp,
        chain=chain,
        chain_note=note,
        closed_form=METHODS["analytic"](problem).grad[0],
    )
