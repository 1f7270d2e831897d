"""Running specs end to end (without YAML): results, tolerance precedence, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.compare import default_tolerance
from gradcheck_cli.engine import RunOptions, jacobian_view, resolve_tolerance, run_spec
from gradcheck_cli.model import Expect, Layer, Spec, ToleranceOverride


def cat_dog_bird(**kw: object) -> Spec:
    args: dict[str, object] = dict(
        name="cdb",
        file="x.yaml",
        logits=np.array([[1.0, 2.0, 0.5]]),
        single=True,
        labels=np.array([1]),
        classes=("cat", "dog", "bird"),
    )
    args.update(kw)
    return Spec(**args)  # type: ignore[arg-type]


def test_worked_example_result() -> None:
    r = run_spec(cat_dog_bird())
    assert r.status == "pass"
    assert r.shape == (3,)
    assert r.loss == pytest.approx(0.4643688, abs=5e-8)
    assert r.probs is not None
    np.testing.assert_allclose(r.probs, [0.2312239, 0.6285317, 0.1402444], atol=5e-8)
    assert list(r.gradients) == [
        "analytic",
        "jacobian",
        "finite_difference",
        "complex_step",
        "exact",
    ]
    for g in r.gradients.values():
        assert g is not None
        np.testing.assert_allclose(g, [0.2312239, -0.3714683, 0.1402444], atol=5e-8)
    # exact is computed, so it is the reference of every other method.
    assert r.reference == "exact"
    assert [c.method for c in r.comparisons] == [
        "analytic",
        "jacobian",
        "finite_difference",
        "complex_step",
    ]
    assert all(c.reference == "exact" for c in r.comparisons)
    assert all(c.predicted is not None and c.max_abs_error <= c.predicted for c in r.comparisons)
    assert [c.name for c in r.checks] == [
        "probs_sum_to_one",
        "grad_rows_sum_to_zero",
        "jacobian_symmetric_rows_sum_to_zero",
        "shift_invariance",
    ]


def test_reference_is_always_computed() -> None:
    r = run_spec(cat_dog_bird(methods=("finite_difference",)))
    assert list(r.gradients) == ["analytic", "finite_difference"]
    assert [c.method for c in r.comparisons] == ["finite_difference"]


def test_command_line_methods_override_the_spec() -> None:
    r = run_spec(cat_dog_bird(methods=("finite_difference",)), RunOptions(methods=("jacobian",)))
    assert list(r.gradients) == ["analytic", "jacobian"]


def test_tolerance_precedence() -> None:
    spec = cat_dog_bird(
        tolerance=ToleranceOverride(rtol=1e-3, atol=None),
        method_tolerances={"jacobian": ToleranceOverride(atol=1e-4)},
    )
    fd_default = default_tolerance("finite_difference")
    assert resolve_tolerance(spec, "finite_difference", RunOptions()).atol == fd_default.atol
    assert resolve_tolerance(spec, "finite_difference", RunOptions()).rtol == 1e-3
    jac = resolve_tolerance(spec, "jacobian", RunOptions())
    assert (jac.rtol, jac.atol) == (1e-3, 1e-4)
    cli = resolve_tolerance(spec, "jacobian", RunOptions(atol=0.5))
    assert (cli.rtol, cli.atol) == (1e-3, 0.5)


def test_impossible_tolerance_fails_the_spec() -> None:
    # Finite differences are not exact: with zero tolerance the comparison must fail.
    r = run_spec(cat_dog_bird(), RunOptions(rtol=0.0, atol=0.0))
    assert r.status == "fail"
    fd = next(c for c in r.comparisons if c.method == "finite_difference")
    assert not fd.passed and fd.failed_elements >= 1


def test_failed_expectation_fails_the_spec() -> None:
    r = run_spec(cat_dog_bird(expect=Expect(loss=0.462, atol=1e-4, rtol=0.0)))
    assert r.status == "fail"
    (check,) = [c for c in r.checks if c.name == "expect.loss"]
    assert not check.passed


def test_not_computable_method_does_not_fail_the_spec() -> None:
    spec = cat_dog_bird(logits=np.array([[0.0, -800.0, 1.0]]), classes=None)
    r = run_spec(spec)
    assert r.status == "pass"
    assert r.gradients["jacobian"] is None
    assert "underflows to 0" in r.not_computable["jacobian"]
    assert r.loss == pytest.approx(801.3132616875182, rel=1e-15)


def test_batch_shapes_and_reduction_none() -> None:
    z = np.array([[0.5, -1.5, 2.0, 0.0], [3.0, 1.0, -2.0, 1.0]])
    spec = Spec(
        name="b", file="b.yaml", logits=z, single=False, labels=np.array([2, 1]), reduction="none"
    )
    r = run_spec(spec)
    assert r.status == "pass"
    assert r.shape == (2, 4)
    assert isinstance(r.loss, np.ndarray) and r.loss.shape == (2,)
    for g in r.gradients.values():
        assert g is not None and g.shape == (2, 4)
    assert all(len(c.worst_index) == 2 for c in r.comparisons)


def test_jacobian_view_with_label() -> None:
    v = jacobian_view(np.array([1.0, 2.0, 0.5]), 1, ("cat", "dog", "bird"))
    assert v.symmetric and v.rows_sum_to_zero
    assert v.loss == pytest.approx(0.4643688, abs=5e-8)
    assert v.dl_dp is not None and v.dl_dp[1] == pytest.approx(-1 / 0.6285317192117624)
    assert v.chain is not None and v.closed_form is not None
    np.testing.assert_allclose(v.chain, v.closed_form, atol=1e-16)


def test_jacobian_view_underflow() -> None:
    v = jacobian_view(np.array([0.0, -800.0, 1.0]), 1)
    assert v.chain is None and v.chain_note is not None
    assert v.dl_dp is not None and v.dl_dp[1] == -np.inf


def batch_spec(**kw: object) -> Spec:
    args: dict[str, object] = dict(
        name="b",
        file="b.yaml",
        logits=np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]]),
        single=False,
        labels=np.array([1, 1]),
    )
    args.update(kw)
    return Spec(**args)  # type: ignore[arg-type]


def test_all_ignored_mean_fails_unless_nan_is_expected() -> None:
    r = run_spec(batch_spec(ignore_index=1))
    assert r.status == "fail"
    assert isinstance(r.loss, float) and np.isnan(r.loss)
    assert r.loss_note is not None and "every sample is ignored" in r.loss_note
    (check,) = [c for c in r.checks if c.name == "loss_is_finite"]
    assert not check.passed
    for g in r.gradients.values():
        assert g is not None
        np.testing.assert_array_equal(g, 0.0)
    expected = run_spec(batch_spec(ignore_index=1, expect=Expect(loss=float("nan"))))
    assert expected.status == "pass"


def test_infinite_loss_is_reported_with_reason() -> None:
    r = run_spec(batch_spec(logits=np.array([[1.0, -np.inf, 0.5], [0.0, 1.0, 3.0]])))
    assert r.status == "fail"
    assert r.loss == np.inf
    assert r.loss_note is not None and "logit -inf" in r.loss_note
    assert r.gradients["jacobian"] is None and r.gradients["finite_difference"] is None
    assert set(r.not_computable) == {"jacobian", "finite_difference", "complex_step"}


def test_checks_that_do_not_hold_are_not_run() -> None:
    names = {c.name for c in run_spec(batch_spec(softcap=3.0, z_loss=0.1)).checks}
    assert "grad_rows_sum_to_zero" not in names and "shift_invariance" not in names
    assert "probs_sum_to_one" in names


def test_binary_equivalence_check_for_two_classes() -> None:
    r = run_spec(
        batch_spec(
            logits=np.array([[0.0, 2.5], [30.0, -30.0]]),
            labels=np.array([1, 0]),
            weight=np.array([2.0, 0.5]),
            label_smoothing=0.1,
        )
    )
    (check,) = [c for c in r.checks if c.name == "binary_equivalence"]
    assert check.passed, check.detail


def test_sigmoid_spec() -> None:
    spec = Spec(
        name="s",
        file="s.yaml",
        logits=np.array([[1.0, -2.0, 0.5]]),
        single=True,
        targets=np.array([[1.0, 0.0, 0.5]]),
        loss="sigmoid_cross_entropy",
        reduction="none",
    )
    r = run_spec(spec)
    assert r.status == "pass"
    assert isinstance(r.loss, np.ndarray) and r.loss.shape == (3,)
    assert [c.name for c in r.checks] == ["label_flip_symmetry"]
    assert r.probs is not None
    np.testing.assert_allclose(r.probs, 1 / (1 + np.exp(-np.array([1.0, -2.0, 0.5]))), rtol=1e-15)


def test_layer_parameter_gradients_in_the_weights_layout() -> None:
    x = np.array([[0.1, 0.5, 0.4]])
    w = np.array(
        [[0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 0.1], [0.11, 0.12, 0.13, 0.14, 0.15]]
    )
    layer = Layer(x, w)
    spec = Spec(
        name="l",
        file="l.yaml",
        logits=layer.logits(),
        single=True,
        labels=np.array([2]),
        layer=layer,
    )
    r = run_spec(spec)
    assert r.status == "pass"
    assert r.loss == pytest.approx(1.5279347484961026, rel=1e-15)
    assert set(r.parameter_gradients) == {"weights", "inputs"}
    dw = r.parameter_gradients["weights"]["analytic"]
    assert dw is not None and dw.shape == (3, 5)
    p = np.array([0.19091352, 0.20353145, 0.21698333, 0.23132428, 0.15724743])
    np.testing.assert_allclose(dw, np.outer(x[0], p - np.eye(5)[2]), atol=1e-8)
    dx = r.parameter_gradients["inputs"]["finite_difference"]
    assert dx is not None and dx.shape == (3,)
    quantities = {(c.quantity, c.method) for c in r.comparisons}
    logits_methods = ("analytic", "jacobian", "finite_difference", "complex_step")
    assert quantities == {("logits", m) for m in logits_methods} | {
        (q, m) for q in ("weights", "inputs") for m in ("jacobian", "finite_difference")
    }
    assert all(c.passed for c in r.comparisons)
