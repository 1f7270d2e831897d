"""Step-size sweep and Taylor test for one spec (``xentcheck sweep``): pure computation.

For steps ``h = 1e-1, 1e-2, ..., 1e-16`` the forward, central and Richardson differences (step
``h * max(1, |z|)``) and the complex step (step ``h``) are evaluated, and each one's largest
absolute error against the reference (``exact`` when computable, else ``analytic``) is recorded.
Finite differences trace the classic V: truncation error falls with ``h`` (as ``h``, ``h^2`` and
``h^4``), rounding error rises as ``eps / h``; the complex step has no rounding term and stays
flat at a few ulps once its ``h^2`` truncation is gone.

The Taylor test checks the gradient itself without any reference: along a seeded random unit
direction ``d``, the remainder ``r(h) = |L(z + h d) - L(z) - h g.d|`` of a correct gradient
``g`` shrinks like ``h^2`` (slope 2 on a log-log plot); with a wrong gradient the first-order
term no longer cancels and it shrinks like ``h`` (slope 1). The slope is fitted by least squares
over the smaller half of the steps where ``r`` is well above rounding level (the asymptotic
regime: at large steps an error's linear term can hide under the quadratic one).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem, contributions
from gradcheck_cli.methods import EXACT_METHOD, METHODS, REFERENCE_METHOD, SCHEMES, NotComputable
from gradcheck_cli.methods._base import DEFAULT_SETTINGS
from gradcheck_cli.methods.complex_step import complex_step
from gradcheck_cli.methods.differences import (
    DIRECTION_SEED,
    directional_quotient,
    pair_differences,
    points,
    steps_taken,
)
from gradcheck_cli.methods.finite_difference import fd_gradient
from gradcheck_cli.model import SweepResult, Taylor

FloatArray = NDArray[np.float64]
#: The swept steps, 1e-1 down to 1e-16.
STEPS: tuple[float, ...] = tuple(10.0**-e for e in range(1, 17))
#: Steps of the Taylor test: 12 points from 1e-1 to 1e-4.
TAYLOR_STEPS: tuple[float, ...] = tuple(np.logspace(-1, -4, 12))
SWEPT = (*SCHEMES, "complex_step")
#: Seed of the Taylor direction (a failure reproduces).
TAYLOR_SEED = DIRECTION_SEED


#: Above this many element operations the element-wise sweep (every step, every method, every
#: element: about N K^2 each) gives way to the directional sweep, like ``run``'s fast mode.
SWEEP_BUDGET = 5e8
#: Seeded random directions of the directional sweep.
SWEEP_DIRECTIONS = 2

Progress = Callable[[int, int], None]


def elementwise_cost(problem: Problem) -> float:
    """Element operations of the element-wise sweep: ``|STEPS| |SWEPT| N K^2``."""
    n, k = problem.shape
    return float(len(STEPS) * len(SWEPT) * n * k * k)


def sweep(
    problem: Problem,
    name: str,
    file: str,
    *,
    directional: bool | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """Run the sweep and the Taylor test on one problem: element by element, or (``directional``,
    by default when :func:`elementwise_cost` exceeds :data:`SWEEP_BUDGET`) along
    :data:`SWEEP_DIRECTIONS` seeded random unit directions, each derivative against ``g . d``.
    ``progress(done, total)`` is called after each (method, step)."""
    notes: dict[str, str] = {}
    try:
        ref = METHODS[EXACT_METHOD](problem, DEFAULT_SETTINGS).grad
        reference = EXACT_METHOD
    except NotComputable as exc:
        ref = METHODS[REFERENCE_METHOD](problem, DEFAULT_SETTINGS).grad
        reference = REFERENCE_METHOD
        notes[EXACT_METHOD] = exc.reason
    if directional is None:
        directional = elementwise_cost(problem) > SWEEP_BUDGET
    measure = _directional_errors(problem, ref) if directional else _element_errors(problem, ref)
    if directional:
        notes["mode"] = (
            f"directional sweep: the error of each derivative along {SWEEP_DIRECTIONS} seeded "
            f"random unit directions against g·d (element-wise would cost "
            f"{elementwise_cost(problem):.3g} element operations; --full forces it)"
        )
    errors: dict[str, tuple[float | None, ...]] = {}
    total, done = len(SWEPT) * len(STEPS), 0
    for method in SWEPT:
        row: list[float | None] = []
        for h in STEPS:
            try:
                err = measure(method, h)
            except NotComputable as exc:
                notes[method] = exc.reason
                err = None
            row.append(err if err is not None and np.isfinite(err) else None)
            done += 1
            if progress is not None:
                progress(done, total)
        errors[method] = tuple(row)
    best = {m: _best(STEPS, errs) for m, errs in errors.items()}
    analytic = METHODS[REFERENCE_METHOD](problem, DEFAULT_SETTINGS).grad
    return SweepResult(
        name=name,
        file=file,
        reference=reference,
        steps=STEPS,
        errors=errors,
        best_step=best,
        taylor=taylor_test(problem, analytic),
        notes=notes,
    )


def _element_errors(problem: Problem, ref: FloatArray) -> Callable[[str, float], float]:
    """``(method, h) -> max |g - ref|`` over every element."""

    def error(method: str, h: float) -> float:
        if method == "complex_step":
            g = complex_step(problem, h)
        else:
            g = fd_gradient(problem, method, h)  # type: ignore[arg-type]
        with np.errstate(invalid="ignore"):
            return float(np.max(np.abs(g - ref)))

    return error


def _directional_errors(problem: Problem, ref: FloatArray) -> Callable[[str, float], float]:
    """``(method, h) -> max_d |D_d L - g . d|`` over seeded random unit directions ``d`` (zero
    at -inf logits): the scheme's quotient along ``d`` with step ``h max(1, max|z|)`` (the
    complex step with ``h``), its prediction from the steps actually taken."""
    z = problem.logits
    finite = np.isfinite(z)
    zf = np.where(finite, z, 0.0)
    rng = np.random.default_rng(DIRECTION_SEED)
    dirs = []
    for _ in range(SWEEP_DIRECTIONS):
        d = np.where(finite, rng.normal(size=z.shape), 0.0)
        dirs.append(d / max(float(np.linalg.norm(d)), np.finfo(np.float64).tiny))
    scale = max(1.0, float(np.max(np.abs(zf))))

    def at(points_: list[FloatArray]) -> list[float]:
        return [total_loss(problem, np.where(finite, p, z)) for p in points_]

    def error(method: str, h: float) -> float:
        worst = 0.0
        for d in dirs:
            if method == "complex_step":
                moved = np.where(finite, zf + 1j * h * d, z)
                with np.errstate(all="ignore"):
                    measured = float(np.sum(contributions(problem, moved)).imag) / h
                predicted = float(np.sum(ref * d))
            else:
                scheme = method  # a finite-difference scheme
                step = h * scale
                moved_points = points(scheme, zf, step * d)  # type: ignore[arg-type]
                base = total_loss(problem, z) if scheme == "forward" else None
                with np.errstate(all="ignore"):
                    diffs = pair_differences(scheme, at(moved_points), base)  # type: ignore[arg-type]
                measured = float(directional_quotient(scheme, diffs, step))  # type: ignore[arg-type]
                taken = steps_taken(scheme, moved_points, zf)  # type: ignore[arg-type]
                linear = [float(np.sum(ref * np.where(finite, t, 0.0))) for t in taken]
                predicted = float(directional_quotient(scheme, linear, step))  # type: ignore[arg-type]
            worst = max(worst, abs(measured - predicted))
        return worst

    return error


def _best(steps: tuple[float, ...], errs: tuple[float | None, ...]) -> float | None:
    pairs = [(e, h) for h, e in zip(steps, errs, strict=True) if e is not None]
    return min(pairs)[1] if pairs else None


def total_loss(problem: Problem, logits: FloatArray) -> float:
    """The sum of the rows' shares of the loss at ``logits`` (the reduced loss; for ``none``
    the sum of the per-sample losses)."""
    return float(np.sum(contributions(problem, logits)))


def taylor_test(problem: Problem, grad: FloatArray, seed: int = TAYLOR_SEED) -> Taylor:
    """The remainder ``|L(z + h d) - L(z) - h g.d|`` over :data:`TAYLOR_STEPS` and its slope.

    ``d`` is a seeded random unit direction (zero on -inf logits). Points whose remainder is
    within 100 rounding units of the loss are left out of the fit.
    """
    z = problem.logits.astype(np.float64)
    finite = np.isfinite(z)
    d = np.random.default_rng(seed).normal(size=z.shape)
    d[~finite] = 0.0
    d /= np.linalg.norm(d) or 1.0
    base = total_loss(problem, z)
    slope_term = float(np.sum(np.where(finite, grad, 0.0) * d))
    eps = float(np.finfo(np.float64).eps)
    remainders = []
    for h in TAYLOR_STEPS:
        moved = np.where(finite, z + h * d, z)
        remainders.append(abs(total_loss(problem, moved) - base - h * slope_term))
    floor = 100 * eps * max(1.0, abs(base))
    usable = [(h, r) for h, r in zip(TAYLOR_STEPS, remainders, strict=True) if r > floor]
    if len(usable) < 3:
        return Taylor(
            TAYLOR_STEPS,
            tuple(remainders),
            None,
            "inconclusive: the remainder is at rounding level (the loss is locally linear "
            "along the test direction)",
            seed,
        )
    # The asymptotic order shows at the small steps: fit the smallest half (at least 3).
    usable = usable[-max(3, len(usable) // 2) :]
    xs = np.log10([h for h, _ in usable])
    ys = np.log10([r for _, r in usable])
    slope = float(np.polyfit(xs, ys, 1)[0])
    if slope >= 1.8:
        verdict = "gradient consistent: the remainder shrinks like h^2"
    elif slope <= 1.2:
        verdict = "gradient WRONG: the remainder shrinks like h, so g.d is not the derivative"
    else:
        verdict = "unclear: the slope is between 1 and 2"
    return Taylor(TAYLOR_STEPS, tuple(remainders), slope, verdict, seed)
