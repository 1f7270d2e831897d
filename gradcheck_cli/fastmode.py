"""Large problems (fast mode): row-chunked streaming checks and directional derivatives.

A full element-wise finite-difference check costs about N K^2 element operations (every one of
N K perturbations re-evaluates a K-class row); at LLM vocabularies (K = 32,000) that is
hopeless. When N K^2 exceeds :data:`FAST_BUDGET` (or with ``--fast``), a spec runs here instead:

* rows are processed in chunks of about :data:`ROW_CHUNK_ELEMENTS` values, so memory stays at
  the logits (kept in their own dtype, float32 stays float32) plus a few chunks;
* the float64 reference (the closed form, computed chunk by chunk from the logits widened to
  float64) is compared element by element with the ``analytic`` and ``jacobian`` methods run in
  the spec's dtype, streaming the error statistics;
* ``finite_difference`` and ``complex_step`` become *directional* checks: along R seeded random
  directions d (drawn per chunk, reproducibly), the derivative of each row's loss share along d
  is measured (differences by the spec's ``finite_difference.scheme``, from
  :mod:`gradcheck_cli.methods.differences`, or a complex step) and compared with the reference
  gradient times the step actually taken, per row and for the whole batch.

Nothing here holds an (N, K) float64 array: gradients are not kept in the result, and the report
says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli import checks
from gradcheck_cli.compare import (
    Comparison,
    HeatMap,
    Tolerance,
    block_max,
    elementwise_errors,
    heat_block,
)
from gradcheck_cli.core import (
    CrossEntropyProblem,
    Problem,
    batch_scales,
    contributions,
    rows_of,
)
from gradcheck_cli.core.softmax import softmax
from gradcheck_cli.core.softmax_ce import label_weights, reduction_scales, weighted_targets
from gradcheck_cli.methods import METHODS, MethodSettings, NotComputable
from gradcheck_cli.methods.complex_step import COMPLEX_STEP
from gradcheck_cli.methods.differences import (
    DIRECTION_SEED,
    directional_quotient,
    pair_differences,
    parallel_blocks,
    points,
    step_factor,
    steps_taken,
)
from gradcheck_cli.model import Check

FloatArray = NDArray[np.float64]

#: N K^2 above which a spec is checked in fast mode unless ``--full`` (5e8 element operations:
#: a few seconds of finite differences on this machine).
FAST_BUDGET = 5e8
#: Default number of random directions in fast mode (each costs two evaluations of every row; two
#: directions over 4096 rows are 8192 independent row checks plus two whole-batch ones).
DEFAULT_DIRECTIONS = 2
#: Methods of a fast-mode run when neither the spec nor the command line lists any (the complex
#: step's complex exponentials cost about five real passes per direction; ask for it by name).
FAST_DEFAULT_METHODS = ("analytic", "jacobian", "finite_difference", "exact")
#: Values per row chunk (2^20: 8 MiB in float64). Measured on 4096 x 32000 float32, two
#: threads, medians of 5 in-process runs: 2^22 5.6 s and 1.10 GB peak RSS, 2^21 5.65 s and
#: 0.81 GB, 2^20 5.47 s and 0.67 GB, 2^19 8.7 s (the per-chunk work no longer pays for its
#: Python overhead); the logits alone are 0.52 GB.
ROW_CHUNK_ELEMENTS = 1 << 20
#: Imaginary step of the directional complex step.

ProgressCallback = Callable[[int, int], None]


#: N K above which a spec runs in fast mode whatever K (the full path keeps several (N, K)
#: float64 arrays per method: 2^24 values are 128 MiB each).
FAST_ELEMENTS = 1 << 24


#: Element operations of a *sampled* element-wise check above which fast mode is taken instead
#: (the differences of the sampled classes: 2 N K per class).
SAMPLED_BUDGET = 2e9


def route(n: int, k: int, sample: int) -> str:
    """How an (N, K) softmax or sigmoid spec is checked without ``--full``/``--fast``:
    ``full`` (every element) within :data:`FAST_BUDGET`; ``sampled`` (every method element-wise,
    the differencing methods at a sample of about ``sample + 5 N`` classes) when the whole
    batch fits in memory and the sample costs at most :data:`SAMPLED_BUDGET`; else ``fast``."""
    if n * k > FAST_ELEMENTS:
        return "fast"
    if n * k * k <= FAST_BUDGET:
        return "full"
    return "sampled" if 2 * n * k * (sample + 5 * n) <= SAMPLED_BUDGET else "fast"


def needs_fast(n: int, k: int) -> bool:
    """Whether a full element-wise check of an (N, K) problem exceeds the time budget (N K^2)
    or the memory budget (N K)."""
    return n * k * k > FAST_BUDGET or n * k > FAST_ELEMENTS


@dataclass(frozen=True)
class ChunkStats:
    """Error statistics of one chunk (computed outside any lock, merged in order)."""

    max_abs: float
    max_rel: float
    worst_ratio: float
    worst_index: tuple[int, ...]
    value: float
    reference_value: float
    failed: int
    heat: tuple[NDArray[np.int64], FloatArray] | None = None
    """With a heat-map block: the rows of cells this chunk touches and their largest ratios
    (``compare.block_max``)."""


def chunk_stats(
    got: NDArray[np.floating],
    ref: FloatArray,
    tol: Tolerance,
    offset: int,
    block: tuple[int, int] | None = None,
) -> ChunkStats:
    """``|got - ref|`` against ``tol`` for a chunk whose first row is row ``offset``; with
    ``block`` (``compare.heat_block`` of the whole batch) also its heat-map cells.

    Written for speed (about ten passes, in place, ``got`` may be float32): a chunk of 4 million
    elements is compared in a few tens of milliseconds. Non-finite values fall back to
    :func:`elementwise_errors`' conventions.
    """
    abs_err = np.subtract(got, ref, dtype=np.float64)
    np.abs(abs_err, out=abs_err)
    top = float(np.max(abs_err)) if abs_err.size else 0.0
    if not np.isfinite(top):
        abs_err, _ = elementwise_errors(got.astype(np.float64), ref)
        top = float(np.max(abs_err))
    aref = np.abs(ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = abs_err / aref
        if tol.atol > 0.0:
            allowed = aref * tol.rtol
            allowed += tol.atol
            ratio = np.divide(abs_err, allowed, out=allowed)
        else:
            ratio = np.where(abs_err == 0.0, 0.0, abs_err / (aref * tol.rtol))
    rel[abs_err == 0.0] = 0.0
    flat = int(np.argmax(ratio))
    idx = np.unravel_index(flat, ratio.shape)
    return ChunkStats(
        max_abs=top,
        max_rel=float(np.max(rel)),
        worst_ratio=float(ratio.flat[flat]),
        worst_index=(int(idx[0]) + offset, *(int(i) for i in idx[1:])),
        value=float(got[idx]),
        reference_value=float(ref[idx]),
        failed=int(ratio.size - np.count_nonzero(ratio <= 1.0)),  # nan counts as failed
        heat=None if block is None else block_max(ratio, block, offset),
    )


@dataclass
class Stream:
    """Streaming statistics of ``|a - b|`` against a tolerance; a :class:`Comparison` at the
    end."""

    method: str
    reference: str
    tolerance: Tolerance
    quantity: str
    dtype: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_ratio: float = -1.0
    worst_index: tuple[int, ...] = ()
    value: float = 0.0
    reference_value: float = 0.0
    failed: int = 0
    chunks: int = 0
    """How many chunks were merged (0: the method computed nothing, so no comparison)."""
    shape: tuple[int, int] | None = None
    """(N, K) of the batch, for an element-wise stream with a heat map (chunks then come with
    their cells: ``chunk_stats(..., block=heat_block(shape))``)."""
    cells: FloatArray | None = None

    def add(self, got: FloatArray, ref: FloatArray, offset: int) -> None:
        """Fold in a chunk whose first row is row ``offset`` of the whole batch."""
        block = None if self.shape is None else heat_block(self.shape)
        self.merge(chunk_stats(got, ref, self.tolerance, offset, block))

    def merge(self, stats: ChunkStats) -> None:
        self.chunks += 1
        self.failed += stats.failed
        self.max_abs = max(self.max_abs, stats.max_abs)
        self.max_rel = max(self.max_rel, stats.max_rel)
        if stats.worst_ratio > self.worst_ratio:
            self.worst_ratio = stats.worst_ratio
            self.worst_index = stats.worst_index
            self.value = stats.value
            self.reference_value = stats.reference_value
        if stats.heat is not None and self.shape is not None:
            if self.cells is None:
                bn, bk = heat_block(self.shape)
                self.cells = np.zeros((-(-self.shape[0] // bn), -(-self.shape[1] // bk)))
            where, cells = stats.heat
            self.cells[where] = np.maximum(self.cells[where], cells)

    def comparison(self) -> Comparison:
        return Comparison(
            method=self.method,
            reference=self.reference,
            max_abs_error=self.max_abs,
            max_rel_error=self.max_rel,
            worst_index=self.worst_index,
            value=self.value,
            reference_value=self.reference_value,
            rtol=self.tolerance.rtol,
            atol=self.tolerance.atol,
            failed_elements=self.failed,
            quantity=self.quantity,
            dtype=self.dtype,
            heat=(
                None
                if self.cells is None or self.shape is None
                else HeatMap(self.cells, self.shape, heat_block(self.shape))
            ),
        )


@dataclass(frozen=True)
class ImplGradient:
    """An implementation's gradient for fast mode to compare with the float64 reference, chunk
    by chunk (``--impl`` at LLM scale)."""

    name: str
    grad: NDArray[np.floating]
    """(N, K), in whatever float dtype the implementation returned (never widened whole)."""
    factor: FloatArray
    """The upstream gradient the reference is scaled by: a scalar array, or (N, 1) per row."""
    tolerance: Tolerance


@dataclass(frozen=True)
class NonFinite:
    """Elements where the implementation's gradient is nan or inf and the reference is not."""

    count: int
    index: tuple[int, ...]
    value: float
    reference_value: float


