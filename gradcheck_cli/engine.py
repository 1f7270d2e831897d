"""Run one validated spec: forward pass, every gradient method, comparisons and checks.

Pure computation: takes a :class:`~gradcheck_cli.model.Spec`, returns a
:class:`~gradcheck_cli.model.SpecResult`; no printing, no files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gradcheck_cli import (
    checks,
    diagnose,
    fastmode,
    linear_check,
    microbatches,
    tolerance_models,
)
from gradcheck_cli import impl as impl_module
from gradcheck_cli.compare import Comparison, Tolerance, compare
from gradcheck_cli.core import (
    Problem,
    SigmoidProblem,
    batch_scales,
    cast_problem,
    lowp,
    reduce_any,
    rows_of,
)
from gradcheck_cli.core import build_problem as build_family_problem
from gradcheck_cli.core.options import set_options, values_for
from gradcheck_cli.core.sigmoid_ce import sigmoid
from gradcheck_cli.core.softmax import softmax
from gradcheck_cli.core.softmax_ce import (
    CrossEntropyProblem,
    capped,
    dense_targets,
    loss_note,
    per_sample_loss,
    reduction_scales,
    weighted_targets,
)
from gradcheck_cli.errors import CannotCheck
from gradcheck_cli.impl import Implementation
from gradcheck_cli.methods import (
    DEFAULT_SETTINGS,
    EXACT_METHOD,
    METHODS,
    REFERENCE_METHOD,
    MethodSettings,
    NotComputable,
    reference_of,
)
from gradcheck_cli.methods import layer as layer_methods
from gradcheck_cli.methods import linear as linear_methods
from gradcheck_cli.methods.differences import (
    SAMPLE_CLASSES,
    SAMPLE_TOP,
    SELF_CHECK_SEED,
    sample_columns,
)
from gradcheck_cli.model import (
    Check,
    DType,
    JacobianView,
    Layer,
    ParallelRun,
    Spec,
    SpecResult,
)
from gradcheck_cli.precision import dtype_overflow, dtype_tolerance, predicted_error

if TYPE_CHECKING:
    from gradcheck_cli.isolation import Isolation


@dataclass(frozen=True)
class RunOptions:
    """Command-line choices that override every spec of a run."""

    methods: tuple[str, ...] | None = None
    """Methods to run instead of each spec's own list (``None``: the spec's, or all)."""
    rtol: float | None = None
    """Relative tolerance for every comparison (wins over the spec's)."""
    atol: float | None = None
    """Absolute tolerance for every comparison (wins over the spec's)."""
    dtype: DType | None = None
    """Precision of the methods under test, instead of each spec's ``dtype``."""
    impl: Implementation | None = None
    """An implementation to check against every spec (``--impl``)."""
    fast: bool = False
    """Force fast mode (directional checks, streamed rows) for every spec (``--fast``)."""
    full: bool = False
    """Force the full element-wise check even above the budget (``--full``)."""
    directions: int = fastmode.DEFAULT_DIRECTIONS
    """Random directions of fast mode's directional checks."""
    progress: fastmode.ProgressCallback | None = None
    """Called with (chunks done, chunks) while a fast-mode spec runs."""
    tolerance_model: tolerance_models.Settings | None = None
    """The low-precision tolerance model of implementation checks (``--tolerance-model``;
    None: each dtype's default)."""
    compiled: Implementation | None = None
    """The ``torch.compile`` twin of ``impl`` (``--compile``), checked the same way and on its
    own against the reference, not against the eager function."""
    native: impl_module.NativeChecks | None = None
    """Choices for framework-native implementations (``--allow-inplace``,
    ``--nondeterministic-tol``, ``--views``; None: the defaults)."""
    announce: Callable[[str, float], None] | None = None
    """Called with (spec name, element operations) before an element-wise check that ``full``
    forces above the fast-mode budget (the command line says the estimated cost)."""
    chunks: tuple[int, ...] | None = None
    """``--chunks``: a fused linear kernel is called once per chunk count, each call held to
    the reference."""
    chunk_option: str | None = None
    """``--chunk-option``: the kernel's chunk-count parameter (default: found by name)."""
    tensor_parallel: tuple[int, ...] | None = None
    """``--tensor-parallel``: run the torch implementation on a process group of each size,
    rank by rank (``gradcheck_cli.tensor_parallel``), instead of in this process."""
    timeout: float = 300.0
    """``--timeout``: seconds a tensor-parallel launch may take (an isolated call's limit is
    ``isolation.timeout``)."""
    isolation: Isolation | None = None
    """``--isolate``: run the implementation in a worker process with these limits
    (``gradcheck_cli.isolation``; ``api.run_paths`` starts it). None: in this process."""
    vocab_chunks: tuple[int, ...] | None = None
    """``--vocab-chunks``: the implementation is checked once per chunk count, passed as its
    chunk-count parameter (``--chunk-option``, or found by name: :data:`VOCAB_CHUNK_PARAMETERS`)."""
    sample: int | None = None
    """``--sample M``: the differencing methods (finite differences, complex step) of every
    element-wise spec evaluate each row's label and largest logits and M seeded random classes
    instead of every class. None: only where ``fastmode.route`` says so (M =
    ``differences.SAMPLE_CLASSES``); ``full`` overrides it."""

    def linear(self) -> linear_check.LinearOptions:
        """What a ``linear:`` spec's kernel check reads."""
        return linear_check.LinearOptions(
            self.rtol, self.atol, self.tolerance_model, self.chunks, self.chunk_option
        )


def resolve_tolerance(
    spec: Spec, method: str, options: RunOptions, dtype: str = "float64"
) -> Tolerance:
    """Each of rtol and atol from the first level that sets it: command line, the spec's
    per-method tolerance, the spec's overall tolerance, then the method's default for its
    finite-difference scheme and dtype (``precision.DTYPE_TOLERANCES``)."""
    default = dtype_tolerance(method, spec.fd_scheme, dtype)
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
    """The core problem a spec describes (its logits, targets and its family's options)."""
    options = values_for(spec, spec.loss)
    return build_family_problem(
        spec.loss, spec.logits, spec.labels, spec.targets, spec.reduction, options
    )


#: Name of the float64 closed form that serves as reference in a reduced-precision run when
#: ``exact`` is not computed.
FLOAT64_REFERENCE = "analytic_float64"


def run_spec(spec: Spec, options: RunOptions | None = None) -> SpecResult:
    """Compute everything a spec asks for and decide pass or fail.

    With a ``dtype`` below float64 the methods under test run on the logits rounded to that
    dtype, and the reference (``exact``, else the float64 closed form) is computed in float64
    from the same rounded values, so the comparison measures the computation, not the rounding
    of the inputs. A spec's ``grad_output`` that no implementation of the run uses is said in
    the notes (``grad_output``).
    """
    options = options or RunOptions()
    result = _run_spec(spec, options)
    unused = _unused_grad_output(spec, options)
    if unused is None:
        return result
    return dataclass_replace(result, method_notes={**result.method_notes, "grad_output": unused})


def _unused_grad_output(spec: Spec, options: RunOptions) -> str | None:
    """Why the spec's ``grad_output`` is not used in this run (None: it is, or there is none):
    only a framework-native implementation is back-propagated; the NumPy protocol returns the
    plain gradient."""
    if spec.grad_output is None:
        return None
    impls = [impl for impl, _ in _implementations(options)]
    if any(impl.native is not None for impl in impls):
        return None
    why = (
        f"implementation {impls[0].name} follows the NumPy protocol (it returns the plain gradient)"
        if impls
        else "no --impl"
    )
    return (
        f"the spec's grad_output is not used: {why}; it is the upstream gradient of a "
        "framework-native implementation (--impl torch:..., jax:..., torch, optax)"
    )


def _run_spec(spec: Spec, options: RunOptions) -> SpecResult:
    """:func:`run_spec` without the note on an unused ``grad_output``."""
    dtype = options.dtype or spec.dtype
    lowp.register(dtype)
    problem = build_problem(spec)
    n, k = problem.shape
    fused = spec.layer is not None and spec.layer.fused
    parallel = bool(options.tensor_parallel) and options.impl is not None
    if parallel:
        # the ranks check the implementation; of xentcheck's own methods only the reference,
        # element-wise at any size (a process group's kernel is not streamed)
        if fused:
            raise CannotCheck("--tensor-parallel does not run linear: specs")
        options = dataclass_replace(options, methods=options.methods or (REFERENCE_METHOD,))
    elif fused and (options.fast or spec.logits.strides == (0, 0)):  # chunks: no (N, V) logits
        return _run_linear(spec, options, problem, dtype)
    way = _way(spec, options, n, k, dtype)
    if not parallel and (options.fast or (not options.full and way == "fast")):
        return _run_fast(spec, options, problem, dtype)
    if options.announce is not None and way != "full":
        options.announce(spec.name, float(n * k * k))
    columns = None
    if not options.full and spec.layer is None and (way == "sampled" or options.sample):
        sample = options.sample or SAMPLE_CLASSES
        columns = sample_columns(problem.logits, getattr(problem, "labels", None), sample)
        if columns.size == k:
            columns = None
    problem, under_test = _in_dtype(problem, dtype)
    shaped = _shaper(spec)
    forward = _forward(spec, problem)
    run = _gradients(spec, options, problem, under_test, dtype, columns)
    reference = run.reference()
    predicted = {
        name: predicted_error(
            name,
            problem if ran_in(name, dtype) == "float64" else under_test,
            reference,
            scheme=spec.fd_scheme,
            step=spec.fd_step,
        )
        for name, grad in run.gradients.items()
        if grad is not None and name not in (run.reference_name, EXACT_METHOD, FLOAT64_REFERENCE)
    }
    _drop_unresolvable(spec, dtype, run.gradients, predicted, reference, run.not_computable)
    comparisons = _compare_all(
        spec, options, "logits", run.gradients, run.reference_name, shaped, predicted, dtype,
        run.settings.columns,
    )  # fmt: skip
    parameter_gradients: dict[str, dict[str, np.ndarray | None]] = {}
    if spec.layer is not None:
        parameter_gradients = _layer_part(spec, problem, run, dtype)
        for quantity, by_method in parameter_gradients.items():
            comparisons += _compare_all(
                spec, options, quantity, by_method, REFERENCE_METHOD, lambda a: a, {}, "float64"
            )
    found = _checks(spec, problem, forward.probs, forward.loss, reference, forward.note)
    if spec.microbatches is not None:
        found += _microbatch_part(spec, options, (problem, under_test), reference, dtype)
    parallel_runs: list[ParallelRun] = []
    for impl, tag in _implementations(options):
        if parallel:
            from gradcheck_cli import tensor_parallel

            ref_loss = np.asarray(forward.loss, dtype=np.float64)
            tp_rows, tp_checks, tp_runs = tensor_parallel.check(
                spec, impl, under_test.logits, ref_loss, reference,
                impl_module.scales(under_test), dtype, options.tensor_parallel or (),
                timeout=options.timeout, rtol=options.rtol, atol=options.atol,
                native=options.native,
            )  # fmt: skip
            comparisons += tp_rows
            found += tp_checks
            parallel_runs += tp_runs
            continue
        try:
            if fused:
                assert isinstance(problem, CrossEntropyProblem)
                impl_rows, impl_checks = _linear_impl(spec, options, impl, problem, dtype, run, tag)
                comparisons += impl_rows
                found += impl_checks
                continue
            impl_rows, impl_checks = _impl_part(
                spec, options, impl, (problem, under_test), dtype, forward.loss, reference, run,
                tag,
            )  # fmt: skip
        except impl_module.ImplError as exc:
            if not _is_twin(tag):
                raise
            impl_rows, impl_checks = [], _compile_failure(exc, run.not_computable)
        comparisons += impl_rows
        found += impl_checks
    if dtype != "float64":
        found.append(_dtype_loss_check(under_test, forward.loss, dtype))
    if spec.expect is not None:
        found.extend(_expectations(spec, dtype, forward, reference, shaped))
    return _result(
        spec,
        comparisons,
        found,
        message=forward.note,
        logits=shaped(problem.logits),
        targets=shaped(_display_targets(problem)),
        labels=spec.labels,
        loss=forward.loss,
        loss_note=forward.note,
        probs=shaped(forward.probs),
        gradients={m: (None if g is None else shaped(g)) for m, g in run.gradients.items()},
        not_computable=run.not_computable,
        method_notes=run.notes,
        parameter_gradients=parameter_gradients,
        reference=run.reference_name,
        parallel=tuple(parallel_runs),
        sampled=None if columns is None else (int(columns.size), k),
    )


def _way(spec: Spec, options: RunOptions, n: int, k: int, dtype: str) -> str:
    """How an (N, K) spec is checked unless ``--full`` or ``--fast`` says: ``full``,
    ``sampled`` or ``fast`` (``fastmode.route``). A layer spec is never sampled, nor, unless
    ``--sample`` asks, one below float64 (the in-dtype checks of a huge vocabulary are fast
    mode's)."""
    if spec.layer is not None:
        return "fast" if fastmode.needs_fast(n, k) else "full"
    way = fastmode.route(n, k, options.sample or SAMPLE_CLASSES)
    if way == "sampled" and dtype != "float64" and not options.sample:
        return "fast"
    return way


def _result(
    spec: Spec, comparisons: Sequence[Comparison], found: Sequence[Check], **fields: Any
) -> SpecResult:
    """The result of a spec that ran: pass iff every comparison and check passed; the spec's
    own description (name, file, shape, options) plus ``fields``."""
    passed = all(c.passed for c in comparisons) and all(c.passed for c in found)
    return SpecResult(
        name=spec.name,
        file=spec.file,
        status="pass" if passed else "fail",
        shape=spec.logits[0].shape if spec.single else spec.logits.shape,
        classes=spec.classes,
        reduction=spec.reduction,
        loss_kind=spec.loss,
        options=set_options(spec),
        comparisons=tuple(comparisons),
        checks=tuple(found),
        locations=spec.locations,
        **fields,
    )


def _shaper(spec: Spec) -> Callable[[np.ndarray], np.ndarray]:
    """Arrays back in the spec's own shape: (K,) for a single sample, (N, K) for a batch."""

    def shaped(a: np.ndarray) -> np.ndarray:
        return a[0] if spec.single else a

    return shaped


def _in_dtype(problem: Problem, dtype: str) -> tuple[Problem, Problem]:
    """(the problem in float64, the problem the methods under test get): below float64 both
    hold the logits rounded to ``dtype``, the first widened back (the reference's inputs)."""
    if dtype == "float64":
        return problem, problem
    overflow = dtype_overflow(problem.logits, dtype)
    if overflow is not None:
        raise CannotCheck(f"cannot run in {dtype}: {overflow}")
    under_test = cast_problem(problem, dtype)
    return cast_problem(under_test, "float64"), under_test


@dataclass(frozen=True, eq=False)
class Forward:
    """The forward pass of a spec's problem: the loss in the spec's shape, the probabilities
    (softmax, or sigmoid per element) (N, K), and why the loss is not finite (or None)."""

    loss: float | np.ndarray
    probs: np.ndarray
    note: str | None


def _forward(spec: Spec, problem: Problem) -> Forward:
    loss = reduce_any(problem)
    if isinstance(problem, SigmoidProblem):
        probs = sigmoid(problem.logits)
        note = None if np.all(np.isfinite(np.asarray(loss))) else "the loss is not finite"
        if spec.single and isinstance(loss, np.ndarray):
            loss = loss[0]
        return Forward(loss, probs, note)
    return Forward(loss, softmax(capped(problem, problem.logits)), loss_note(problem, loss))


@dataclass(eq=False)
class _Gradients:
    """Every method's gradient of one run (None: not computable), why not, and how."""

    gradients: dict[str, np.ndarray | None]
    not_computable: dict[str, str]
    notes: dict[str, str]
    reference_name: str
    settings: MethodSettings

    def reference(self) -> np.ndarray:
        grad = self.gradients[self.reference_name]
        assert grad is not None  # the closed form is always computable
        return grad


#: Methods that run on float64 up-cast copies in a bfloat16 check (see ``_gradients``' note).
UPCAST_IN_BFLOAT16 = ("finite_difference", "complex_step")


def ran_in(method: str, dtype: str) -> str:
    """The precision ``method`` runs in when a check's dtype is ``dtype``: float64 for the
    references, and for the numerical derivatives of a bfloat16 check."""
    if method in (EXACT_METHOD, FLOAT64_REFERENCE):
        return "float64"
    if dtype == "bfloat16" and method in UPCAST_IN_BFLOAT16:
        return "float64"
    return dtype


def _gradients(
    spec: Spec,
    options: RunOptions,
    problem: Problem,
    under_test: Problem,
    dtype: str,
    columns: np.ndarray | None = None,
) -> _Gradients:
    """Run every requested method (the closed form always: it is the reference when ``exact``
    is not; below float64 the float64 closed form is, under :data:`FLOAT64_REFERENCE`);
    ``columns``: the sampled classes of the differencing methods (see :data:`SAMPLED`)."""
    requested = options.methods or spec.methods or tuple(METHODS)
    names = [REFERENCE_METHOD] + [m for m in requested if m != REFERENCE_METHOD]
    settings = MethodSettings(fd_scheme=spec.fd_scheme, fd_step=spec.fd_step, columns=columns)
    gradients: dict[str, np.ndarray | None] = {}
    not_computable: dict[str, str] = {}
    notes: dict[str, str] = {}
    for name in names:
        upcast = ran_in(name, dtype) == "float64"
        target = problem if upcast else under_test
        try:
            out = METHODS[name](target, settings)
        except NotComputable as exc:
            gradients[name] = None
            not_computable[name] = exc.reason
            continue
        gradients[name] = out.grad.astype(np.float64)
        if out.note:
            notes[name] = out.note
        if columns is not None and name in SAMPLED:
            k = problem.shape[1]
            notes[name] = (notes.get(name, "") + "; " if name in notes else "") + (
                f"sampled {columns.size} of {k} classes (each row's label and {SAMPLE_TOP} "
                "largest logits, and seeded random ones) and compared there: every class with "
                "--full"
            )
        if upcast and name in UPCAST_IN_BFLOAT16 and dtype == "bfloat16":
            notes[name] = (
                "run on float64 up-cast copies of the bfloat16 logits, with float64's steps: "
                "with 8 significant bits a difference quotient gives 0/0 or noise (jax #7742) "
                "and NumPy has no bfloat16 complex type"
            )
    if dtype != "float64" and gradients.get(EXACT_METHOD) is None:
        gradients[FLOAT64_REFERENCE] = METHODS[REFERENCE_METHOD](problem, settings).grad
        notes[FLOAT64_REFERENCE] = "the closed form in float64: the reference of this run"
    reference_name = reference_of(gradients)
    if dtype != "float64" and reference_name == REFERENCE_METHOD:
        reference_name = FLOAT64_REFERENCE
    return _Gradients(gradients, not_computable, notes, reference_name, settings)


#: The methods that difference coordinate by coordinate, N K^2 work: sampled on large specs.
SAMPLED = ("finite_difference", "complex_step")


def _layer_part(
    spec: Spec, problem: Problem, run: _Gradients, dtype: str
) -> dict[str, dict[str, np.ndarray | None]]:
    """The layer's parameter gradients by method (always in float64: below it, the closed
    forms are recomputed at the spec's own inputs and finite differences are skipped)."""
    assert spec.layer is not None
    layer_problem, layer_grads = problem, run.gradients
    if dtype != "float64":
        layer_problem = build_problem(spec)
        layer_grads = {
            m: METHODS[m](layer_problem, run.settings).grad
            for m in layer_methods.LAYER_METHODS
            if m in run.gradients and m != "finite_difference"
        }
        layer_grads["finite_difference"] = None
        run.notes["layer"] = "the layer's parameters are checked in float64"
    out = _layer_gradients(spec.layer, layer_problem, layer_grads, run.not_computable)
    if spec.single:  # the inputs were one vector (D,)
        out["inputs"] = {m: (None if g is None else g[0]) for m, g in out["inputs"].items()}
    layer, names = spec.layer, spec.layer.names()  # a linear: spec's names and weight layout
    return {
        names[q]: {
            m: (g if g is None or q != "weights" else layer.given_weight(g)) for m, g in by.items()
        }
        for q, by in out.items()
    }


def _linear_impl(
    spec: Spec,
    options: RunOptions,
    impl: Implementation,
    problem: CrossEntropyProblem,
    dtype: str,
    run: _Gradients,
    tag: str,
) -> tuple[list[Comparison], list[Check]]:
    """A fused linear kernel (``linear:`` spec) against the chunked float64 reference
    (``linear_check``); its notes join the run's."""
    template = linear_methods.template_problem(problem)
    outcome = linear_check.check(spec, impl, template, dtype, options.linear(), tag)
    run.notes.update(outcome.notes)
    return outcome.comparisons, _tagged(outcome.checks, tag)


#: Random directions of the reference's own check on a ``linear:`` spec too large for the
#: element-wise methods.
LINEAR_DIRECTIONS = 2


def _run_linear(spec: Spec, options: RunOptions, problem: Problem, dtype: str) -> SpecResult:
    """A ``linear:`` spec whose (N, V) logits are not held: the reference in row chunks
    (``methods.linear``); with ``--impl`` the kernel against it, else the reference against
    central differences of its own loss along seeded random directions of (H, W, b)."""
    assert spec.layer is not None and isinstance(problem, CrossEntropyProblem)
    template = linear_methods.template_problem(problem)
    comparisons: list[Comparison] = []
    found: list[Check] = []
    notes: dict[str, str] = {}
    not_computable: dict[str, str] = {}
    loss: np.ndarray | None = None
    for impl, tag in _implementations(options):
        try:
            outcome = linear_check.check(spec, impl, template, dtype, options.linear(), tag)
        except impl_module.ImplError as exc:
            if not _is_twin(tag):
                raise
            found += _compile_failure(exc, not_computable)
            continue
        comparisons += outcome.comparisons
        found += _tagged(outcome.checks, tag)
        notes.update(outcome.notes)
        loss = outcome.reference_loss
    if options.impl is None:
        _, wide = linear_check.kernel_inputs(spec.layer, dtype)
        ref = linear_methods.reference(wide, template)
        loss = ref.loss
        comparisons += _linear_directions(spec, wide, template, ref)
        notes["reference"] = (
            "float64 in row chunks (methods.linear); checked against central differences of "
            f"its own loss along {LINEAR_DIRECTIONS} seeded random directions of (hidden, "
            "weight, bias)"
        )
    if spec.methods or options.methods:
        not_computable["methods"] = (
            "the logits' own methods need the (N, V) logits, which this linear spec is too "
            "large to hold; its reference is checked instead"
        )
    assert loss is not None
    value: float | np.ndarray = float(loss) if loss.ndim == 0 else loss
    if not np.all(np.isfinite(loss)):
        expected = spec.expect is not None and spec.expect.loss is not None
        found.append(Check("loss_is_finite", expected, "the loss is not finite"))
    if spec.expect is not None:
        expect = dataclass_replace(spec.expect, probs=None, grad=None)
        found.extend(checks.expectations(expect, value, np.zeros(0), None))
    return _result(
        spec,
        comparisons,
        found,
        loss=value,
        gradients={},
        not_computable=not_computable,
        method_notes=notes,
        reference=FLOAT64_REFERENCE,
    )


def _linear_directions(
    spec: Spec,
    wide: Layer,
    template: CrossEntropyProblem,
    ref: linear_methods.LinearResult,
) -> list[Comparison]:
    """The reference's directional derivatives ``sum_theta dL/dtheta . d_theta`` against
    central differences of the chunked float64 loss, one comparison per seeded direction
    (with ``reduction: none`` of the sum of the per-sample losses)."""
    rng = np.random.default_rng([SELF_CHECK_SEED, 17])
    names = {"inputs": wide.inputs, "weights": wide.weights, "bias": wide.bias}
    out = []
    for i in range(LINEAR_DIRECTIONS):
        dirs = {k: rng.standard_normal(a.shape) for k, a in names.items() if a is not None}
        exact = sum(float(np.sum(ref.grads[k] * d)) for k, d in dirs.items())
        scale = sum(float(np.sum(np.abs(ref.grads[k] * d))) for k, d in dirs.items())
        top = max(float(np.max(np.abs(a), initial=1.0)) for a in names.values() if a is not None)
        h = float(np.finfo(np.float64).eps) ** (1 / 3) * max(1.0, top)
        values = []
        for sign in (1.0, -1.0):
            moved = {k: names[k] + sign * h * d for k, d in dirs.items()}
            layer = dataclass_replace(
                wide, inputs=moved["inputs"], weights=moved["weights"], bias=moved.get("bias")
            )
            values.append(float(np.sum(linear_methods.forward_loss(layer, template))))
        quotient = (values[0] - values[1]) / (2 * h)
        tol = Tolerance(rtol=1e-6, atol=1e-6 * max(scale, 1e-300))
        out.append(
            compare(
                f"finite_difference (direction {i + 1})",
                np.asarray(quotient),
                "reference",
                np.asarray(exact),
                tol,
                "direction",
            )
        )
    return out


def _display_targets(problem: Problem) -> np.ndarray:
    if isinstance(problem, SigmoidProblem):
        return problem.targets
    return dense_targets(problem)


def _compare_all(
    spec: Spec,
    options: RunOptions,
    quantity: str,
    by_method: dict[str, np.ndarray | None],
    reference: str,
    shaped: Callable[[np.ndarray], np.ndarray],
    predicted: dict[str, float | None],
    dtype: str,
    sampled: np.ndarray | None = None,
) -> list[Comparison]:
    """Every computed method against ``reference``, for one quantity. In a reduced-precision run
    the methods other than the float64 references ran in ``dtype``. ``sampled``: the classes
    the differencing methods computed (the comparison is made there)."""
    ref = by_method.get(reference)
    if ref is None:
        return []
    out = []
    for name, grad in by_method.items():
        if name == reference or grad is None:
            continue
        ran = ran_in(name, dtype)
        tol = resolve_tolerance(spec, name, options, ran)
        got, want = shaped(grad), shaped(ref)
        columns = sampled if quantity == "logits" and name in SAMPLED else None
        if columns is not None:  # a sampled method: compared at its classes only
            got, want = got[..., columns], want[..., columns]
        row = compare(
            name, got, reference, want, tol, quantity=quantity, predicted=predicted.get(name),
            dtype=ran,
        )  # fmt: skip
        if ran != "float64" and quantity == "logits":  # ulps, and would a zero pass?
            row = _with_precision(row, got, want, tol)
        if columns is not None and row.worst_index:
            *lead, j = row.worst_index
            row = dataclass_replace(row, worst_index=(*lead, int(columns[j])))
        out.append(row)
    return out


def _with_precision(
    row: Comparison, got: np.ndarray, truth: np.ndarray, tol: Tolerance
) -> Comparison:
    """A built-in method's low-precision row with its :class:`Precision` under its fixed
    table: the error in ulps, and whether a zero gradient would pass too."""

    def accepts(values: np.ndarray) -> bool:
        return compare(row.method, values, row.reference, truth, tol, dtype=row.dtype).passed

    precision = tolerance_models.measure(
        got, truth, None, row.dtype, tolerance_models.Settings("fixed"),
        {"a zero gradient": np.zeros_like(truth)}, accepts,
    )  # fmt: skip
    return dataclass_replace(row, precision=precision)


def _layer_gradients(
    layer: Layer,
    problem: Problem,
    gradients: dict[str, np.ndarray | None],
    not_computable: dict[str, str],
) -> dict[str, dict[str, np.ndarray | None]]:
    """Each method's gradients with respect to the layer's parameters, by parameter.

    The layer's parameters are checked by the three methods of ``methods.layer`` (closed form,
    explicit chain, finite differences); the closed form is their reference.
    """
    out: dict[str, dict[str, np.ndarray | None]] = {}
    for method, grad in gradients.items():
        if method not in layer_methods.LAYER_METHODS:
            continue
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


def _run_fast(spec: Spec, options: RunOptions, problem: Problem, dtype: str) -> SpecResult:
    """A spec too large for the element-wise check (see ``fastmode``); with ``--impl`` the
    implementation runs once on the whole batch and its gradient is compared in the same
    pass over the row chunks (:class:`_FastImpl`)."""
    overflow = dtype_overflow(problem.logits, dtype) if dtype != "float64" else None
    if overflow is not None:
        raise CannotCheck(f"cannot run in {dtype}: {overflow}")
    if spec.layer is not None:
        raise CannotCheck("a layer spec is not supported in fast mode; run with --full")
    if (
        options.impl is not None
        and isinstance(problem, SigmoidProblem)
        and spec.reduction == "none"
    ):
        # fast mode keeps one loss per row; this loss has one per element
        raise CannotCheck(
            "fast mode cannot check an implementation's per-element sigmoid loss (reduction "
            "none); run with --full, or reduce with mean or sum"
        )
    # the reference is computed at the logits the methods (and an implementation) receive
    given = problem  # the spec's own inputs: golden values describe them
    problem = cast_problem(problem, dtype) if problem.logits.dtype != np.dtype(dtype) else problem
    skipped = {}
    expect = spec.expect
    if expect is not None and (expect.probs is not None or expect.grad is not None):
        for key in ("probs", "grad"):
            if getattr(expect, key) is not None:
                skipped[f"expect.{key}"] = (
                    "skipped in fast mode: the arrays are not kept (--full checks it)"
                )
        expect = dataclass_replace(expect, probs=None, grad=None)
    # Checking an implementation needs only the reference; xentcheck's own methods on request.
    default = () if options.impl is not None else fastmode.FAST_DEFAULT_METHODS
    requested = options.methods or spec.methods or default
    settings = MethodSettings(fd_scheme=spec.fd_scheme, fd_step=spec.fd_step)
    if spec.microbatches is not None:
        skipped["microbatches"] = "checked in full mode only (--full)"
    impls = _implementations(options)  # --impl (per chunk count), then its compiled twin
    prepared = _FastImpl(spec, options, problem, dtype, *impls[0]) if impls else None
    outcome = fastmode.run_fast(
        problem,
        tuple(requested),
        dtype,
        settings,
        lambda method, dt: resolve_tolerance(spec, method, options, dt),
        directions=options.directions,
        progress=options.progress,
        impl=None if prepared is None else prepared.gradient,
    )
    comparisons, found = list(outcome.comparisons), list(outcome.checks)
    notes, not_computable = dict(outcome.notes), {**outcome.not_computable, **skipped}
    if prepared is not None:
        rows, extra = prepared.finish(outcome, notes, not_computable)
        comparisons += rows
        found += extra
    for twin_impl, tag in impls[1:]:  # its own pass: the reference again, the twin's gradient
        try:
            twin = _FastImpl(spec, options, problem, dtype, twin_impl, tag)
            again = fastmode.run_fast(
                problem,
                (),
                dtype,
                settings,
                lambda method, dt: resolve_tolerance(spec, method, options, dt),
                impl=twin.gradient,
            )
            rows, extra = twin.finish(again, notes, not_computable)
        except impl_module.ImplError as exc:
            if not _is_twin(tag):
                raise
            rows, extra = [], _compile_failure(exc, not_computable)
        comparisons += rows
        found += extra
    loss = outcome.loss
    finite = bool(np.all(np.isfinite(np.asarray(loss))))
    if not finite:
        expected = expect is not None and expect.loss is not None
        found.append(Check("loss_is_finite", expected, "the loss is not finite"))
    if expect is not None:
        at_inputs = loss  # (as in full mode, golden values are checked at the spec's inputs)
        if expect.loss is not None and given is not problem:
            at_inputs = reduce_any(given)
        found.extend(checks.expectations(expect, at_inputs, np.zeros(0), None))
    return _result(
        spec,
        comparisons,
        found,
        loss=loss,
        gradients={},
        not_computable=not_computable,
        method_notes=notes,
        reference=FLOAT64_REFERENCE,
    )


class _FastImpl:
    """``--impl`` in fast mode: the call on the whole batch (before the chunk pass, which
    compares the gradient), then the loss, the diagnosis of a failure on the rows around the
    worst element, the framework-native checks and the streamed self-consistency check
    (``impl_scale``)."""

    def __init__(
        self,
        spec: Spec,
        options: RunOptions,
        problem: Problem,
        dtype: str,
        impl: Implementation,
        tag: str = "impl",
    ) -> None:
        self.spec, self.options, self.impl, self.problem, self.dtype = (
            spec,
            options,
            impl,
            problem,
            dtype,
        )
        self.tag = tag
        n, k = problem.shape
        self.rows_per = max(1, fastmode.ROW_CHUNK_ELEMENTS // k)
        self.shape = _loss_shape(spec, n, k)
        self.kwargs = {**impl_module.options_for(spec, dtype), **dict(impl.bound)}
        self.upstream = impl_module.upstream_for(impl, spec, self.shape)
        self.factor = (
            np.ones(()) if self.upstream is None else np.asarray(_per_row(self.upstream, spec))
        )
        given = (
            self.kwargs if self.upstream is None else {**self.kwargs, "grad_output": self.upstream}
        )
        self.loss, self.grad = impl_module.checked_outputs(
            impl, problem.logits, given, self.shape, widen=False
        )
        self.natural = impl_module.scales(problem, self.rows_per)
        # max |reference| is bounded (tightly for index labels) times the largest upstream
        # factor: the bound sets the floor of the rounded model (the values are not kept)
        from gradcheck_cli.impl_scale import gradient_bound

        largest = (  # (only the half-precision rounded model has a floor to set)
            gradient_bound(problem, self.rows_per, self.natural.grad)
            if dtype in impl_module.HALF_DTYPES
            else self.natural.grad
        )
        bound = np.asarray(largest * float(np.max(np.abs(self.factor))))
        self.gradient = fastmode.ImplGradient(
            f"impl {impl.name}", self.grad, self.factor, self.tol("grad", bound)
        )

    def tol(self, check: str, values: np.ndarray | None = None) -> Tolerance:
        """The tolerance of a check: the rounded model (``--model-k``, ``--model-floor``) in
        half precision, whose floor ``values`` (already scaled by grad_output) set; the fixed
        tables, scaled by grad_output, otherwise. The baseline model needs the whole arrays
        and is not run here (the notes say so)."""
        settings = self.options.tolerance_model or tolerance_models.Settings()
        half = self.dtype in impl_module.HALF_DTYPES and check != "self"
        if half and values is not None and settings.for_dtype(self.dtype) != "fixed":
            inner = impl_module.inner_rounding(check, self.natural)
            if check == "grad":
                inner *= float(np.max(np.abs(self.factor)))
            default = tolerance_models.rounded(
                values, self.dtype, settings.k, settings.floor_ulps, inner
            )
            scale = 1.0
        else:
            default = impl_module.tolerance(check, self.dtype, self.natural, values)
            scale = float(np.max(np.abs(self.factor))) if check == "grad" and not half else 1.0
        return Tolerance(
            rtol=default.rtol if self.options.rtol is None else self.options.rtol,
            atol=default.atol * scale if self.options.atol is None else self.options.atol,
        )

    def finish(
        self, outcome: fastmode.FastOutcome, notes: dict[str, str], not_computable: dict[str, str]
    ) -> tuple[list[Comparison], list[Check]]:
        """The implementation's rows and checks once the chunk pass is done."""
        impl, dtype = self.impl, self.dtype
        ref_loss = np.asarray(outcome.loss, dtype=np.float64).reshape(self.shape)
        name, ulps = f"impl {impl.name}", impl_module.VACUITY_ULPS
        loss_row = compare(
            name, self.loss, "reference loss", ref_loss, self.tol("loss", ref_loss), "loss",
            dtype=dtype, ulps=ulps,
        )  # fmt: skip
        if not loss_row.passed:
            why = diagnose.loss(self.loss, ref_loss, self.problem, dtype, variants=False)
            loss_row = dataclass_replace(loss_row, diagnosis=why)
        assert outcome.impl is not None
        grad_row = outcome.impl
        if not grad_row.passed and grad_row.worst_index:
            grad_row = dataclass_replace(grad_row, diagnosis=self._diagnose(grad_row))
        if self.upstream is not None:
            notes[f"{self.tag} grad_output"] = _upstream_note(self.upstream, self.spec)
        settings = self.options.tolerance_model or tolerance_models.Settings()
        if dtype != "float64" and settings.model == "baseline":
            notes[f"{self.tag} tolerance model"] = (
                "the baseline model needs the whole arrays: fast mode used rounded"
            )
        notes[f"{self.tag} at scale"] = (
            "called once on the whole batch; its gradient (kept in "
            f"{self.grad.dtype}) compared with the float64 reference in chunks of "
            f"{self.rows_per} rows"
        )
        out, found = [loss_row, grad_row], self._finite(ref_loss, outcome.impl_nonfinite)
        finite = bool(np.all(np.isfinite(self.loss))) and outcome.impl_nonfinite is None
        if finite and not np.any(self.factor):
            not_computable[f"{self.tag} self-consistency"] = _ZERO_UPSTREAM
        elif finite:  # (a nan or inf loss has no derivative to check)
            from gradcheck_cli import impl_scale

            check, how = impl_scale.self_consistency(
                impl, self.problem, self.kwargs, self.grad, self.factor, self.natural,
                self.tol("self"), dtype, max(1, self.options.directions), self.rows_per,
            )  # fmt: skip
            notes[f"{self.tag} self-consistency"] = how
            if check.inconclusive is None:
                out.append(check)
                if check.passed and not loss_row.passed and not grad_row.passed:
                    out = [_self_consistent(row) for row in out]
            else:
                not_computable[f"{self.tag} self-consistency"] = (
                    f"inconclusive: {check.inconclusive}"
                )
        if impl.native is not None:  # last, and without the first call's gradient in memory
            from gradcheck_cli.torch_native import fingerprint

            assert self.upstream is not None
            first = fingerprint(self.loss, self.grad)
            del self.grad, self.gradient
            found += impl_module.native_checks(
                impl, self.problem.logits, self.kwargs, self.upstream, self.options.native, first
            )
        return out, _tagged(found, self.tag)

    def _finite(self, ref_loss: np.ndarray, grad: fastmode.NonFinite | None) -> list[Check]:
        """Failed ``impl_finite`` checks for a nan or inf where the reference is finite."""
        out = impl_module.finiteness(self.impl, self.loss, np.zeros(0), ref_loss, np.zeros(0))
        if grad is not None:
            out.append(
                Check(
                    "impl_finite",
                    False,
                    f"implementation {self.impl.name} returned {grad.value} in the gradient at "
                    f"{list(grad.index)} where the reference is finite "
                    f"({grad.reference_value:.10g}); {grad.count} such element(s)",
                )
            )
        return out

    def _diagnose(self, row: Comparison) -> str | None:
        """A diagnosis from the rows of the worst element's chunk (the whole batch's gradient
        is not kept in float64)."""
        start = (row.worst_index[0] // self.rows_per) * self.rows_per
        rows = slice(start, min(self.problem.shape[0], start + self.rows_per))
        window = rows_of(self.problem, rows, batch_scales(self.problem), "float64")
        plain = METHODS["analytic"](window, DEFAULT_SETTINGS).grad
        factor = self.factor if self.factor.ndim == 0 else self.factor[rows]
        reference = plain * factor
        got = self.grad[rows].astype(np.float64)
        why = None
        if self.upstream is not None:
            up = self.upstream if self.upstream.ndim == 0 else self.upstream[rows]
            why = diagnose.upstream(got, plain, up, first=float(np.ravel(self.upstream)[0]))
        failed = _failed_mask(got, reference, Tolerance(row.rtol, row.atol))
        why = why or diagnose.gradient(
            got, reference, failed, window, self.dtype, self.spec.classes, whole=self.problem
        )
        if why is None:
            return None
        return f"{why} (from rows {rows.start}-{rows.stop - 1}, around the worst element)"


def _loss_shape(spec: Spec, n: int, k: int) -> tuple[int, ...]:
    """The shape of the loss an implementation returns: () reduced, (N,) per sample, (N, K)
    per element (sigmoid with ``none``)."""
    if spec.reduction != "none":
        return ()
    return (n, k) if spec.loss == "sigmoid_cross_entropy" else (n,)


def _microbatch_part(
    spec: Spec,
    options: RunOptions,
    problems: tuple[Problem, Problem],
    reference: np.ndarray,
    dtype: str,
) -> list[Check]:
    """``microbatches: k``: the reference's micro-batch gradients stacked against the batch's
    (``microbatches.reference_check``), and with ``--impl`` the implementation's, each
    micro-batch called on its own (with its rows of ``grad_output``), against the batch's
    reference gradient: a kernel that divides by its own count instead of
    ``num_items_in_batch`` fails here even when the two agree on the whole batch."""
    problem, under_test = problems
    check, split = microbatches.reference_check(spec, problem.logits, reference, build_problem)
    impl = options.impl
    if impl is None:
        return [check]
    n, k = under_test.shape
    shape = _loss_shape(spec, n, k)
    upstream = impl_module.upstream_for(impl, spec, shape)
    factor = np.ones(1) if upstream is None else _per_row(upstream, spec)
    grads = []
    for rows in split:
        part = microbatches.rows_of_spec(spec, rows, under_test.logits)
        given = impl_module.options_for(part, dtype)
        if upstream is not None:
            given["grad_output"] = upstream if upstream.ndim == 0 else upstream[rows]
        part_shape = _loss_shape(spec, rows.stop - rows.start, k)
        _, grad = impl_module.checked_outputs(impl, part.logits, given, part_shape)
        grads.append(grad)
    expected = reference * factor
    default = impl_module.tolerance("grad", dtype, impl_module.scales(under_test), expected)
    tol = Tolerance(
        rtol=default.rtol if options.rtol is None else options.rtol,
        atol=default.atol * float(np.max(np.abs(factor))) if options.atol is None else options.atol,
    )
    row = compare("impl", np.concatenate(grads), "reference", expected, tol, dtype=dtype)
    where = f" (worst at {list(row.worst_index)})" if not row.passed else ""
    return [
        check,
        Check(
            "impl_microbatches",
            row.passed,
            f"the implementation called on {len(split)} micro-batches, gradients accumulated, "
            f"against the batch's reference gradient: max |Δ| = {row.max_abs_error:.3g}, "
            f"{row.failed_elements} element(s) beyond rtol {tol.rtol:g} / atol {tol.atol:.3g}"
            f"{where}",
        ),
    ]


class _LowpRows:
    """An implementation's loss or gradient row under the run's tolerance model
    (``tolerance_models``): below float64, and unless ``--rtol``/``--atol`` fix the tolerance,
    the model sets the allowance and the row carries its :class:`Precision` (ulps, the naive
    baseline, the planted answers the allowance would accept)."""

    def __init__(self, name: str, dtype: str, options: RunOptions) -> None:
        self.name, self.dtype = name, dtype
        self.settings = options.tolerance_model or tolerance_models.Settings()
        self.active = dtype != "float64" and options.rtol is None and options.atol is None

    def compare(
        self,
        quantity: str,
        got: np.ndarray,
        against: str,
        truth: np.ndarray,
        fixed: Tolerance,
        baseline: Callable[[], np.ndarray],
        planted: dict[str, np.ndarray],
        inner: float = 0.0,
    ) -> Comparison:
        """``got`` against ``truth`` (same shapes); ``fixed``: the dtype's fixed tolerance;
        ``inner``: the float32 rounding an accurate kernel may add (``impl.inner_rounding``)."""
        dtype, ulps = self.dtype, impl_module.VACUITY_ULPS
        if not self.active:
            return compare(self.name, got, against, truth, fixed, quantity, dtype=dtype, ulps=ulps)
        s = self.settings
        model, base = s.for_dtype(dtype), baseline()
        allowance = None
        if model == "rounded":
            tol = tolerance_models.rounded(truth, dtype, s.k, s.floor_ulps, inner)
        elif model == "baseline":
            tol, allowance = tolerance_models.baseline_allowance(
                truth, base, dtype, s.k, s.floor_ulps, inner
            )
        else:
            tol = fixed if dtype == "float32" else dtype_tolerance("analytic", "central", dtype)

        def accepts(values: np.ndarray) -> bool:
            return compare(
                self.name, values, against, truth, tol, quantity, dtype=dtype, allowance=allowance
            ).passed

        row = compare(
            self.name, got, against, truth, tol, quantity, dtype=dtype, ulps=ulps,
            allowance=allowance,
        )  # fmt: skip
        precision = tolerance_models.measure(got, truth, base, dtype, s, planted, accepts)
        return dataclass_replace(row, precision=precision)


def _liger_1268(problem: Problem, dtype: str) -> np.ndarray | None:
    """The gradient (N, K) of Liger-Kernel #1268 for a plain index-label softmax problem (the
    float64 ``problem``): ``alpha (fl(p) sum(q) - q)`` with the softmax rounded to ``dtype``
    before q is subtracted; None where the bug has no such closed form."""
    if dtype not in ("float16", "bfloat16") or not (  # (in float32 it is float32 arithmetic)
        isinstance(problem, CrossEntropyProblem) and problem.one_hot and problem.plain
    ):
        return None
    p = softmax(problem.logits.astype(np.float64))
    with np.errstate(over="ignore", under="ignore"):
        rounded = p.astype(dtype).astype(np.float64)
    q = weighted_targets(problem).astype(np.float64)
    alpha = reduction_scales(problem)[0].astype(np.float64)
    out: np.ndarray = (rounded * np.sum(q, axis=-1, keepdims=True) - q) * alpha[:, None]
    return out


def _implementations(options: RunOptions) -> list[tuple[Implementation, str]]:
    """The implementations a run checks, each with the tag of its notes and checks: the one
    of ``--impl``, and its compiled twin with ``--compile``."""
    found = [] if options.impl is None else [(options.impl, "impl")]
    if options.compiled is not None:
        found.append((options.compiled, "impl compiled"))
    if options.vocab_chunks and options.impl is not None:  # one check per chunk count
        name = vocab_chunk_option(options.impl, options.chunk_option)
        found = [
            (impl_module.bind(impl, name, count), f"{tag} {name}={count}")
            for impl, tag in found
            for count in options.vocab_chunks
        ]
    return found


#: The parameter names a kernel's vocabulary chunk count is found by (``--vocab-chunks``).
VOCAB_CHUNK_PARAMETERS = ("vocab_chunks", "num_vocab_chunks", *linear_check.CHUNK_PARAMETERS)


def vocab_chunk_option(impl: Implementation, given: str | None) -> str:
    """The kernel's chunk-count parameter: ``--chunk-option``, else the first of
    :data:`VOCAB_CHUNK_PARAMETERS` it takes."""
    if given is not None:
        return given
    if impl.accepts is None:
        return VOCAB_CHUNK_PARAMETERS[0]
    for name in VOCAB_CHUNK_PARAMETERS:
        if name in impl.accepts:
            return name
    raise impl_module.ImplError(
        f"--vocab-chunks: implementation {impl.name} has no parameter "
        f"{', '.join(VOCAB_CHUNK_PARAMETERS)}; name it with --chunk-option NAME"
    )


def _is_twin(tag: str) -> bool:
    """True for the compiled twin's tag (its failure to compile is a check, not an error)."""
    return "compiled" in tag.split()


def _tagged(found: list[Check], tag: str) -> list[Check]:
    """The compiled twin's checks as ``impl_..._compiled``, a chunk count's as
    ``impl_..._vocab_chunks4`` (the eager ones keep their names)."""
    if tag == "impl":
        return found
    suffix = "".join(ch if ch.isalnum() else "_" for ch in tag[len("impl ") :]).strip("_")
    return [dataclass_replace(c, name=f"{c.name}_{suffix.replace('__', '_')}") for c in found]


def _compile_failure(exc: impl_module.ImplError, not_computable: dict[str, str]) -> list[Check]:
    """The compiled twin could not run: on a machine without a working compiler that is said
    (in ``not_computable``, and the eager function was still checked); any other error is the
    function failing under torch.compile (Liger-Kernel #1362), a failed ``impl_compiled``."""
    from gradcheck_cli.torch_native import missing_compiler

    why = missing_compiler(exc.original or exc)
    if why is not None:
        not_computable["impl compiled"] = (
            f"torch.compile cannot compile on this machine ({why}); the eager function was "
            "checked. --compile-backend aot_eager traces and runs the compiled graph without "
            "generating code"
        )
        return []
    return [Check("impl_compiled", False, f"under torch.compile: {exc}")]


def _upstream_note(upstream: np.ndarray, spec: Spec) -> str:
    return (
        "back-propagated through the implementation's autograd "
        + impl_module.upstream_note(upstream, given=spec.grad_output is not None)
        + "; the reference gradient is scaled the same way"
    )


#: Why the self-consistency check is not run when every upstream factor is 0.
_ZERO_UPSTREAM = (
    "grad_output is 0 everywhere, so the gradient (0) says nothing about the backward to "
    "compare with the forward"
)


def _impl_part(
    spec: Spec,
    options: RunOptions,
    impl: Implementation,
    problems: tuple[Problem, Problem],
    dtype: str,
    loss: float | np.ndarray,
    reference: np.ndarray,
    run: _Gradients,
    tag: str = "impl",
) -> tuple[list[Comparison], list[Check]]:
    """The implementation's loss and gradient against the reference (with a diagnosis when
    one fails and the evidence is clear), its gradient against its own forward pass, and a
    failed check for any nan or inf it returned where the reference is finite. Its gradient
    joins ``run.gradients`` as ``impl``; how the self-consistency check differentiated goes
    into the notes (or, when it cannot decide, into ``not_computable``). Raises ImplError (an
    error result for this spec) when the implementation cannot be called."""
    problem, under_test = problems
    n, k = under_test.shape
    shape = _loss_shape(spec, n, k)
    ref_loss = np.asarray(loss, dtype=np.float64).reshape(shape)
    kwargs = {**impl_module.options_for(spec, dtype), **dict(impl.bound)}
    # A framework-native loss is back-propagated with the spec's grad_output or a seeded one
    # (the reference gradient is scaled the same way); the NumPy protocol returns the plain
    # gradient.
    upstream = impl_module.upstream_for(impl, spec, shape)
    factor = np.ones(1) if upstream is None else _per_row(upstream, spec)
    call_kwargs = kwargs if upstream is None else {**kwargs, "grad_output": upstream}
    got_loss, got_grad = impl_module.checked_outputs(impl, under_test.logits, call_kwargs, shape)
    run.gradients[tag] = got_grad
    natural = impl_module.scales(under_test)
    plain, reference = reference, reference * factor
    if upstream is not None:
        run.notes[f"{tag} grad_output"] = _upstream_note(upstream, spec)

    def tol(check: str, values: np.ndarray | None = None) -> Tolerance:
        return impl_module.scaled_tolerance(
            check, dtype, natural, values, factor, options.rtol, options.atol
        )

    shaped = _shaper(spec)
    name = f"impl {impl.name}"
    rows = _LowpRows(name, dtype, options)
    naive = tolerance_models.naive(under_test) if rows.active else None
    planted = {"a zero loss": np.zeros_like(ref_loss)}
    loss_row = rows.compare(
        "loss", got_loss, "reference loss", ref_loss, tol("loss", ref_loss),
        lambda: (
            np.asarray(reduce_any(under_test), dtype=np.float64) if naive is None else naive[0]
        ).reshape(ref_loss.shape),
        planted,
        impl_module.inner_rounding("loss", natural),
    )  # fmt: skip
    bug = _liger_1268(problem, dtype)
    planted = {"a zero gradient": np.zeros_like(reference)}
    if bug is not None:
        planted["the Liger-Kernel #1268 rounding"] = bug * factor
    grad_row = rows.compare(
        "logits", shaped(got_grad), "reference", shaped(reference), tol("grad", reference),
        lambda: shaped(
            (
                METHODS["analytic"](under_test, DEFAULT_SETTINGS).grad.astype(np.float64)
                if naive is None
                else naive[1]
            )
            * factor
        ),
        {k: shaped(v) for k, v in planted.items()},
        impl_module.inner_rounding("grad", natural) * float(np.max(np.abs(factor))),
    )  # fmt: skip
    if not loss_row.passed:
        why = diagnose.loss(got_loss, ref_loss, problem, dtype)
        loss_row = dataclass_replace(loss_row, diagnosis=why)
    if not grad_row.passed:
        failed = _failed_mask(got_grad, reference, Tolerance(grad_row.rtol, grad_row.atol))
        why = None if upstream is None else diagnose.upstream(got_grad, plain, upstream)
        why = why or diagnose.gradient(got_grad, reference, failed, problem, dtype, spec.classes)
        grad_row = dataclass_replace(grad_row, diagnosis=why)
    out = [loss_row, grad_row]
    finite = impl_module.finiteness(impl, got_loss, got_grad, ref_loss, reference)
    if impl.native is not None:
        assert upstream is not None
        finite += impl_module.native_checks(
            impl, under_test.logits, kwargs, upstream, options.native, (got_loss, got_grad)
        )
    finite_outputs = np.all(np.isfinite(got_loss)) and np.all(np.isfinite(got_grad))
    if finite_outputs and not np.any(factor):
        run.not_computable[f"{tag} self-consistency"] = _ZERO_UPSTREAM
    elif finite_outputs:
        # per unit of grad_output; rows whose grad_output is 0 carry nothing to check
        known = np.broadcast_to(factor != 0, got_grad.shape)
        per_unit = np.divide(got_grad, factor, out=np.zeros_like(got_grad), where=known)
        check, how = impl_module.self_consistency(
            impl, under_test, kwargs, per_unit, tol("self"), dtype, known=known
        )
        run.notes[f"{tag} self-consistency"] = how
        if check.inconclusive is None:
            out.append(check)
            # forward and backward agree while both loss and gradient differ: the definition
            if check.passed and not out[0].passed and not out[1].passed:
                out = [_self_consistent(row) for row in out]
        else:  # the forward's rounding swamps the derivatives (half precision): say so
            run.not_computable[f"{tag} self-consistency"] = f"inconclusive: {check.inconclusive}"
    return out, _tagged(finite, tag)


def _self_consistent(row: Comparison) -> Comparison:
    """A failed loss or gradient row of an implementation whose backward matches its own
    forward: say that the loss definition differs, not the backward."""
    if row.passed or row.quantity not in ("loss", "logits"):
        return row
    note = "self-consistent (its backward matches its own forward): the loss definition differs"
    note += ", not the backward"
    return dataclass_replace(row, diagnosis=f"{row.diagnosis}; {note}" if row.diagnosis else note)


def _per_row(upstream: np.ndarray, spec: Spec) -> np.ndarray:
    """``grad_output`` broadcast against the (N, K) gradient: a scalar, (N, 1) per sample of a
    softmax loss, or (N, K) per element of a sigmoid one."""
    if upstream.ndim == 1:
        return upstream[:, None]
    return upstream


def _failed_mask(got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Which elements break ``|a - b| <= atol + rtol |b|`` (nan counts as broken)."""
    with np.errstate(invalid="ignore"):
        ok = np.abs(got - ref) <= tol.atol + tol.rtol * np.abs(ref)
    failed: np.ndarray = ~ok
    return failed


def _expectations(
    spec: Spec,
    dtype: str,
    forward: Forward,
    reference: np.ndarray,
    shaped: Callable[[np.ndarray], np.ndarray],
) -> list[Check]:
    """Golden values describe the spec's own (float64) inputs: in a reduced-precision run they
    are checked against the float64 closed form at those inputs, not at the rounded ones."""
    assert spec.expect is not None
    if dtype != "float64":
        original = build_problem(spec)
        forward = _forward(spec, original)
        reference = METHODS[REFERENCE_METHOD](original, DEFAULT_SETTINGS).grad
    return checks.expectations(spec.expect, forward.loss, shaped(forward.probs), shaped(reference))


def _drop_unresolvable(
    spec: Spec,
    dtype: str,
    gradients: dict[str, np.ndarray | None],
    predicted: dict[str, float | None],
    reference: np.ndarray,
    not_computable: dict[str, str],
) -> None:
    """Finite differences whose predicted error exceeds what their default tolerance allows
    cannot check anything: report them as inconclusive (with the numbers) instead of failing.

    This happens in float16, or with very large logits, where the step that balances truncation
    against rounding still leaves an error above the tolerance.
    """
    name = "finite_difference"
    bound = predicted.get(name)
    if gradients.get(name) is None or bound is None:
        return
    dtype = ran_in(name, dtype)
    # Judged against the default tolerance: a tolerance the user sets is enforced as given.
    tol = dtype_tolerance(name, spec.fd_scheme, dtype)
    allowed = tol.atol + tol.rtol * float(np.max(np.abs(reference)))
    if bound > allowed:
        not_computable[name] = (
            f"inconclusive: the predicted error of {spec.fd_scheme} differences in {dtype} "
            f"(≤ {bound:.3g}) exceeds what the default tolerance allows ({allowed:.3g}), so they "
            "cannot "
            "resolve this gradient; the other methods still check it"
        )
        del predicted[name]
        gradients[name] = None


def _dtype_loss_check(under_test: Problem, loss64: float | np.ndarray, dtype: str) -> Check:
    """The loss computed in ``dtype`` against the float64 loss of the same rounded inputs."""
    low = np.asarray(reduce_any(under_test), dtype=np.float64)
    ref = np.asarray(loss64, dtype=np.float64).reshape(low.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        same = (low == ref) | (np.isnan(low) & np.isnan(ref))
        diff = np.where(same, 0.0, np.abs(low - ref))
        rel = float(np.max(np.where(diff == 0, 0.0, diff / np.abs(ref))))
    tol = dtype_tolerance("analytic", "central", dtype)
    with np.errstate(invalid="ignore"):
        ok = bool(np.all(same | (diff <= tol.atol + tol.rtol * np.abs(ref))))
    return Check(
        f"loss_{dtype}",
        ok,
        f"loss in {dtype} vs float64: max |Δ| = {float(np.max(diff)):.3g}, relative {rel:.3g} "
        f"(allowed {tol.atol:g} + {tol.rtol:g}·|loss|; {dtype} eps = "
        f"{float(np.finfo(dtype).eps):.3g})",
    )


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
        mass = np.sum(np.abs(weighted_targets(problem)), axis=-1)
        found.append(checks.grad_rows_sum_to_zero(reference, mass, alpha))
    found.append(checks.jacobian_properties(probs))  # whole rows of a sample when K is large
    if problem.plain and finite:
        found.append(checks.shift_invariance(problem, loss))
    if k == 2:
        found.append(checks.binary_equivalence(problem))
    return found


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
        chain = METHODS["jacobian"](problem, DEFAULT_SETTINGS).grad[0]
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
        closed_form=METHODS["analytic"](problem, DEFAULT_SETTINGS).grad[0],
    )
