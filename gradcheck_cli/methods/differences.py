"""The one differencing routine: schemes, step rules, the step actually taken, and quotients.

Pure NumPy, no I/O. Every caller that differentiates numerically (the ``finite_difference``
method, the layer parameters, fast mode's directional checks, ``--impl`` self-consistency and
``explain``) builds its evaluation points and its quotients here; it brings only the function
it differentiates.

A scheme evaluates the function at ``z + c h`` for each offset ``c`` of :data:`OFFSETS` and
combines differences of pairs of those values (:data:`PAIRS`; index -1 is the unperturbed
point ``z``). With a step ``h``, truncation error ``h^p |f^(p+1)| / T`` and rounding ``R delta /
h`` (``delta`` the rounding of one function value; :data:`ERROR_MODEL` holds ``p, T, R``):

=============  ==============================================  ========  ===  =====  ===
scheme         quotient                                        order p   T    R      eps^
=============  ==============================================  ========  ===  =====  ===
forward        ``(f(z+h) - f(z)) / h``                          1         2    2      1/2
central        ``(f(z+h) - f(z-h)) / 2h``                       2         6    1      1/3
richardson     ``(4 D(h/2) - D(h)) / 3``, D the central one     4         480  3      1/5
=============  ==============================================  ========  ===  =====  ===

The automatic relative step is ``eps^(1/(p+1))`` (:func:`step_factor`): the step that balances
the two terms when ``delta ~ eps`` and the derivative bound is of order 1. A caller that knows
both sizes takes :func:`balanced_step` instead.

Two kinds of quotient:

* **coordinates** (:func:`coordinate_quotient`, :func:`coordinatewise`): each element moves by
  its own scalar step, so each pair's difference is divided by the step the machine actually
  took, ``(z + h) - (z - h)`` (``z + h`` is itself rounded), not by the nominal ``2h``;
* **directions** (:func:`directional_quotient`): the step taken is a vector ``fl(z + c h d) -
  z``, which cannot divide, so values are combined with the nominal ``h`` and the caller
  combines the linear prediction ``g . (step taken)`` with the same formula.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem, carried_scales, rows_of
from gradcheck_cli.methods._base import Scheme

FloatArray = NDArray[np.float64]

#: Multiples of ``h`` at which each scheme evaluates (forward also uses the unperturbed point).
OFFSETS: dict[Scheme, tuple[float, ...]] = {
    "forward": (1.0,),
    "central": (1.0, -1.0),
    "richardson": (1.0, -1.0, 0.5, -0.5),
}
#: The pairs of :data:`OFFSETS` indices whose differences a scheme combines (-1: the point
#: ``z`` itself). Richardson's first pair is the wide one (``+-h``), its second the narrow one.
PAIRS: dict[Scheme, tuple[tuple[int, int], ...]] = {
    "forward": ((0, -1),),
    "central": ((0, 1),),
    "richardson": ((0, 1), (2, 3)),
}
#: ``(order p, truncation divisor T, rounding multiplier R)`` of each scheme: the error of a
#: quotient with step ``h`` is at most ``h^p bound / T + R delta / h``.
ERROR_MODEL: dict[Scheme, tuple[int, float, float]] = {
    "forward": (1, 2.0, 2.0),
    "central": (2, 6.0, 1.0),
    "richardson": (4, 480.0, 3.0),
}
#: Seed of every seeded random direction: fast mode's directional checks and the sweep's
#: Taylor test (the --impl self-consistency check has its own, so its directions differ from
#: the ones an implementation may have been tuned on).
DIRECTION_SEED = 20261122
#: Seed of the --impl self-consistency directions, and of its complex-step probe.
SELF_CHECK_SEED = 1234
PROBE_SEED = 4321

#: Upper bound on the values in one block of a layer's perturbed parameters (``layer.py``):
#: 2^20, 8 MiB in float64.
FD_CHUNK_ELEMENTS = 1 << 20
#: Values in one block of perturbed logits of the finite differences and the complex step
#: (2^18 float64: 2 MiB, and as much again for the exponentials); each thread reuses one
#: workspace of that size (:func:`workspace`). Measured on 32 x 1000 central differences, two
#: threads, two runs: 2^18 0.25-0.26 s, 2^19 0.26-0.30 s, 2^17 0.25-0.33 s, 2^16 0.52 s.
FD_BLOCK_ELEMENTS = 1 << 18
#: Element operations below which blocks run in one thread.
PARALLEL_MIN_WORK = 1 << 22
#: Most threads used for blocks.
MAX_WORKERS = 8


def step_factor(scheme: Scheme, dtype: np.dtype[np.floating] | type = np.float64) -> float:
    """The automatic relative step of ``scheme`` for values of ``dtype``: ``eps^(1/(p+1))``."""
    eps = float(np.finfo(dtype).eps)
    return float(eps ** (1 / (ERROR_MODEL[scheme][0] + 1)))


def relative_steps(z: FloatArray, factor: float) -> FloatArray:
    """The step of every element, ``factor * max(1, |z|)``, same shape and dtype as ``z``."""
    out: FloatArray = factor * np.maximum(1.0, np.abs(z))
    return out.astype(z.dtype, copy=False)


def balanced_step(
    scheme: Scheme, bound: float, roundings: float, eps: float, scale: float
) -> float:
    """The step minimising :func:`difference_error`, where one value's rounding is ``delta =
    roundings * eps * scale`` and ``bound`` bounds ``|f^(p+1)|``: ``h = (T R delta / (p
    bound))^(1/(p+1))`` (Richardson: ``(360 delta / bound)^(1/5)``).

    A ``scale`` of 0 (no row contributes: every sample ignored or masked, so the loss is a
    constant) leaves nothing to balance: the step is ``inf``, and callers cap it (``min(1,
    h)``), where a step of 0 would divide by zero in :func:`difference_error`."""
    order, divisor, rounding = ERROR_MODEL[scheme]
    if scale == 0.0:
        return math.inf
    balance = divisor * rounding / order  # 4, 3 and 360: exact
    return float((balance * roundings * eps * scale / bound) ** (1 / (order + 1)))


def difference_error(
    scheme: Scheme, h: float, bound: float, roundings: float, eps: float, scale: float
) -> float:
    """Predicted error of a quotient with step ``h``: truncation ``h^p bound / T`` plus rounding
    ``R roundings eps scale / h`` (see :data:`ERROR_MODEL`)."""
    order, divisor, rounding = ERROR_MODEL[scheme]
    return float(h**order * bound / divisor + rounding * roundings * eps * scale / h)


def points(scheme: Scheme, z: FloatArray, step: FloatArray) -> list[FloatArray]:
    """The evaluation points ``z + c step`` for each offset ``c``, rounded to ``z``'s dtype.

    ``step`` is the elementwise steps (same shape as ``z``) or a direction times its step; ``z``
    must be finite (callers put finite stand-ins at -inf logits and restore them after).
    """
    return [(z + c * step).astype(z.dtype, copy=False) for c in OFFSETS[scheme]]


def pair_differences(
    scheme: Scheme, values: Sequence[Any] | FloatArray, base: Any = None
) -> list[Any]:
    """``values[i] - values[j]`` for each pair of :data:`PAIRS` (``base``: the value at ``z``,
    needed by forward only). Values may be numbers or arrays of any common shape."""
    return [values[i] - (base if j < 0 else values[j]) for i, j in PAIRS[scheme]]


def steps_taken(
    scheme: Scheme, moved: Sequence[FloatArray], origin: FloatArray
) -> list[FloatArray]:
    """Each pair's difference of rounded points, ``fl(z + c_i s) - fl(z + c_j s)`` in float64
    (``origin``: the point ``z``), same shape as the points: the steps actually taken along a
    direction, whose product with a gradient is the linear prediction."""
    out = []
    for i, j in PAIRS[scheme]:
        taken = moved[i].astype(np.float64)
        taken -= origin if j < 0 else moved[j]
        out.append(taken)
    return out


def coordinate_quotient(
    scheme: Scheme,
    values: Sequence[Any] | FloatArray,
    positions: Sequence[Any],
    base: FloatArray | None = None,
    origin: FloatArray | None = None,
) -> FloatArray:
    """Elementwise quotient: each pair's value difference over its *position* difference (the
    step actually taken), then Richardson's ``(4 D_narrow - D_wide) / 3`` where it applies.

    ``values[p]`` and ``positions[p]`` belong to evaluation point ``p``; ``base`` and ``origin``
    are the value and position at ``z`` (forward). All broadcast to one shape, the result's.
    """
    rises = pair_differences(scheme, values, base)
    runs = pair_differences(scheme, positions, origin)
    quotients = [dv / dx for dv, dx in zip(rises, runs, strict=True)]
    if scheme == "richardson":
        wide, narrow = quotients
        out: FloatArray = (4.0 * narrow - wide) / 3.0
        return out
    first: FloatArray = quotients[0]
    return first


def directional_quotient(scheme: Scheme, diffs: Sequence[Any], h: float) -> Any:
    """The derivative along a direction from the pairs' differences (:func:`pair_differences`)
    with the nominal step ``h``: ``d/h`` (forward), ``d/2h`` (central), ``(4 d_narrow -
    d_wide/2) / 3h`` (Richardson). Apply it to ``g . (step taken)`` too, the same way."""
    if scheme == "forward":
        return diffs[0] / h
    if scheme == "central":
        return diffs[0] / (2 * h)
    wide, narrow = diffs
    return (4 * narrow - wide / 2) / (3 * h)


def coordinatewise(
    scheme: Scheme,
    z: FloatArray,
    moved: Sequence[FloatArray],
    evaluate: Callable[[NDArray[np.intp]], FloatArray],
    base: FloatArray | None,
    block: int,
    work: int,
    columns: NDArray[np.intp] | None = None,
) -> FloatArray:
    """The quotient of every element of ``z`` (N, K), columns in blocks of ``block``.

    ``moved`` are :func:`points` of ``z`` (each (N, K)). ``evaluate(cols)`` returns the function
    with column ``cols[b]`` of every row moved to each point at once, shape (P, B, N) (rows are
    independent, so one perturbation per column serves all rows); ``base`` (N,) is its value at
    ``z`` (forward only). Blocks write disjoint columns and may run on several threads. With
    ``columns`` only those columns are differenced; the others are nan.
    """
    k = z.shape[1]
    grad = np.empty_like(z)
    chosen = np.arange(k) if columns is None else columns
    if columns is not None:
        grad.fill(np.nan)

    def one_block(start: int) -> None:
        cols = chosen[start : start + block]
        values = evaluate(cols)  # (P, B, N)
        at = [m[:, cols].T for m in moved]  # (B, N) each
        grad[:, cols] = coordinate_quotient(scheme, values, at, base, z[:, cols].T).T

    parallel_blocks(one_block, range(0, chosen.size, block), work=work)
    return grad


def parallel_blocks(fn: Callable[[int], None], starts: range, work: int) -> None:
    """Run ``fn`` on every block start, on the machine's cores when the work pays for it.

    NumPy's ufuncs release the GIL, so threads run the blocks' array arithmetic in parallel;
    below :data:`PARALLEL_MIN_WORK` element operations the thread start-up costs more than it
    saves and the blocks run in order.
    """
    workers = min(len(starts), os.cpu_count() or 1, MAX_WORKERS)
    if workers <= 1 or work < PARALLEL_MIN_WORK:
        for start in starts:
            fn(start)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, starts):
            pass


_local = threading.local()


def workspace(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[Any, Any]:
    """This thread's two arrays of ``shape`` and ``dtype`` (the perturbed logits of a block and
    their exponentials), kept between calls so that a block allocates nothing of its size."""
    held = getattr(_local, "arrays", None)
    if held is None or held[0].shape != shape or held[0].dtype != dtype:
        held = (np.empty(shape, dtype), np.empty(shape, dtype))
        _local.arrays = held
    return held


def row_parts(problem: Problem, group: int) -> Iterator[tuple[slice, Problem]]:
    """The problem's rows ``group`` at a time, each as a problem of its own that carries the
    batch's reduction scales (computed once here, not once per block)."""
    n = problem.shape[0]
    scales = carried_scales(problem)
    for start in range(0, n, group):
        rows = slice(start, min(n, start + group))
        yield rows, rows_of(problem, rows, scales, problem.logits.dtype.name)


