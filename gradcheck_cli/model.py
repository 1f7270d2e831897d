"""Validated specs and run results: plain frozen dataclasses, no I/O.

Data flows one way: ``spec.py`` builds :class:`Spec` objects from YAML, ``engine.py`` turns each
into a :class:`SpecResult`, and the renderers in ``report/`` format results without computing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.compare import Comparison
from gradcheck_cli.core.layer import Layer as Layer  # re-exported: specs carry a core Layer
from gradcheck_cli.core.options import LossKind, OptionValues
from gradcheck_cli.core.softmax_ce import Reduction
from gradcheck_cli.methods._base import Scheme

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Status = Literal["pass", "fail", "error", "skip"]
DType = Literal["float64", "float32", "float16", "bfloat16"]
DTYPES: tuple[DType, ...] = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ToleranceOverride:
    """A partial tolerance: a field left ``None`` falls through to the next level."""

    rtol: float | None = None
    atol: float | None = None


@dataclass(frozen=True, eq=False)
class Expect:
    """Golden values a spec expects, each checked as a named check."""

    loss: float | FloatArray | None = None
    """Expected loss: a number, or shape (N,) with reduction ``none``."""
    probs: FloatArray | None = None
    """Expected softmax probabilities, shaped like the logits."""
    grad: FloatArray | None = None
    """Expected gradient (of the reduced loss), shaped like the logits."""
    rtol: float = 1e-6
    """Relative tolerance of every expectation."""
    atol: float = 1e-9
    """Absolute tolerance of every expectation."""


@dataclass(frozen=True, eq=False)
class Spec(OptionValues):
    """One validated case: everything needed to run it, nothing left to check.

    The loss options (weight, ignore_index, ...) are the keyword-only fields of
    :class:`~gradcheck_cli.core.options.OptionValues`, one per row of the option table.
    """

    name: str
    """Case name (default: the file stem, with ``[i]`` for the i-th entry of ``cases``)."""
    file: str
    """The spec file as given on the command line (for messages and reports)."""
    logits: FloatArray
    """Logits, shape (N, K); a single sample has N = 1 and ``single`` set."""
    single: bool
    """True when the spec gave one sample as a flat list (K,): results keep that shape."""
    labels: IntArray | None = None
    """Class indices, shape (N,)."""
    targets: FloatArray | None = None
    """Probability targets, shape (N, K)."""
    reduction: Reduction = "mean"
    loss: LossKind = "softmax_cross_entropy"
    layer: Layer | None = None
    """The layer that produced ``logits``, when the spec gave one instead of logits."""
    fd_scheme: Scheme = "central"
    """Finite-difference scheme: forward, central or richardson."""
    fd_step: float | None = None
    """Relative finite-difference step factor; None for the scheme's automatic one."""
    dtype: DType = "float64"
    """Precision in which the methods under test run (the reference stays float64)."""
    classes: tuple[str, ...] | None = None
    """Class names, length K."""
    description: str | None = None
    methods: tuple[str, ...] | None = None
    """Methods to run (``None``: all)."""
    tolerance: ToleranceOverride = field(default_factory=ToleranceOverride)
    """Tolerance for every comparison of this spec."""
    method_tolerances: dict[str, ToleranceOverride] = field(default_factory=dict)
    """Per-method tolerances, more specific than ``tolerance``."""
    expect: Expect | None = None
    microbatches: int | None = None
    """k: the rows split into k contiguous micro-batches whose gradients (gradient
    accumulation) must add up to the whole batch's (``checks.microbatches``)."""
    grad_output: FloatArray | None = None
    """The upstream gradient a framework-native implementation is back-propagated with,
    shaped like the loss it returns: () for a reduced loss, (N,) per sample with reduction
    ``none`` (softmax), (N, K) per element (sigmoid with ``none``); finite. None: the seeded
    default (``impl.upstream_gradient``). Unused by the NumPy protocol and without ``--impl``."""
    locations: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Where the spec file writes each key, as (line, column), 1-based: ``case`` (the case's
    mapping), each key (``logits``, ``label``, ...), ``expect.loss`` and the like, and
    ``logits[i]`` for each row of an inline batch (empty for a spec built in Python)."""


@dataclass(frozen=True)
class ParallelRun:
    """One process-group size of a ``--tensor-parallel`` run: a row of the TP=1 vs TP=k table.

    Errors are largest absolute differences over every rank; ``*_at`` are global
    (row, class) indices, ``()`` for a reduced loss."""

    parallel: int
    """P, the number of ranks."""
    width: int
    """Classes per shard (ceil(V / P))."""
    padding: int
    """Padding columns of the last shard (P width - V)."""
    seconds: float
    """Wall time of the launch, process start-up included."""
    loss_error: float
    """Worst |loss - reference loss| over the ranks."""
    loss_rank: int
    grad_error: float
    """Worst |gradient - reference gradient| over the ranks' columns."""
    grad_rank: int
    grad_at: tuple[int, ...]
    ranks_spread: float
    """The largest difference between two ranks' losses (0 when all agree exactly)."""
    baseline: int | None = None
    """The P this size is compared with (the run's smallest); None for that size itself."""
    loss_vs_baseline: float | None = None
    """|loss at P - loss at ``baseline``| (rank 0 of each)."""
    grad_vs_baseline: float | None = None
    """Largest |gradient at P - gradient at ``baseline``|, element by element."""
    grad_vs_baseline_at: tuple[int, ...] = ()
    passed: bool = True
    """Every comparison and check of this size passed."""


