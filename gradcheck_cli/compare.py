"""Error metrics, tolerances and verdicts: one method's gradient against a reference.

An element passes iff ``|a - b| <= atol + rtol * |b|`` (``a`` the method's value, ``b`` the
reference's), the rule of ``numpy.isclose``. The reported *worst element* is the one that comes
closest to breaking (or breaks furthest) that rule, i.e. the largest ``|a - b| / (atol + rtol|b|)``;
that is the element a reader needs when a comparison fails.

Relative error is reported element-wise as ``|a - b| / |b|`` (0 where both are 0, inf where only
the reference is 0): the honest figure, never hidden behind the absolute tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Tolerance:
    """Tolerance of an element-wise comparison: pass iff ``|a - b| <= atol + rtol |b|``."""

    rtol: float
    """Relative part, a multiple of the reference value."""
    atol: float
    """Absolute part."""


#: Default tolerances of each method against the reference (``exact`` when it is computed,
#: ``analytic`` otherwise), in float64. Each is a rounding or truncation bound with margin,
#: measured by ``benchmarks/accuracy.py``:
#:
#: * ``analytic``, ``complex_step``: a few ulps of the gradient's scale (worst seen 4e-15
#:   relative for labels; with probability targets p - t can cancel, leaving a few ulps of
#:   max(p, t) absolute): rtol 1e-12, atol 1e-14.
#: * ``jacobian``: the chain ``J^T (-q/p)`` adds a K-term sum per element: rtol 1e-10, atol 1e-12.
#: * ``finite_difference`` (central): the quotient's truncation error is at most
#:   ``h^2 max|l'''| / 6`` with ``|l'''| <= 0.0962`` for softmax cross-entropy and
#:   ``h = eps^(1/3) max(1, |z|)``; for |z| <= 1000 that is below 6e-7 (measured 5.9e-7), plus
#:   rounding below 1e-10. atol 1e-6 therefore never fails a correct gradient there, and still
#:   catches any error of 1e-6 or more. Other schemes: see :data:`SCHEME_TOLERANCES`.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "analytic": Tolerance(rtol=1e-12, atol=1e-14),
    "complex_step": Tolerance(rtol=1e-12, atol=1e-14),
    "jacobian": Tolerance(rtol=1e-10, atol=1e-12),
    "finite_difference": Tolerance(rtol=1e-6, atol=1e-6),
}
#: Finite-difference defaults by scheme: forward differences are O(h) with h = 1.5e-8
#: (errors up to ~1e-7 on bundled specs), Richardson O(h^4) (errors ~1e-11).
SCHEME_TOLERANCES: dict[str, Tolerance] = {
    "forward": Tolerance(rtol=1e-5, atol=1e-5),
    "central": DEFAULT_TOLERANCES["finite_difference"],
    "richardson": Tolerance(rtol=1e-8, atol=1e-8),
}
#: Fallback for any other comparison.
FALLBACK_TOLERANCE = Tolerance(rtol=1e-9, atol=1e-12)


def default_tolerance(method: str, scheme: str = "central") -> Tolerance:
    """The default tolerance of ``method`` (with finite-difference ``scheme``) compared against
    the reference."""
    if method == "finite_difference":
        return SCHEME_TOLERANCES[scheme]
    return DEFAULT_TOLERANCES.get(method, FALLBACK_TOLERANCE)


@dataclass(frozen=True)
class Precision:
    """What a low-precision comparison measured besides pass/fail (``tolerance_models``)."""

    model: str
    k: float
    floor_ulps: float
    ulps_worst: float
    """The error in ulps of the dtype at the worst element."""
    ulps_median: float
    ulps_p99: float
    rounded_ulps: float
    """The correctly rounded truth's worst error in ulps (at most 0.5)."""
    baseline_ulps: float | None
    """The naive baseline's worst error in ulps."""
    baseline_ratio: float | None
    """``max |impl - truth| / max |baseline - truth|`` (None when the baseline is exact)."""
    loose: tuple[str, ...] = ()
    """Planted wrong answers the allowance would accept ("a zero gradient", ...)."""

    def summary(self) -> str:
        base = (
            ""
            if self.baseline_ulps is None
            else f"; naive baseline {self.baseline_ulps:.3g} ulps"
            + ("" if self.baseline_ratio is None else f", impl/baseline {self.baseline_ratio:.3g}")
        )
        floor_text = (
            f", floor {self.floor_ulps:g} ulps of the scale" if self.model != "fixed" else ""
        )
        return (
            f"model {self.model} (k = {self.k:g}{floor_text}): error {self.ulps_worst:.3g} ulps "
            f"at the worst element (median {self.ulps_median:.3g}, p99 {self.ulps_p99:.3g}); "
            f"correctly rounded {self.rounded_ulps:.2g}{base}"
        )


