"""Run one validated spec: forward pass, every gradient method, comparisons and checks.

Pure computation: takes a :class:`~gradcheck_cli.model.Spec`, returns a
:class:`~gradcheck_cli.model.SpecResult`; no printing, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli import checks
from gradcheck_cli.compare import Comparison, Tolerance, compare, default_tolerance
from gradcheck_cli.core.loss import (
    CrossEntropyProblem,
    dense_targets,
    per_sample_loss,
    reduce_loss,
    reduction_weights,
)
from gradcheck_cli.core.softmax import softmax
from gradcheck_cli.methods import METHODS, REFERENCE_METHOD, NotComputable
from gradcheck_cli.methods.jacobian import JACOBIAN_CHUNK_ELEMENTS
from gradcheck_cli.model import Check, Spec, SpecResult


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


def run_spec(spec: Spec, options: RunOptions | None = None) -> SpecResult:
    """Compute everything a spec asks for and decide pass or fail."""
    options = options or RunOptions()
    problem = CrossEntropyProblem(
        spec.logits, labels=spec.labels, targets=spec.targets, reduction=spec.reduction
    )
    _, k = problem.shape

    def shaped(a: np.ndarray) -> np.ndarray:
        return a[0] if spec.single else a

    probs = softmax(problem.logits)
    loss = reduce_loss(problem, per_sample_loss(problem))

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
    comparisons: list[Comparison] = []
    for name, grad in gradients.items():
        if name == REFERENCE_METHOD or grad is None:
            continue
        comparisons.append(
            compare(
                name,
                shaped(grad),
                REFERENCE_METHOD,
                shaped(reference),
                resolve_tolerance(spec, name, options),
            )
        )

    targets = dense_targets(problem)
    found: list[Check] = [
        checks.probs_sum_to_one(probs),
        checks.grad_rows_sum_to_zero(reference, targets, reduction_weights(problem)),
    ]
    if k * k <= JACOBIAN_CHUNK_ELEMENTS:
        found.append(checks.jacobian_properties(probs))
    found.append(checks.shift_invariance(problem, loss))
    if spec.expect is not None:
        found.extend(checks.expectations(spec.expect, loss, shaped(probs), shaped(reference)))

    passed = all(c.passed for c in comparisons) and all(c.passed for c in found)
    return SpecResult(
        name=spec.name,
        file=spec.file,
        status="pass" if passed else "fail",
        shape=spec.logits[0].shape if spec.single else spec.logits.shape,
        classes=spec.classes,
        reduction=spec.reduction,
        logits=shaped(problem.logits),
        targets=shaped(targets),
        labels=spec.labels,
        loss=loss,
        probs=shaped(probs),
        gradients={m: (None if g is None else shaped(g)) for m, g in gradients.items()},
        not_computable=not_computable,
        method_notes=notes,
        reference=REFERENCE_METHOD,
        comparisons=tuple(comparisons),
        checks=tuple(found),
    )


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