@dataclass(frozen=True)
class FastOutcome:
    """What the fast path measured."""

    loss: float | FloatArray
    comparisons: list[Comparison]
    checks: list[Check]
    notes: dict[str, str]
    not_computable: dict[str, str]
    impl: Comparison | None = None
    """The implementation's gradient against the reference (with ``ImplGradient``)."""
    impl_nonfinite: NonFinite | None = None


#: The reference of fast mode's element-wise comparisons: the closed form in float64.
FAST_REFERENCE = "analytic_float64"


def run_fast(
    problem: Problem,
    methods: tuple[str, ...],
    dtype: str,
    settings: MethodSettings,
    tolerance: Callable[[str, str], Tolerance],
    directions: int = DEFAULT_DIRECTIONS,
    progress: ProgressCallback | None = None,
    impl: ImplGradient | None = None,
) -> FastOutcome:
    """Check ``problem`` (logits in their own dtype) chunk by chunk, on all cores.

    ``tolerance(method, dtype)`` gives each comparison's tolerance; ``methods`` are the
    requested methods (``exact`` is declined: the problem is too large for it). With ``impl``,
    the implementation's gradient is compared with the reference (times its upstream factor)
    in the same pass over the chunks.
    """
    run = _FastRun(problem, methods, dtype, settings, tolerance, directions, progress, impl)
    parallel_blocks(run.chunk, run.starts, work=problem.shape[0] * problem.shape[1] * 64)
    return run.outcome()


