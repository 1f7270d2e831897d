"""Invariant checks: they pass on correct inputs and fail on broken ones."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli import checks
from gradcheck_cli.core import CrossEntropyProblem, reduce_loss, softmax
from gradcheck_cli.model import Expect


def test_probs_sum_to_one() -> None:
    p = softmax(np.random.default_rng(0).normal(size=(5, 30)) * 10)
    assert checks.probs_sum_to_one(p).passed
    bad = p.copy()
    bad[2, 3] += 1e-12
    check = checks.probs_sum_to_one(bad)
    assert not check.passed
    assert check.detail.startswith("max |sum(p) - 1| = 1e-12")


def test_grad_rows_sum_to_zero_detects_a_perturbed_row() -> None:
    p = softmax(np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]]))
    t = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    w = np.array([0.5, 0.5])
    g = (p - t) * w[:, None]
    assert checks.grad_rows_sum_to_zero(g, t.sum(axis=-1), w).passed
    g[1, 1] += 1e-9
    assert not checks.grad_rows_sum_to_zero(g, t.sum(axis=-1), w).passed


def test_jacobian_properties() -> None:
    p = softmax(np.random.default_rng(1).normal(size=(3, 8)))
    check = checks.jacobian_properties(p)
    assert check.passed, check.detail
    assert "max |J - J^T| = 0" in check.detail


def test_jacobian_properties_catch_broken_jacobians(monkeypatch: pytest.MonkeyPatch) -> None:
    p = softmax(np.random.default_rng(1).normal(size=(3, 8)))

    def naive_with_bad_probs(q: np.ndarray) -> np.ndarray:
        # diag(q) - q q^T with probabilities off by 0.1%: rows sum to q_i (1 - sum q) != 0.
        q = q * 1.001
        return np.einsum("bi,ij->bij", q, np.eye(q.shape[-1])) - q[:, :, None] * q[:, None, :]

    monkeypatch.setattr(checks, "softmax_jacobian", naive_with_bad_probs)
    assert not checks.jacobian_properties(p).passed

    def asymmetric(q: np.ndarray) -> np.ndarray:
        jac = np.einsum("bi,ij->bij", q, np.eye(q.shape[-1])) - q[:, :, None] * q[:, None, :]
        jac[:, 0, 1] += 1e-17
        jac[:, 0, 0] -= 1e-17
        return jac

    monkeypatch.setattr(checks, "softmax_jacobian", asymmetric)
    check = checks.jacobian_properties(p)
    assert not check.passed and check.detail.startswith("max |J - J^T| = 1.04e-17")


def test_shift_invariance() -> None:
    problem = CrossEntropyProblem(np.array([[1.0, 2.0, 0.5]]), labels=np.array([1]))
    loss = reduce_loss(problem)
    check = checks.shift_invariance(problem, loss)
    assert check.passed, check.detail
    assert not checks.shift_invariance(problem, loss + 1e-9).passed


def test_expectations_report_the_worst_element() -> None:
    probs = np.array([0.2312239, 0.6285317, 0.1402444])
    expect = Expect(loss=0.462, probs=np.array([0.23, 0.63, 0.14]), atol=0.005, rtol=0.0)
    found = checks.expectations(expect, 0.4643688, probs, None)
    assert [c.name for c in found] == ["expect.loss", "expect.probs"]
    assert all(c.passed for c in found)
    assert found[1].detail == ("[1] 0.6285317 vs expected 0.63: |Δ| = 0.00147, allowed 0.005")
    strict = Expect(loss=0.462, atol=1e-4, rtol=0.0)
    (loss_check,) = checks.expectations(strict, 0.4643688, probs, None)
    assert not loss_check.passed
    assert loss_check.detail == "0.4643688 vs expected 0.462: |Δ| = 0.00237, allowed 0.0001"


def test_expectation_of_nan_fails() -> None:
    (check,) = checks.expectations(Expect(loss=1.0), float("nan"), np.zeros(2), None)
    assert not check.passed


def test_expecting_nan_or_inf_matches_exactly() -> None:
    (check,) = checks.expectations(Expect(loss=float("nan")), float("nan"), np.zeros(2), None)
    assert check.passed
    (check,) = checks.expectations(Expect(loss=float("inf")), float("inf"), np.zeros(2), None)
    assert check.passed
    (check,) = checks.expectations(Expect(loss=float("nan")), 1.0, np.zeros(2), None)
    assert not check.passed
