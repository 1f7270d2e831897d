"""``--impl`` at LLM scale (fast mode): the self-consistency check without (N, K) float64 arrays.

In fast mode the implementation is called once on the whole batch (kernels reduce over it) and
its gradient is kept in its own dtype; :mod:`gradcheck_cli.fastmode` compares it with the
float64 reference chunk by chunk. What remains is the check of the implementation's gradient
``g`` against its *own* forward pass, which here works in one reusable buffer of the logits'
size:

* **Directions.** Direction 0 is ``g`` itself, direction ``r >= 1`` is ``g`` weighted element by
  element by ``a_n b_k`` with seeded ``a`` (N,) and ``b`` (K,) uniform in [0, 2) (a row and a
  column factor: cheap to regenerate, and a column or row the backward gets wrong is weighted
  differently in each direction). At this size a random direction is useless: ``g . d`` for a
  random unit ``d`` is about ``|g| / sqrt(N K)`` (1e-6 at 4096 x 32000), far below what the
  forward pass loses to rounding, while along ``g`` the derivative is ``|g|`` itself. A
  backward that disagrees with its forward by ``e`` shows as ``e . g / |g|`` (or ``|e|^2 / |g|``
  when ``e`` is orthogonal to ``g``).
* **Differences.** Richardson-extrapolated central differences with the step and predicted
  error of :func:`gradcheck_cli.impl._richardson` (the same rounding model; the forward scale
  summed over row chunks). Each point ``z + t h u`` (``t = 1, -1, 1/2, -1/2``, ``u`` the unit
  direction) is written into the buffer in the logits' dtype. The expected value is ``g . u``
  (float64 sums per chunk); rounding the points moves each element by at most
  ``spacing(max|z| + h)``, so the predicted error adds ``(3 / h) |g|_1 spacing(max|z| + h)``
  (3 / h: the sum of Richardson's weights), not a pass over the moves.
* **Forward only.** A framework-native loss is evaluated without building a graph
  (``TorchNative.forward``, ``JaxNative.forward``; on the CPU torch reads the buffer in place,
  which is safe because every point is written afresh from the logits and the gradient); a
  NumPy ``(loss, grad)`` function gets a copy and its gradient is ignored.

Memory: the logits, the implementation's gradient, one buffer of the logits' size, and a few
row chunks (the framework's copy of the point is the implementation's own memory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli import guard
from gradcheck_cli.compare import Comparison, Tolerance, compare
from gradcheck_cli.core import Problem
from gradcheck_cli.impl import (
    VACUITY_ULPS,
    Implementation,
    Scales,
    _combine,
    _forward_roundings,
    _summed_loss,
    accepted_options,
    bound_label,
)
from gradcheck_cli.methods.differences import (
    SELF_CHECK_SEED,
    balanced_step,
    difference_error,
    parallel_blocks,
)

FloatArray = NDArray[np.float64]


def forward_total(impl: Implementation, options: dict[str, Any]) -> Callable[[np.ndarray], float]:
    """``z -> sum(loss(z))`` as a float, by the cheapest route the implementation offers."""
    native = impl.native
    given = {k: v for k, v in options.items() if k != "grad_output"}
    if native is not None and hasattr(native, "forward"):
        given = accepted_options(impl, given)

        def total(values: np.ndarray) -> float:
            with guard.calling("self-consistency probe"):
                loss = native.forward(values, given)
            return float(np.sum(np.asarray(loss, dtype=np.float64)))

        return total

    summed = _summed_loss(impl, given)

    def total_numpy(values: np.ndarray) -> float:
        return float(np.real(summed(values)))

    return total_numpy


def self_consistency(
    impl: Implementation,
    problem: Problem,
    options: dict[str, Any],
    grad: np.ndarray,
    factor: np.ndarray,
    natural: Scales,
    tol: Tolerance,
    dtype: str,
    directions: int,
    rows_per: int,
) -> tuple[Comparison, str]:
    """The implementation's gradient ``grad`` (N, K; any float dtype) divided by the upstream
    ``factor`` (a scalar array, or (N, 1) per row), against Richardson differences of its own
    forward along ``directions`` gradient-based directions (module docstring);
    ``problem.logits`` (N, K) are in the check's ``dtype``.

    Returns the comparison (quantity ``directions``, the predicted error added to ``tol``'s
    absolute part) and a note saying how the derivatives were taken.
    """
    z = problem.logits
    n, k = z.shape
    total = forward_total(impl, options)
    eps = float(np.finfo(z.dtype).eps)
    model = (natural.curvature, _forward_roundings(k), eps, natural.forward)
    h = min(1.0, balanced_step("richardson", *model))
    starts = range(0, n, rows_per)
    top = max((_max_abs(z[s : s + rows_per]) for s in starts), default=0.0)
    error = difference_error("richardson", h, *model)
    buffer = np.empty_like(z)
    dirs = _Directions(grad, factor, z, rows_per, max(1, directions))
    projections, norms, l1 = dirs.statistics()
    error += 3.0 / h * l1 * float(np.spacing(np.asarray(top + h, dtype=z.dtype)))
    measured, expected = [], []
    for r in range(dirs.count):
        if not (norms[r] > 0.0 and np.isfinite(norms[r])):
            continue  # a zero gradient: nothing to differentiate along
        values = []
        for t in (1.0, -1.0, 0.5, -0.5):  # differences.OFFSETS["richardson"]
            dirs.write(buffer, r, t * h / norms[r])
            values.append(total(buffer))
        measured.append(_combine(values, h))
        expected.append(projections[r] / norms[r])
    how = (
        f"Richardson differences (h = {h:.3g}, predicted error {error:.3g}) of the "
        f"implementation's own forward along its gradient and {max(0, directions - 1)} seeded "
        "random reweighting(s) of it (at this size a random direction's derivative is below "
        "the forward pass's rounding)"
    )
    comparison = compare(
        f"impl self-consistency (Richardson differences){bound_label(impl)}",
        np.array(measured),
        "impl gradient · d",
        np.array(expected),
        Tolerance(rtol=tol.rtol, atol=tol.atol + error),
        quantity="directions",
        predicted=error,
        dtype=dtype,
        ulps=VACUITY_ULPS,
    )
    return comparison, how


class _Directions:
    """The directions of the check, as chunked passes over the implementation's gradient (per
    unit of upstream gradient, zero on -inf logits), on all cores; per-chunk sums are added in
    row order, so every figure is reproducible. Shapes: ``grad`` and ``z`` (N, K); ``factor`` a
    scalar array or (N, 1)."""

    def __init__(
        self, grad: np.ndarray, factor: np.ndarray, z: np.ndarray, rows_per: int, count: int
    ) -> None:
        self.grad, self.z, self.rows_per, self.count = grad, z, rows_per, count
        self.factor = np.asarray(factor, dtype=np.float64)
        self.starts = range(0, z.shape[0], rows_per)
        n, k = z.shape
        self.weights: list[tuple[FloatArray, FloatArray]] = [
            (np.asarray(rng.random(n)) * 2.0, np.asarray(rng.random(k)) * 2.0)
            for rng in (np.random.default_rng([SELF_CHECK_SEED, r]) for r in range(1, count))
        ]
        self.all_finite = bool(np.all(np.isfinite(z)))

    def _sum(self, part: Callable[[int], list[float]]) -> list[float]:
        found: dict[int, list[float]] = {}

        def run(s: int) -> None:
            found[s] = part(s)

        parallel_blocks(run, self.starts, work=self.z.size * 16)
        return [float(sum(v)) for v in zip(*(found[s] for s in self.starts), strict=True)]

    def _scale(self, rows: slice) -> FloatArray:
        return self.factor if self.factor.ndim == 0 else self.factor[rows]

    def _per_unit(self, values: FloatArray, rows: slice) -> FloatArray:
        """``values / factor`` for ``rows``, 0 where the factor is 0 (a row whose upstream
        gradient is 0 carries nothing to differentiate along)."""
        factor = self._scale(rows)
        shape = np.broadcast_shapes(values.shape, factor.shape)
        out: FloatArray = np.divide(values, factor, out=np.zeros(shape), where=factor != 0)
        return out

    def statistics(self) -> tuple[list[float], list[float], float]:
        """Per direction ``g . d`` and ``|d|``, and ``|g|_1`` (float64)."""

        def part(s: int) -> list[float]:
            rows = slice(s, s + self.rows_per)
            g = self._per_unit(self.grad[rows].astype(np.float64), rows)
            if not self.all_finite:
                g[~np.isfinite(self.z[rows])] = 0.0
            gg = g * g
            out = [float(np.sum(gg)), float(np.sum(np.abs(g)))]
            for a, b in self.weights:
                w = np.outer(a[rows], b)
                gd = gg * w
                out += [float(np.sum(gd)), float(np.einsum("nk,nk->", gd, w))]
            return out

        sums = self._sum(part)
        projections = [sums[0], *sums[2::2]]
        norms = [float(np.sqrt(v)) for v in [sums[0], *sums[3::2]]]
        return projections, norms, sums[1]

    def write(self, buffer: np.ndarray, r: int, scale: float) -> None:
        """``buffer = z + scale d_r`` in the logits' dtype (``d_r`` unnormalised)."""
        dtype = self.z.dtype

        def part(s: int) -> list[float]:
            rows = slice(s, s + self.rows_per)
            coef = self._per_unit(np.asarray(scale, dtype=np.float64), rows)  # scalar or (rows, 1)
            if r:
                a, b = self.weights[r - 1]
                step = (coef * a[rows, None]).astype(dtype) * b.astype(dtype)[None, :]
            else:
                step = np.asarray(coef).astype(dtype)
            d = self.grad[rows].astype(dtype, copy=False) * step
            if not self.all_finite:
                d[~np.isfinite(self.z[rows])] = 0.0
            np.add(self.z[rows], d, out=buffer[rows])
            return []

        self._sum(part)


