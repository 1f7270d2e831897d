"""The three gradient methods: against mpmath, against each other, and where they refuse."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.core import CrossEntropyProblem, dense_targets
from gradcheck_cli.methods import (
    METHODS,
    NotComputable,
    analytic_gradient,
    differences,
    finite_difference_gradient,
    jacobian_gradient,
)
from gradcheck_cli.methods import jacobian as jac_module
from gradcheck_cli.methods.complex_step import complex_step_gradient

import mpref


def random_problem(rng: np.random.Generator, *, targets: bool = False) -> CrossEntropyProblem:
    n = int(rng.integers(1, 5))
    k = int(rng.integers(1, 41))
    z = rng.normal(size=(n, k)) * rng.uniform(0.1, 12.0) + rng.normal() * 5
    reduction = str(rng.choice(["mean", "sum", "none"]))
    if targets:
        t = rng.dirichlet(np.full(k, 0.5), size=n)
        return CrossEntropyProblem(z, targets=t, reduction=reduction)  # type: ignore[arg-type]
    return CrossEntropyProblem(z, labels=rng.integers(0, k, n), reduction=reduction)  # type: ignore[arg-type]


def rel_errors(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(got == ref, 0.0, np.abs(got - ref) / np.abs(ref))


def test_cat_dog_bird_gradient() -> None:
    problem = CrossEntropyProblem(np.array([[1.0, 2.0, 0.5]]), labels=np.array([1]))
    for method in METHODS.values():
        np.testing.assert_allclose(
            method(problem).grad[0], [0.2312239, -0.3714683, 0.1402444], atol=5e-8
        )


def test_analytic_target_component_without_cancellation() -> None:
    problem = CrossEntropyProblem(np.array([[40.0, 0.0, 0.0]]), labels=np.array([0]))
    g = analytic_gradient(problem).grad[0]
    ref = mpref.grad(problem.logits, dense_targets(problem), "mean")[0]
    assert g[0] == pytest.approx(-8.4967085e-18, rel=1e-7)
    np.testing.assert_allclose(g, ref, rtol=1e-15)


def test_analytic_within_1e13_relative_of_mpmath_labels() -> None:
    rng = np.random.default_rng(2024)
    worst = 0.0
    for _ in range(150):
        problem = random_problem(rng)
        ref = mpref.grad(problem.logits, dense_targets(problem), problem.reduction)
        worst = max(worst, float(np.max(rel_errors(analytic_gradient(problem).grad, ref))))
    assert worst <= 1e-13


def test_analytic_accuracy_probability_targets() -> None:
    # p * sum(t) - t subtracts two given numbers: where p_j is close to t_j the true gradient is
    # much smaller than either, and p_j's own few-ulp rounding limits its relative accuracy. The
    # achievable bound is a few ulps of the larger term, which is what the method meets.
    rng = np.random.default_rng(99)
    eps = np.finfo(np.float64).eps
    for _ in range(150):
        problem = random_problem(rng, targets=True)
        t = dense_targets(problem)
        ref = mpref.grad(problem.logits, t, problem.reduction)
        got = analytic_gradient(problem).grad
        w = 1 / problem.shape[0] if problem.reduction == "mean" else 1.0
        scale = w * np.maximum(mpref.softmax(problem.logits), t)
        assert np.all(np.abs(got - ref) <= 1e-13 * np.abs(ref) + 4 * eps * scale)


def test_jacobian_agrees_with_analytic_to_rounding() -> None:
    rng = np.random.default_rng(5)
    for _ in range(100):
        problem = random_problem(rng, targets=bool(rng.integers(0, 2)))
        try:
            jac = jacobian_gradient(problem).grad
        except NotComputable:
            continue
        np.testing.assert_allclose(jac, analytic_gradient(problem).grad, rtol=1e-12, atol=1e-15)


def test_finite_difference_agrees_with_analytic() -> None:
    rng = np.random.default_rng(11)
    worst = 0.0
    for _ in range(100):
        problem = random_problem(rng, targets=bool(rng.integers(0, 2)))
        diff = np.abs(finite_difference_gradient(problem).grad - analytic_gradient(problem).grad)
        worst = max(worst, float(np.max(diff)))
    assert worst <= 1e-8


def test_finite_difference_error_bound_at_large_logits() -> None:
    # |z| ~ 1000 makes the step 6e-3; the truncation bound h^2 * 0.0962 / 6 is 5.9e-7 < 1e-6.
    rng = np.random.default_rng(3)
    for _ in range(50):
        k = int(rng.integers(2, 20))
        z = 1000.0 + rng.normal(size=(2, k))
        problem = CrossEntropyProblem(z, labels=rng.integers(0, k, 2), reduction="sum")
        diff = np.abs(finite_difference_gradient(problem).grad - analytic_gradient(problem).grad)
        assert float(np.max(diff)) < 6e-7


@pytest.mark.parametrize(
    "budget",
    [
        6 * 13 * 2 * 2,  # every row, blocks of 2 classes
        2 * 13 * 2,  # groups of 2 rows, one class per block
        13 * 2 * 5,  # groups of 5 rows (the last of 1), one class
        1,  # one row, one class
    ],
)
@pytest.mark.parametrize("options", [{}, {"softcap": 3.0, "z_loss": 1e-3, "label_smoothing": 0.1}])
def test_differences_in_blocks_and_row_groups_give_identical_results(
    monkeypatch: pytest.MonkeyPatch, budget: int, options: dict[str, float]
) -> None:
    rng = np.random.default_rng(8)
    z = rng.normal(size=(6, 13))
    z[1, 4] = -np.inf
    problem = CrossEntropyProblem(z, labels=rng.integers(0, 4, 6), **options)  # type: ignore[arg-type]
    whole = finite_difference_gradient(problem).grad
    twice = complex_step_gradient(problem).grad
    monkeypatch.setattr(differences, "FD_BLOCK_ELEMENTS", budget)
    np.testing.assert_array_equal(finite_difference_gradient(problem).grad, whole)
    np.testing.assert_array_equal(complex_step_gradient(problem).grad, twice)
    np.testing.assert_allclose(whole, analytic_gradient(problem).grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(twice, analytic_gradient(problem).grad, rtol=1e-13, atol=1e-15)


def test_finite_difference_divides_by_step_taken() -> None:
    # A linear loss in z_k makes the quotient exact only if it divides by (z + h) - (z - h).
    z = np.array([[0.1, 0.7, -0.3]])
    steps = differences.relative_steps(z, differences.step_factor("central"))
    taken = (z + steps) - (z - steps)
    assert not np.array_equal(taken, 2 * steps)  # 0.1 + h is rounded
    assert pytest.approx(6.0554544523933395e-06, rel=1e-15) == differences.step_factor("central")


def test_jacobian_not_computable_when_target_probability_underflows() -> None:
    problem = CrossEntropyProblem(np.array([[0.0, -800.0, 1.0]]), labels=np.array([1]))
    with pytest.raises(NotComputable, match=r"class 1\) underflows to 0"):
        jacobian_gradient(problem)
    # The closed form is exact there: (p0, p1 - 1, p2) with p1 = 0.
    g = analytic_gradient(problem).grad[0]
    np.testing.assert_allclose(g, [0.2689414213699951, -1.0, 0.7310585786300049], rtol=1e-15)


def test_jacobian_not_computable_when_target_probability_is_subnormal() -> None:
    problem = CrossEntropyProblem(np.array([[0.0, -720.0], [0.0, 0.0]]), labels=np.array([1, 0]))
    with pytest.raises(NotComputable, match=r"sample 0, class 1\) is subnormal"):
        jacobian_gradient(problem)


def test_jacobian_computable_when_only_non_target_probability_underflows() -> None:
    problem = CrossEntropyProblem(np.array([[0.0, -800.0, 1.0]]), labels=np.array([2]))
    np.testing.assert_allclose(
        jacobian_gradient(problem).grad, analytic_gradient(problem).grad, rtol=1e-15, atol=0
    )


def test_jacobian_uses_the_structured_product_for_huge_class_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(12)
    problem = CrossEntropyProblem(
        rng.normal(size=(3, 11)) * 4, labels=np.array([0, 5, 10]), label_smoothing=0.1
    )
    materialized = jacobian_gradient(problem).grad
    monkeypatch.setattr(jac_module, "JACOBIAN_CHUNK_ELEMENTS", 100)
    out = jacobian_gradient(problem)
    assert out.note is not None and out.note.startswith("structured product")
    np.testing.assert_allclose(out.grad, materialized, rtol=1e-13, atol=1e-17)
    ref = mpref.grad(problem.logits, dense_targets(problem) * 0.9 + 0.1 / 11, "mean")
    np.testing.assert_allclose(out.grad, ref, rtol=1e-12, atol=1e-17)


def test_jacobian_chunking_gives_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    problem = CrossEntropyProblem(rng.normal(size=(7, 5)), labels=rng.integers(0, 5, 7))
    whole = jacobian_gradient(problem).grad
    monkeypatch.setattr(jac_module, "JACOBIAN_CHUNK_ELEMENTS", 2 * 25)
    np.testing.assert_array_equal(jacobian_gradient(problem).grad, whole)


def test_single_class_has_zero_loss_and_gradient() -> None:
    problem = CrossEntropyProblem(np.array([[3.7]]), labels=np.array([0]))
    for method in METHODS.values():
        np.testing.assert_array_equal(np.abs(method(problem).grad), [[0.0]])


def test_reduction_scales_rows() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 6))
    y = rng.integers(0, 6, 4)
    none = analytic_gradient(CrossEntropyProblem(z, labels=y, reduction="none")).grad
    summed = analytic_gradient(CrossEntropyProblem(z, labels=y, reduction="sum")).grad
    mean = analytic_gradient(CrossEntropyProblem(z, labels=y, reduction="mean")).grad
    np.testing.assert_array_equal(none, summed)
    np.testing.assert_allclose(mean, summed / 4, rtol=1e-16)


def test_jacobian_relative_accuracy_for_labels() -> None:
    # With the diagonal's 1 - p_i as a sum of the other probabilities, the chain keeps relative
    # accuracy on every element, the near one-hot target component included.
    rng = np.random.default_rng(31)
    cases = [random_problem(rng) for _ in range(100)]
    cases.append(CrossEntropyProblem(np.array([[40.0, 0.0, 0.0]]), labels=np.array([0])))
    worst = 0.0
    for problem in cases:
        ref = mpref.grad(problem.logits, dense_targets(problem), problem.reduction)
        worst = max(worst, float(np.max(rel_errors(jacobian_gradient(problem).grad, ref))))
    assert worst <= 1e-13


def test_structured_product_with_one_hot_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    problem = CrossEntropyProblem(
        rng.normal(size=(4, 9)) * 5,
        labels=np.array([0, -100, 8, 3]),
        ignore_index=-100,
        weight=rng.uniform(0.5, 2.0, 9),
    )
    materialized = jacobian_gradient(problem).grad
    monkeypatch.setattr(jac_module, "JACOBIAN_CHUNK_ELEMENTS", 50)
    np.testing.assert_allclose(jacobian_gradient(problem).grad, materialized, rtol=1e-14, atol=0)


@pytest.mark.parametrize("budget", [1 << 18, 13 * 2])  # whole slice; one row at a time
def test_differences_of_a_slice_keep_the_batch_scales(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """A slice of a mean batch (``rows_of``, carrying the whole batch's scales) is differenced
    with those scales, not renormalised over its own rows."""
    from gradcheck_cli.core import batch_scales, rows_of

    monkeypatch.setattr(differences, "FD_BLOCK_ELEMENTS", budget)
    rng = np.random.default_rng(9)
    problem = CrossEntropyProblem(rng.normal(size=(6, 13)), labels=rng.integers(0, 13, 6))
    part = rows_of(problem, slice(2, 5), batch_scales(problem), "float64")
    for method in (finite_difference_gradient, complex_step_gradient):
        np.testing.assert_allclose(
            method(part).grad, method(problem).grad[2:5], rtol=1e-12, atol=1e-15
        )