#: A batch's heat map keeps at most this many cells a side: a larger batch is cut into blocks of
#: rows and of columns, and each cell holds its block's largest ratio (the 256 x 1000 batch: 64 x
#: 63 cells of 4 rows x 16 columns).
HEAT_CELLS = 64


@dataclass(frozen=True, eq=False)
class HeatMap:
    """Where in a batch a comparison's error lies: each element's *tolerance ratio*
    ``|a - b| / allowance`` (the allowance the verdict used: ``atol + rtol |b|``, or a tolerance
    model's), as a grid of at most :data:`HEAT_CELLS` x :data:`HEAT_CELLS` cells, each the
    largest ratio of its block of elements. Above 1 an element failed."""

    ratio: NDArray[np.float64]
    """Shape (ceil(N / rows per cell), ceil(K / columns per cell)); 0 where every element of
    the block is exact, inf where one is nan or has a zero allowance with a nonzero error."""
    shape: tuple[int, int]
    """(N, K) of the compared arrays."""
    block: tuple[int, int]
    """Rows and columns of elements per cell (the last row and column of cells may hold
    fewer)."""

    def cell(self, index: tuple[int, ...]) -> tuple[int, int]:
        """The cell that holds element ``index`` (n, k)."""
        return index[0] // self.block[0], index[1] // self.block[1]