@dataclass(frozen=True)
class Check:
    """A named pass/fail check (an invariant or an expectation) with a one-line detail."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Captured:
    """What an implementation printed while one spec ran (stdout and stderr together;
    ``guard.truncate`` keeps the first and last lines)."""

    text: str
    """The kept lines, newline-joined (a line counts the dropped ones)."""
    lines: int
    """How many lines it printed in all."""
    dropped: int
    """How many of them are not in ``text``."""

    def heading(self) -> str:
        """``printed by the implementation (3 lines)``, with the dropped count if any."""
        count = f"{self.lines:,} line{'s' if self.lines != 1 else ''}"
        if self.dropped:
            count += f", {self.dropped:,} dropped"
        return f"printed by the implementation ({count})"


@dataclass(frozen=True, eq=False)
class SpecResult:
    """Everything computed for one spec (or the error that stopped it).

    Arrays are in the logits' own shape: (K,) for a single sample, (N, K) for a batch.
    """

    name: str
    file: str
    status: Status
    message: str | None = None
    """For errors: the located message. For passes and failures: a note, if any."""
    shape: tuple[int, ...] | None = None
    """Shape of the logits as given."""
    classes: tuple[str, ...] | None = None
    reduction: Reduction | None = None
    loss_kind: LossKind | None = None
    options: dict[str, object] = field(default_factory=dict)
    """The loss options the spec set (weight, ignore_index, ...), for reports."""
    logits: FloatArray | None = None
    targets: FloatArray | None = None
    """Dense targets (one-hot for labels), shaped like the logits."""
    labels: IntArray | None = None
    """Class indices (N,), when the spec gave labels."""
    loss: float | FloatArray | None = None
    """The reduced loss: a float; with reduction ``none`` shape (N,) (softmax) or the logits'
    shape (sigmoid)."""
    loss_note: str | None = None
    """Why the loss is not finite, when it is not."""
    probs: FloatArray | None = None
    gradients: dict[str, FloatArray | None] = field(default_factory=dict)
    """Each method's gradient, or None where it was not computable."""
    not_computable: dict[str, str] = field(default_factory=dict)
    """Why a method produced no gradient."""
    method_notes: dict[str, str] = field(default_factory=dict)
    """How a method computed its gradient (step rules and the like)."""
    parameter_gradients: dict[str, dict[str, FloatArray | None]] = field(default_factory=dict)
    """With a layer: for ``weights`` (D, K), ``bias`` (K,) and ``inputs`` (the inputs' shape),
    each method's gradient (of the sum of per-sample losses when the reduction is ``none``)."""
    reference: str | None = None
    """The method every comparison is made against."""
    comparisons: tuple[Comparison, ...] = ()
    checks: tuple[Check, ...] = ()
    parallel: tuple[ParallelRun, ...] = ()
    """With ``--tensor-parallel``: one entry per process-group size, in the order given."""
    sampled: tuple[int, int] | None = None
    """(m, K) when the differencing methods ran at a sample of m of the K classes (compared
    there; their gradients hold nan at the other classes), else None."""
    locations: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Where in ``file`` the spec writes its keys (``Spec.locations``), as (line, column); for
    an invalid spec ``error``: where the (first) problem is. Empty when unknown."""
    seconds: float = 0.0
    """Wall time spent on this spec (loading excluded)."""
    output: Captured | None = None
    """What the implementation under test printed while this spec ran (None: nothing)."""


def error_result(
    name: str, file: str, message: str, locations: dict[str, tuple[int, int]] | None = None
) -> SpecResult:
    """A result for a spec that could not be run (``locations``: where, when known)."""
    return SpecResult(
        name=name, file=file, status="error", message=message, locations=dict(locations or {})
    )


def skipped_result(name: str, file: str, reason: str) -> SpecResult:
    """A result for a valid spec that this run cannot check (its inputs do not fit the
    requested dtype): neither a pass nor a failure."""
    return SpecResult(name=name, file=file, status="skip", message=reason)


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


@dataclass(frozen=True, eq=False)
class Walkthrough:
    """Every number of the derivation for one sample (arrays of shape (K,), J of (K, K))."""

    name: str
    classes: tuple[str, ...]
    sample: int
    n: int
    reduction: str
    logits: FloatArray
    shift: float
    shifted: FloatArray
    exps: FloatArray
    total: float
    probs: FloatArray
    label: int | None
    targets: FloatArray
    """The plain target distribution (one-hot for a label)."""
    q: FloatArray
    """The weighted target the loss uses (= targets without weights or smoothing)."""
    options: dict[str, object]
    plain_label: bool
    """A label whose weighted target is exactly onehot(y) (no smoothing, no class weights)."""
    loss: float
    loss_via_lse: float
    jacobian: FloatArray
    dl_dp: FloatArray
    chain: FloatArray
    closed_form: FloatArray
    scale: float
    """The reduction's factor for this sample in the batch gradient."""
    scale_text: str
    fd_class: int
    fd_step: float
    fd_plus: float
    fd_minus: float
    fd_quotient: float
    rounded_figure: tuple[float, float] | None
    """When the spec's expected loss is ``-log`` of its own *rounded* expected ``p_y`` (the
    cat/dog/bird article's 0.462 = -log 0.63) rather than the exact loss: that p_y and loss."""


@dataclass(frozen=True)
class Taylor:
    """The Taylor remainder test along one direction."""

    steps: tuple[float, ...]
    remainders: tuple[float, ...]
    slope: float | None
    """Least-squares slope of log r against log h over the usable points (None: too few)."""
    verdict: str
    seed: int
    """Seed of the test direction."""


@dataclass(frozen=True)
class SweepResult:
    """Errors of each differencing method at each step, against ``reference``."""

    name: str
    file: str
    reference: str
    steps: tuple[float, ...]
    errors: dict[str, tuple[float | None, ...]]
    """Method -> max absolute error at each step (None where not computable)."""
    best_step: dict[str, float | None]
    taylor: Taylor
    notes: dict[str, str] = field(default_factory=dict)