def zero_at_minus_inf(
    grad: FloatArray, finite: NDArray[np.bool_], columns: NDArray[np.intp] | None
) -> None:
    """The derivative at every -inf logit is exactly 0 (its probability is 0): set it in
    ``grad`` (N, K), except in classes a sample left out (they stay nan)."""
    infinite = ~finite
    if columns is not None:
        infinite[:, np.setdiff1d(np.arange(grad.shape[1]), columns)] = False
    grad[infinite] = 0.0


def row_groups(n: int, values_per_row: int) -> tuple[int, int]:
    """(rows per group, columns per block) so that a block of ``values_per_row`` values per
    row and column holds about :data:`FD_BLOCK_ELEMENTS` values."""
    group = max(1, min(n, FD_BLOCK_ELEMENTS // values_per_row))
    return group, max(1, FD_BLOCK_ELEMENTS // (values_per_row * group))


#: Random classes of a sample (besides each row's label and largest logits).
SAMPLE_CLASSES = 64
#: Largest logits of each row always in a sample.
SAMPLE_TOP = 4
#: Seed of the sampled classes.
SAMPLE_SEED = 20261202


def sample_columns(
    logits: FloatArray, labels: NDArray[np.intp] | None, m: int = SAMPLE_CLASSES
) -> NDArray[np.intp]:
    """The classes a sampled check differences, sorted and unique: every row's label (valid
    ones) and :data:`SAMPLE_TOP` largest logits, and ``m`` classes drawn at random (seeded) from
    the rest; all K when that is not fewer. ``logits`` (N, K)."""
    k = logits.shape[1]
    wanted: set[int] = set()
    if labels is not None:
        wanted.update(int(y) for y in labels if 0 <= y < k)
    top = min(SAMPLE_TOP, k)
    wanted.update(int(c) for c in np.argpartition(-logits, top - 1, axis=1)[:, :top].ravel())
    if len(wanted) + m >= k:
        return np.arange(k)
    rest = np.setdiff1d(np.arange(k), np.fromiter(wanted, dtype=np.intp))
    drawn = np.random.default_rng(SAMPLE_SEED).choice(rest, size=m, replace=False)
    return np.union1d(np.fromiter(wanted, dtype=np.intp), drawn).astype(np.intp)
