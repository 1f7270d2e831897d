"""Hypothesis properties of the core and the methods on arbitrary logits."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradcheck_cli.core import (
    CrossEntropyProblem,
    per_sample_loss,
    reduce_loss,
    softmax,
)
from gradcheck_cli.methods import (
    NotComputable,
    analytic_gradient,
    finite_difference_gradient,
    jacobian_gradient,
)

EPS = float(np.finfo(np.float64).eps)

finite = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False, allow_infinity=False)
wide = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw: st.DrawFn, elements: st.SearchStrategy[float] = finite) -> CrossEntropyProblem:
    n = draw(st.integers(1, 4))
    k = draw(st.integers(1, 8))
    z = draw(arrays(np.float64, (n, k), elements=elements))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    if draw(st.booleans()):
        labels = np.array(
            draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int64
        )
        return CrossEntropyProblem(z, labels=labels, reduction=reduction)
    raw = draw(arrays(np.float64, (n, k), elements=st.floats(0.0, 1.0)))
    assume(bool(np.all(raw.sum(axis=1) > 0.1)))
    return CrossEntropyProblem(z, targets=raw / raw.sum(axis=1, keepdims=True), reduction=reduction)


@given(arrays(np.float64, st.integers(1, 30), elements=wide))
def test_probabilities_sum_to_one(z: np.ndarray) -> None:
    p = softmax(z)
    assert np.all((p >= 0) & (p <= 1))
    assert abs(float(p.sum()) - 1.0) <= 2 * (len(z) + 1) * EPS


@given(problems(wide))
def test_loss_is_finite_and_nonnegative(problem: CrossEntropyProblem) -> None:
    losses = per_sample_loss(problem)
    assert np.all(np.isfinite(losses)) and np.all(losses >= 0)


@given(problems())
def test_gradient_rows_sum_to_zero(problem: CrossEntropyProblem) -> None:
    # Rounding scale of a row: its own magnitude, or the targets' (p * sum(t) - t rounds at t's
    # scale even where the result is small).
    g = analytic_gradient(problem).grad
    n, k = problem.shape
    w = 1 / n if problem.reduction == "mean" else 1.0
    scale = np.maximum(np.abs(g).sum(axis=1), w)
    assert np.all(np.abs(g.sum(axis=1)) <= 2 * (k + 1) * EPS * scale)


@given(problems(), st.floats(-1e3, 1e3))
def test_shift_invariance(problem: CrossEntropyProblem, c: float) -> None:
    shifted = per_sample_loss(problem, problem.logits + c)
    base = per_sample_loss(problem)
    zmax = float(np.max(np.abs(problem.logits)))
    assert np.all(np.abs(shifted - base) <= 8 * EPS * (zmax + abs(c)) + 4 * EPS * np.abs(base))


@given(problems())
def test_methods_agree(problem: CrossEntropyProblem) -> None:
    ref = analytic_gradient(problem).grad
    fd = finite_difference_gradient(problem).grad
    np.testing.assert_allclose(fd, ref, rtol=1e-6, atol=1e-6)
    try:
        jac = jacobian_gradient(problem).grad
    except NotComputable:
        return
    np.testing.assert_allclose(jac, ref, rtol=1e-10, atol=1e-12)


@given(problems())
def test_reduced_loss_matches_gradient_scaling(problem: CrossEntropyProblem) -> None:
    # A directional derivative of the reduced loss equals <grad, d> (checks the reduction weights).
    if problem.reduction == "none":
        return
    rng = np.random.default_rng(0)
    d = rng.normal(size=problem.shape)
    h = 1e-6
    shifted_up = CrossEntropyProblem(
        problem.logits + h * d, problem.labels, problem.targets, problem.reduction
    )
    shifted_down = CrossEntropyProblem(
        problem.logits - h * d, problem.labels, problem.targets, problem.reduction
    )
    fd = (float(reduce_loss(shifted_up)) - float(reduce_loss(shifted_down))) / (2 * h)
    g = analytic_gradient(problem).grad
    assert abs(fd - float(np.sum(g * d))) <= 1e-6 * (1 + float(np.sum(np.abs(d))))
