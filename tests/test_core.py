"""The numeric core against hand-derived values and 50-digit mpmath references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradcheck_cli.core import (
    CrossEntropyProblem,
    dense_targets,
    log_softmax,
    logsumexp,
    per_sample_loss,
    reduce_loss,
    reduction_scales,
    softmax,
    softmax_jacobian,
)

import mpref

CAT_DOG_BIRD = np.array([1.0, 2.0, 0.5])


def test_cat_dog_bird_forward() -> None:
    p = softmax(CAT_DOG_BIRD)
    np.testing.assert_allclose(p, [0.2312239, 0.6285317, 0.1402444], atol=5e-8)
    problem = CrossEntropyProblem(CAT_DOG_BIRD[None, :], labels=np.array([1]))
    assert per_sample_loss(problem)[0] == pytest.approx(0.4643688, abs=5e-8)
    # Same value as -z_y + log sum_j e^{z_j}, the form the derivation uses.
    assert per_sample_loss(problem)[0] == pytest.approx(
        -2.0 + math.log(sum(math.exp(v) for v in CAT_DOG_BIRD)), rel=1e-15
    )


def test_three_class_example() -> None:
    np.testing.assert_allclose(
        softmax(np.array([2.0, 3.0, 4.0])), [0.0900306, 0.2447285, 0.6652410], atol=5e-8
    )


@pytest.mark.parametrize(
    "z",
    [
        np.array([1.0, 2.0, 0.5]),
        np.array([1000.0, -1000.0, 0.0]),
        np.array([0.0, -800.0, 1.0]),
        np.array([-3.5, 12.25, 12.25, 7.0, -40.0]),
        np.array([1e-300, -1e-300, 0.0]),
    ],
)
def test_forward_matches_mpmath(z: np.ndarray) -> None:
    ref = mpref.softmax(z)
    p = softmax(z)
    # Relative accuracy on every probability that does not underflow, tiny ones included.
    nz = ref != 0
    assert np.all(np.abs(p[nz] - ref[nz]) <= 4e-16 * ref[nz] * max(1.0, float(np.ptp(z))) + 1e-300)
    assert np.all(p[~nz] == 0)
    assert np.all(np.isfinite(log_softmax(z)))
    ref_lse = float(mpref.row_loss(z, np.eye(len(z))[0]) + mpref.mpmath.mpf(float(z[0])))
    # within 2 ulps: libm's log1p is faithfully rounded, not correctly (NumPy 2.4's log1p(2) is
    # 1 ulp below log 3)
    assert logsumexp(z) == pytest.approx(ref_lse, rel=4.5e-16, abs=1e-300)


def test_log_softmax_stays_finite_where_p_underflows() -> None:
    z = np.array([0.0, -800.0, 1.0])
    assert softmax(z)[1] == 0.0
    assert log_softmax(z)[1] == pytest.approx(-801.3132616875182, rel=1e-15)


def test_loss_where_target_probability_underflows() -> None:
    problem = CrossEntropyProblem(np.array([[0.0, -800.0, 1.0]]), labels=np.array([1]))
    assert per_sample_loss(problem)[0] == pytest.approx(801.3132616875182, rel=1e-15)


def test_extreme_logits_are_finite_and_exact() -> None:
    z = np.array([[1000.0, -1000.0, 0.0], [1000.0, -1000.0, 0.0]])
    problem = CrossEntropyProblem(z, labels=np.array([0, 2]), reduction="none")
    np.testing.assert_array_equal(per_sample_loss(problem), [0.0, 1000.0])


def test_probability_targets_match_mpmath() -> None:
    z = np.array([[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]])
    t = np.array([[0.1, 0.8, 0.1], [0.0, 0.25, 0.75]])
    problem = CrossEntropyProblem(z, targets=t, reduction="sum")
    assert reduce_loss(problem) == pytest.approx(mpref.loss(z, t, "sum"), rel=1e-15)


def test_zero_target_classes_contribute_exactly_zero() -> None:
    # log p of class 1 is about -2000; with t = 0 it must add exactly nothing (0 * -inf is nan).
    z = np.array([[1000.0, -1000.0]])
    problem = CrossEntropyProblem(z, targets=np.array([[1.0, 0.0]]))
    assert per_sample_loss(problem)[0] == 0.0


@pytest.mark.parametrize(("reduction", "expected"), [("mean", 0.25), ("sum", 1.0), ("none", 1.0)])
def test_reduction_scales(reduction: str, expected: float) -> None:
    problem = CrossEntropyProblem(
        np.zeros((4, 3)), labels=np.zeros(4, dtype=np.int64), reduction=reduction
    )  # type: ignore[arg-type]
    alpha, beta = reduction_scales(problem)
    np.testing.assert_array_equal(alpha, np.full(4, expected))
    np.testing.assert_array_equal(beta, np.full(4, expected))


def test_reduce_loss() -> None:
    z = np.array([[0.5, -1.5, 2.0, 0.0], [3.0, 1.0, -2.0, 1.0]])
    labels = np.array([2, 1])
    t = mpref.onehot(labels, 4)
    for reduction in ("mean", "sum", "none"):
        problem = CrossEntropyProblem(z, labels=labels, reduction=reduction)  # type: ignore[arg-type]
        got = reduce_loss(problem)
        np.testing.assert_allclose(got, mpref.loss(z, t, reduction), rtol=4e-16)


def test_dense_targets_one_hot() -> None:
    problem = CrossEntropyProblem(np.zeros((3, 4)), labels=np.array([3, 0, 1]))
    np.testing.assert_array_equal(dense_targets(problem), np.eye(4)[[3, 0, 1]])


def test_softmax_jacobian_structure() -> None:
    p = softmax(CAT_DOG_BIRD)
    jac = softmax_jacobian(p)
    np.testing.assert_array_equal(jac, jac.T)
    np.testing.assert_allclose(np.diag(jac), p * (1 - p), rtol=1e-15)
    assert jac[0, 1] == -p[0] * p[1]
    np.testing.assert_allclose(jac.sum(axis=1), 0.0, atol=1e-16)
    # Hand values for the worked example.
    np.testing.assert_allclose(jac[1], [-0.14533155, 0.2334796, -0.088148043], atol=1e-8)


def test_softmax_jacobian_batched_shape() -> None:
    p = softmax(np.arange(12.0).reshape(4, 3))
    assert softmax_jacobian(p).shape == (4, 3, 3)


def test_problem_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        CrossEntropyProblem(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="shape"):
        CrossEntropyProblem(np.zeros(2), labels=np.array([0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        CrossEntropyProblem(np.zeros((2, 2)), labels=np.array([0]))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyProblem(np.zeros((1, 2)), labels=np.array([0]), reduction="avg")  # type: ignore[arg-type]


def test_small_loss_keeps_relative_accuracy() -> None:
    # logsumexp(z) - z_y would round to 0 here; the rearranged form keeps every digit.
    problem = CrossEntropyProblem(np.array([[40.0, 0.0, 0.0]]), labels=np.array([0]))
    ref = float(mpref.row_loss(np.array([40.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])))
    assert ref == pytest.approx(8.4967085e-18, rel=1e-7)
    assert per_sample_loss(problem)[0] == pytest.approx(ref, rel=4e-16)


def test_loss_relative_accuracy_on_random_rows() -> None:
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(200):
        k = int(rng.integers(1, 40))
        z = rng.normal(size=(1, k)) * rng.uniform(0.1, 12)
        y = rng.integers(0, k, 1)
        got = per_sample_loss(CrossEntropyProblem(z, labels=y))[0]
        ref = float(mpref.row_loss(z[0], mpref.onehot(y, k)[0]))
        if ref != 0:
            worst = max(worst, abs(got - ref) / ref)
        else:
            assert got == 0
    # A few ulps: the rounding of z_j - m (relative) grows with |z_j - m|, up to ~50 here.
    assert worst <= 4e-15


def test_one_minus_keeps_relative_accuracy() -> None:
    from gradcheck_cli.core.softmax import one_minus

    z = np.array([[40.0, 0.0, 0.0], [1.0, 2.0, 0.5]])
    p = softmax(z)
    assert 1.0 - p[0, 0] == 0.0  # the naive form loses everything
    ref = 1.0 - mpref.softmax(z)  # float64 rounding of the reference is fine for entries ~1
    ref[0, 0] = 2 * float(mpref.mpmath.exp(-40) / (1 + 2 * mpref.mpmath.exp(-40)))
    np.testing.assert_allclose(one_minus(p), ref, rtol=1e-15)