@dataclass(eq=False)
class _Chunk:
    """What one row chunk found (computed without the lock; merged under it)."""

    start: int
    shares: FloatArray
    stats: dict[str, ChunkStats]
    failures: dict[str, str]
    directional: dict[str, tuple[FloatArray, FloatArray]]
    dir_stats: dict[str, ChunkStats]
    deviation: float | None
    rows_ok: bool
    dead_rows: int
    impl: ChunkStats | None = None
    nonfinite: NonFinite | None = None


class _FastRun:
    """The state of one fast-mode run: its configuration, the streams that accumulate the
    chunks' statistics, and the assembly of the outcome."""

    def __init__(
        self,
        problem: Problem,
        methods: tuple[str, ...],
        dtype: str,
        settings: MethodSettings,
        tolerance: Callable[[str, str], Tolerance],
        directions: int,
        progress: ProgressCallback | None,
        impl: ImplGradient | None = None,
    ) -> None:
        n, k = problem.shape
        heat = (n, k) if n > 1 else None  # the element-wise streams' heat maps
        self.block = None if heat is None else heat_block(heat)
        self.impl = impl
        self.impl_stream = (
            None
            if impl is None
            else Stream(impl.name, "reference", impl.tolerance, "logits", dtype, shape=heat)
        )
        self.nonfinite: NonFinite | None = None
        self.problem, self.dtype, self.settings = problem, dtype, settings
        self.tolerance, self.directions, self.progress = tolerance, directions, progress
        self.rows_per = max(1, ROW_CHUNK_ELEMENTS // k)
        self.starts = range(0, n, self.rows_per)
        self.scales = batch_scales(problem)
        self.elementwise: list[str] = [m for m in ("analytic", "jacobian") if m in methods]
        self.directional: list[str] = [
            m for m in ("finite_difference", "complex_step") if m in methods
        ]
        self.not_computable: dict[str, str] = {}
        if "exact" in methods:
            self.not_computable["exact"] = (
                f"{n * k:,} elements: far above the 50-digit reference's limit (fast mode)"
            )
        self.extra_notes: dict[str, str] = {}
        if dtype == "float64" and "analytic" in self.elementwise:  # it would meet itself
            self.elementwise.remove("analytic")
            self.extra_notes["analytic"] = (
                "the float64 closed form is this run's reference, so it is not compared with "
                "itself; jacobian and the directional checks test it"
            )
        if dtype == "float16" and "complex_step" in self.directional:
            self.directional.remove("complex_step")
            self.not_computable["complex_step"] = "NumPy has no float16 complex type"
        self.streams = {
            m: Stream(m, FAST_REFERENCE, tolerance(m, dtype), "logits", dtype, shape=heat)
            for m in self.elementwise
        }
        self.dir_streams = {
            m: Stream(f"{m} (directional)", "g·d", tolerance(m, dtype), "directions", dtype)
            for m in self.directional
        }
        self.batch_measured = {m: np.zeros(directions) for m in self.directional}
        self.batch_predicted = {m: np.zeros(directions) for m in self.directional}
        self.losses: list[tuple[int, FloatArray]] = []
        self.prob_dev = 0.0
        self.rows_ok = True
        self.dead_rows = 0
        self.done = 0
        self.lock = threading.Lock()

    def chunk(self, start: int) -> None:
        """Check the rows from ``start`` and merge what they give (a worker's task)."""
        found = self._compute(start)
        with self.lock:  # only merging happens under the lock
            self._merge(found)

    def _compute(self, start: int) -> _Chunk:
        rows = slice(start, min(self.problem.shape[0], start + self.rows_per))
        wide = rows_of(self.problem, rows, self.scales, "float64")
        own_methods = self.elementwise or self.directional
        low = rows_of(self.problem, rows, self.scales, self.dtype) if own_methods else wide
        ref = METHODS["analytic"](wide, self.settings).grad
        grads: dict[str, FloatArray] = {}
        failures: dict[str, str] = {}
        for m in self.elementwise:
            try:
                grads[m] = METHODS[m](low, self.settings).grad  # widened inside chunk_stats
            except NotComputable as exc:
                failures[m] = exc.reason
        stats = {
            m: chunk_stats(g, ref, self.streams[m].tolerance, start, self.block)
            for m, g in grads.items()
        }
        shares = contributions(wide)
        live = np.isfinite(shares)  # a row with an infinite loss has no derivative
        directional = {
            m: _directional(m, low, ref, start, self.directions, self.settings, live)
            for m in self.directional
        }
        dir_stats = {
            m: chunk_stats(measured.T, predicted.T, self.dir_streams[m].tolerance, start)
            for m, (measured, predicted) in directional.items()
        }
        deviation, rows_ok = _row_checks(wide, ref)
        dead = int(np.count_nonzero(~live))
        impl_stats, nonfinite = self._impl_chunk(rows, ref) if self.impl else (None, None)
        return _Chunk(
            start,
            shares,
            stats,
            failures,
            directional,
            dir_stats,
            deviation,
            rows_ok,
            dead,
            impl_stats,
            nonfinite,
        )

    def _impl_chunk(self, rows: slice, ref: FloatArray) -> tuple[ChunkStats, NonFinite | None]:
        """The implementation's rows against the reference's (scaled by the upstream factor),
        and its first nan or inf where the reference is finite."""
        impl = self.impl
        assert impl is not None
        factor = impl.factor if impl.factor.ndim == 0 else impl.factor[rows]
        expected = ref * factor
        got = impl.grad[rows]
        stats = chunk_stats(got, expected, impl.tolerance, rows.start, self.block)
        bad = ~np.isfinite(got) & np.isfinite(expected)
        if not np.any(bad):
            return stats, None
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = (idx[0] + rows.start, *idx[1:])
        return stats, NonFinite(
            int(np.count_nonzero(bad)), where, float(got[idx]), float(expected[idx])
        )

    def _merge(self, c: _Chunk) -> None:
        self.losses.append((c.start, c.shares))
        for m, st in c.stats.items():
            self.streams[m].merge(st)
        for m, reason in c.failures.items():
            self.not_computable.setdefault(m, reason)
        for m, (measured, predicted) in c.directional.items():
            self.dir_streams[m].merge(c.dir_stats[m])
            self.batch_measured[m] += measured.sum(axis=1)
            self.batch_predicted[m] += predicted.sum(axis=1)
        if c.deviation is not None:
            self.prob_dev = max(self.prob_dev, c.deviation)
            self.rows_ok = self.rows_ok and c.rows_ok
        self.dead_rows += c.dead_rows
        if c.impl is not None and self.impl_stream is not None:
            self.impl_stream.merge(c.impl)
        if c.nonfinite is not None:
            old = self.nonfinite
            if old is None or c.nonfinite.index < old.index:
                self.nonfinite = replace(
                    c.nonfinite, count=c.nonfinite.count + (old.count if old else 0)
                )
            else:
                self.nonfinite = replace(old, count=old.count + c.nonfinite.count)
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.starts))

    def outcome(self) -> FastOutcome:
        if self.directional and self.dead_rows == self.problem.shape[0]:
            for m in self.directional:
                self.not_computable[m] = (
                    "the loss is infinite in every row, so it has no derivative to check "
                    "along directions"
                )
            self.directional, self.dir_streams = [], {}
        elif self.dead_rows:
            self.extra_notes["directional"] = (
                f"{self.dead_rows} row(s) with an infinite loss are left out of the "
                "directional checks (no derivative there)"
            )
        comparisons = [s.comparison() for s in self.streams.values() if s.chunks]
        comparisons += [s.comparison() for s in self.dir_streams.values() if s.chunks]
        for m in self.directional:
            whole = Stream(
                f"{m} (directional, whole batch)",
                "g·d",
                self.tolerance(m, self.dtype),
                "directions",
                self.dtype,
            )
            whole.add(self.batch_measured[m][None, :], self.batch_predicted[m][None, :], 0)
            comparisons.append(whole.comparison())
        return FastOutcome(
            self._loss(),
            comparisons,
            self._checks(),
            self._notes(),
            self.not_computable,
            None if self.impl_stream is None else self.impl_stream.comparison(),
            self.nonfinite,
        )

    def _loss(self) -> float | FloatArray:
        self.losses.sort(key=lambda item: item[0])
        per_row = np.concatenate([s for _, s in self.losses])
        if self.problem.reduction == "none":
            return per_row
        problem = self.problem
        if isinstance(problem, CrossEntropyProblem) and problem.reduction == "mean":
            alpha, _ = self.scales  # type: ignore[misc]
            if not np.any(alpha):  # nothing to average: 0/0, or 0 with empty_mean zero
                return 0.0 if problem.empty_mean == "zero" else float("nan")
        return float(np.sum(per_row))

    def _checks(self) -> list[Check]:
        problem = self.problem
        if not isinstance(problem, CrossEntropyProblem):
            return []
        bound = 2 * (problem.shape[1] + 1) * float(np.finfo(np.float64).eps)
        found = [
            Check(
                "probs_sum_to_one",
                self.prob_dev <= bound,
                f"max |sum(p) - 1| = {self.prob_dev:.3g} (bound {bound:.3g})",
            )
        ]
        if problem.plain:
            found.append(
                Check(
                    "grad_rows_sum_to_zero",
                    self.rows_ok,
                    "every row of the float64 reference within its rounding bound",
                )
            )
        return found

    def _notes(self) -> dict[str, str]:
        n, k = self.problem.shape
        # Central is the default and goes unnamed (the notes of such runs read as they always did).
        scheme = "finite" if self.settings.fd_scheme == "central" else self.settings.fd_scheme
        along = (
            f"{scheme} differences and complex step along {self.directions} seeded random "
            "directions per row and for the whole batch"
            if self.directional
            else "no directional checks of xentcheck's own methods (ask for them with -m)"
        )
        return {
            **self.extra_notes,
            "mode": (
                f"fast mode: N K^2 = {n * k * k:.3g} element operations for a full element-wise "
                f"check; rows in chunks of {self.rows_per}, {along}; gradients are not kept in "
                "the report"
            ),
        }