def _max_abs(a: np.ndarray) -> float:
    """``max |a|`` over the finite entries (0 for none)."""
    return float(np.max(np.abs(a), where=np.isfinite(a), initial=0.0))


def gradient_bound(problem: Problem, rows_per: int, fallback: float) -> float:
    """An upper bound on ``max |reference gradient|`` without forming it, for the floor of the
    rounded model in fast mode: for a plain index-label softmax problem the largest element of
    row n is ``alpha_n w_{y_n} (1 - p_{y_n})`` (every other p_c is at most 1 - p_y), tight at
    confident logits where the scale ``alpha w`` is 1000 times too large; ``fallback`` (the
    gradient scale) otherwise. Row chunks in float64, one exp pass."""
    from gradcheck_cli.core import CrossEntropyProblem, batch_scales, rows_of
    from gradcheck_cli.core.softmax_ce import label_columns, label_weights

    if not (
        isinstance(problem, CrossEntropyProblem)
        and problem.one_hot
        and problem.softcap is None
        and problem.z_loss == 0.0
    ):
        return fallback
    whole = batch_scales(problem)
    top = 0.0
    for s in range(0, problem.shape[0], rows_per):
        part = rows_of(problem, slice(s, s + rows_per), whole, "float64")
        assert isinstance(part, CrossEntropyProblem) and part.row_scales is not None
        z = part.logits
        m = np.max(z, axis=-1)
        lse = m + np.log(np.sum(np.exp(z - m[:, None]), axis=-1))
        z_y = z[np.arange(z.shape[0]), label_columns(part)]
        with np.errstate(invalid="ignore"):
            gap = -np.expm1(z_y - lse)  # 1 - p_y, without cancellation
        weight = part.row_scales[0].astype(np.float64) * label_weights(part).astype(np.float64)
        values = np.where(np.isfinite(gap), weight * gap, weight)
        top = max(top, float(np.max(values, initial=0.0)))
    return top