def heat_block(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows and columns of elements per heat-map cell for an (N, K) batch."""
    n, k = shape
    return -(-n // HEAT_CELLS), -(-k // HEAT_CELLS)


def block_max(
    ratio: NDArray[np.float64], block: tuple[int, int], offset: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The heat-map cells that rows ``offset ...`` of a batch (``ratio``, shape (rows, K))
    touch: their row of cells (shape (m,)) and each one's largest ratio (shape (m, cells a
    row)); nan counts as inf. A chunk of rows may start or end inside a block: merge the
    chunks' cells with ``np.maximum``."""
    bn, bk = block
    rows, k = ratio.shape
    by_column = np.maximum.reduceat(ratio, np.arange(0, k, bk), axis=1)
    first = (-offset) % bn  # the chunk's first row that starts a block
    starts = np.unique(np.concatenate(([0], np.arange(first, rows, bn))))
    cells = np.maximum.reduceat(by_column, starts, axis=0)
    cells[np.isnan(cells)] = np.inf
    return (offset + starts) // bn, cells


def heat_map(ratio: NDArray[np.float64]) -> HeatMap | None:
    """The heat map of a batch's element-wise ratios (shape (N, K)); None for anything but a
    batch of at least two rows."""
    if ratio.ndim != 2 or ratio.shape[0] < 2 or ratio.size == 0:
        return None
    block = heat_block(ratio.shape)
    _, cells = block_max(ratio, block)
    return HeatMap(cells, (int(ratio.shape[0]), int(ratio.shape[1])), block)


@dataclass(frozen=True)
class Comparison:
    """One method's gradient compared element-wise with the reference gradient."""

    method: str
    """The method compared."""
    reference: str
    """The method it is compared against."""
    max_abs_error: float
    """``max |a - b|`` over all elements."""
    max_rel_error: float
    """``max |a - b| / |b|`` over all elements (0/0 counts 0, x/0 counts inf)."""
    worst_index: tuple[int, ...]
    """Index of the worst element in the logits' own shape: (k,) for one sample, (n, k) else."""
    value: float
    """The method's value at the worst element."""
    reference_value: float
    """The reference's value at the worst element."""
    rtol: float
    """Relative tolerance applied."""
    atol: float
    """Absolute tolerance applied."""
    failed_elements: int
    """How many elements break the tolerance."""
    quantity: str = "logits"
    """What the gradient is taken with respect to: ``logits``, or a layer's ``weights``,
    ``bias`` or ``inputs``."""
    predicted: float | None = None
    """A first-order bound on ``max_abs_error`` for this method in its dtype (see
    ``precision.predicted_error``), when one is known."""
    dtype: str = "float64"
    """The precision the method ran in."""
    inconclusive: str | None = None
    """Why a comparison with no failed element proves nothing (see :func:`vacuity`), or None.
    An inconclusive comparison does not fail its spec, and is never reported as a pass."""
    diagnosis: str | None = None
    """For a failed implementation check: the common bug the numbers fit exactly, if one does
    (``gradcheck_cli.diagnose``)."""
    precision: Precision | None = None
    """For a low-precision implementation check: the tolerance model, the error in ulps, the
    naive baseline's, and the planted wrong answers the allowance would accept
    (``gradcheck_cli.tolerance_models``)."""
    heat: HeatMap | None = field(default=None, compare=False, repr=False)
    """For a batch (N > 1 rows): where its errors lie against the allowance (for reports)."""

    @property
    def loose(self) -> tuple[str, ...]:
        """Planted wrong answers this comparison's allowance would accept (empty: none)."""
        return () if self.precision is None else self.precision.loose

    @property
    def passed(self) -> bool:
        """True iff every element is within tolerance."""
        return self.failed_elements == 0

    @property
    def verdict(self) -> str:
        """``pass``, ``fail`` or ``inconclusive``."""
        if not self.passed:
            return "fail"
        return "pass" if self.inconclusive is None else "inconclusive"


def elementwise_errors(
    a: NDArray[np.float64], b: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Absolute and relative errors of ``a`` against reference ``b`` (same shape as the inputs)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # Equal values (including equal infinities, and nan against nan) have error 0.
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        abs_err = np.where(same, 0.0, np.abs(a - b))
        rel = abs_err / np.abs(b)
    rel = np.where(abs_err == 0.0, 0.0, rel)
    return abs_err, rel


def compare(
    method: str,
    values: NDArray[np.float64],
    reference: str,
    reference_values: NDArray[np.float64],
    tolerance: Tolerance,
    quantity: str = "logits",
    predicted: float | None = None,
    dtype: str = "float64",
    ulps: float | None = None,
    allowance: NDArray[np.float64] | None = None,
) -> Comparison:
    """Compare ``values`` with ``reference_values`` element by element.

    Parameters
    ----------
    method, reference : names reported in the result.
    values, reference_values : arrays of the same shape (the logits' shape, (K,) or (N, K)).
    tolerance : pass iff ``|a - b| <= atol + rtol |b|`` for every element.
    allowance : per-element allowances instead of ``atol + rtol |b|`` (the ``baseline`` model
        of ``tolerance_models``; ``tolerance`` is then only reported).
    ulps : when given, a comparison without failed elements is *inconclusive* if at its worst
        element the allowance is at least the reference's own magnitude (a zero would pass
        there) and the value is more than ``ulps`` units in the last place of ``dtype`` away
        from the reference (see :func:`vacuity`).
    """
    if values.shape != reference_values.shape:
        raise ValueError(f"shape mismatch: {values.shape} vs {reference_values.shape}")
    abs_err, rel_err = elementwise_errors(values, reference_values)
    allowed = (
        tolerance.atol + tolerance.rtol * np.abs(reference_values)
        if allowance is None
        else allowance
    )
    nan_err = np.isnan(abs_err)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(abs_err == 0.0, 0.0, abs_err / allowed)
    ratio = np.where(nan_err, np.inf, ratio)
    failed = nan_err | (abs_err > allowed)
    flat = int(np.argmax(ratio)) if ratio.size else 0
    worst = tuple(int(i) for i in np.unravel_index(flat, values.shape)) if values.size else ()
    failed_count = int(np.count_nonzero(failed))
    why = None
    if ulps is not None and failed_count == 0 and values.size:
        why = vacuity(
            float(values[worst]), float(reference_values[worst]), float(allowed[worst]), dtype, ulps
        )
    return Comparison(
        method=method,
        reference=reference,
        max_abs_error=_nanmax(abs_err),
        max_rel_error=_nanmax(rel_err),
        worst_index=worst,
        value=float(values[worst]) if values.size else 0.0,
        reference_value=float(reference_values[worst]) if values.size else 0.0,
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        failed_elements=failed_count,
        quantity=quantity,
        predicted=predicted,
        dtype=dtype,
        inconclusive=why,
        heat=heat_map(ratio),
    )


def ulp(x: float, dtype: str) -> float:
    """The spacing of ``dtype``'s numbers at ``|x|`` (its smallest subnormal at 0)."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf and nan have no spacing (nan)
        cast = np.abs(np.asarray(x, dtype=dtype))
        return float(np.spacing(cast))


def vacuity(value: float, reference: float, allowed: float, dtype: str, ulps: float) -> str | None:
    """Why a passing element proves nothing, or None when it proves something.

    An element whose allowance ``atol + rtol |b|`` is at least ``|b|`` would accept 0 (and any
    value of the right size): passing it says nothing about the value, unless the value agrees
    with the reference to within ``ulps`` units in the last place of ``dtype`` anyway. Applied to
    the worst element of a comparison, it turns a green that a zero gradient would also earn
    into an explicit "inconclusive" with the numbers.
    """
    if allowed < abs(reference) or not np.isfinite(reference):
        return None
    if abs(value - reference) <= ulps * ulp(reference, dtype):
        return None
    return (
        f"tolerance larger than the reference: the allowance {allowed:.3g} at the worst element "
        f"is at least |reference| = {abs(reference):.3g}, so a zero would pass too, and the "
        f"value {value:.8g} is more than {ulps:g} {dtype} ulps from it"
    )


def _nanmax(x: NDArray[np.float64]) -> float:
    """Max of ``x`` where a nan anywhere makes the result nan (errors must not hide)."""
    if x.size == 0:
        return 0.0
    return float(np.max(x))