def _row_checks(wide: Problem, ref: FloatArray) -> tuple[float | None, bool]:
    """A chunk's max ``|sum(p) - 1|`` and whether every row of the float64 reference gradient
    sums to 0 within its rounding bound ((None, True) for sigmoid)."""
    if not isinstance(wide, CrossEntropyProblem):
        return None, True
    p = softmax(wide.logits)
    deviation = float(np.max(np.abs(p.sum(axis=-1) - 1.0)))
    if not wide.plain:
        return deviation, True
    mass = label_weights(wide) if wide.one_hot else np.sum(weighted_targets(wide), axis=-1)
    return deviation, checks.grad_rows_sum_to_zero(ref, mass, reduction_scales(wide)[0]).passed


def _directional(
    method: str,
    low: Problem,
    ref: FloatArray,
    start: int,
    directions: int,
    settings: MethodSettings,
    live: NDArray[np.bool_],
) -> tuple[FloatArray, FloatArray]:
    """Per-row directional derivatives of the chunk's loss shares (R, rows), measured by
    ``method`` on ``low``, and the reference gradient's prediction g.d (R, rows); rows not
    ``live`` (an infinite loss: no derivative) are 0 in both."""
    z = low.logits
    finite = np.isfinite(z)
    rng = np.random.default_rng([DIRECTION_SEED, start])
    measured = np.empty((directions, z.shape[0]))
    predicted = np.empty((directions, z.shape[0]))
    zf = np.where(finite, z, 0)
    along = _complex_direction if method == "complex_step" else _difference_direction
    for r in range(directions):
        # Uniform in [-1, 1), drawn in float32 (several times cheaper than normals in float64)
        # and then exact in the logits' dtype, so h * d is not rounded to float32.
        d = (rng.random(z.shape, dtype=np.float32) * 2.0 - 1.0).astype(
            np.promote_types(z.dtype, np.float32)
        )
        d[~finite] = 0.0
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in rows not live
            measured[r], predicted[r] = along(low, ref, zf, finite, d, settings)
    measured[:, ~live] = 0.0
    predicted[:, ~live] = 0.0
    return measured, predicted


def _complex_direction(
    low: Problem,
    ref: FloatArray,
    zf: FloatArray,
    finite: NDArray[np.bool_],
    d: FloatArray,
    settings: MethodSettings,
) -> tuple[FloatArray, FloatArray]:
    """``Im s(z + i h d) / h`` per row (rows,), and ``g . d``."""
    del settings  # the imaginary step is fixed
    z = low.logits
    moved = zf.astype(np.result_type(z.dtype, np.complex64)) + 1j * COMPLEX_STEP * d
    moved = np.where(finite, moved, z)
    with np.errstate(invalid="ignore"):
        measured = contributions(low, moved).imag / COMPLEX_STEP
    return measured, np.sum(ref * d, axis=-1)


def _difference_direction(
    low: Problem,
    ref: FloatArray,
    zf: FloatArray,
    finite: NDArray[np.bool_],
    d: FloatArray,
    settings: MethodSettings,
) -> tuple[FloatArray, FloatArray]:
    """The spec's difference quotient of the rows' shares along ``d`` (rows,), and the
    reference's ``g . (step taken)`` combined the same way (both with the nominal step ``h =
    factor * max(1, max|z|)``, the scheme's automatic factor unless the spec gives one)."""
    z = low.logits
    scheme = settings.fd_scheme
    factor = settings.fd_step or step_factor(scheme, z.dtype)
    h = factor * max(1.0, float(np.max(np.abs(zf))))
    at = points(scheme, zf, (h * d).astype(z.dtype))
    if not np.all(finite):
        at = [np.where(finite, p, z) for p in at]
    shares = [contributions(low, p).astype(np.float64) for p in at]
    base = contributions(low).astype(np.float64) if scheme == "forward" else None
    measured = directional_quotient(scheme, pair_differences(scheme, shares, base), h)
    # The steps actually taken: the rounded points' differences, not 2 h d.
    taken = steps_taken(scheme, at, zf)
    if not np.all(finite):
        for t in taken:
            t[~finite] = 0.0
    linear = [np.einsum("nk,nk->n", ref, t) for t in taken]
    return measured, directional_quotient(scheme, linear, h)
