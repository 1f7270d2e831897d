"""Error metrics and the pass rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradcheck_cli.compare import (
    DEFAULT_TOLERANCES,
    Tolerance,
    compare,
    default_tolerance,
    elementwise_errors,
)


def test_elementwise_errors_conventions() -> None:
    a = np.array([1.0, 0.0, 1e-20, 2.0, math.inf])
    b = np.array([1.0, 0.0, 0.0, 1.0, math.inf])
    abs_err, rel = elementwise_errors(a, b)
    np.testing.assert_array_equal(abs_err, [0.0, 0.0, 1e-20, 1.0, 0.0])
    np.testing.assert_array_equal(rel, [0.0, 0.0, math.inf, 1.0, 0.0])


def test_pass_rule_is_atol_plus_rtol_times_reference() -> None:
    ref = np.array([1.0, -2.0])
    tol = Tolerance(rtol=0.1, atol=0.05)
    assert compare("m", np.array([1.15, -2.0]), "r", ref, tol).passed  # 0.15 <= 0.05 + 0.1
    c = compare("m", np.array([1.1500001, -2.0]), "r", ref, tol)
    assert not c.passed and c.failed_elements == 1


def test_worst_element_is_the_one_closest_to_breaking() -> None:
    # Element 0 has the largest absolute error, but element 1 is relatively much worse.
    ref = np.array([[100.0, 1e-3], [1.0, 1.0]])
    got = ref + np.array([[1e-6, 1e-7], [0.0, 0.0]])
    c = compare("m", got, "r", ref, Tolerance(rtol=1e-8, atol=1e-12))
    assert c.worst_index == (0, 1)
    assert c.value == got[0, 1] and c.reference_value == ref[0, 1]
    assert c.max_abs_error == pytest.approx(1e-6)
    assert c.max_rel_error == pytest.approx(1e-4)
    assert c.failed_elements == 1  # 1e-6 on 100 is within rtol 1e-8 (allowed 1.000001e-6)


def test_nan_never_passes() -> None:
    c = compare("m", np.array([math.nan, 1.0]), "r", np.array([1.0, 1.0]), Tolerance(1.0, 1.0))
    assert not c.passed
    assert c.worst_index == (0,)
    assert math.isnan(c.max_abs_error)


def test_exact_match_reports_zero_errors() -> None:
    x = np.array([0.5, -0.25])
    c = compare("m", x, "r", x.copy(), Tolerance(0.0, 0.0))
    assert c.passed and c.max_abs_error == 0 and c.max_rel_error == 0


def test_shape_mismatch_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        compare("m", np.zeros(2), "r", np.zeros(3), Tolerance(0, 0))


def test_defaults() -> None:
    assert default_tolerance("jacobian") == DEFAULT_TOLERANCES["jacobian"]
    assert default_tolerance("finite_difference").atol == 1e-6
    # Unknown methods fall back to something tight, never to "anything goes".
    assert default_tolerance("something_else").rtol <= 1e-9


def test_heat_map_of_a_batch_holds_each_elements_tolerance_ratio() -> None:
    ref = np.array([[1.0, -2.0, 0.5], [0.0, 4.0, 1.0]])
    got = ref + np.array([[0.0, 1e-3, 0.0], [1e-9, 0.0, np.nan]])
    c = compare("m", got, "r", ref, Tolerance(rtol=1e-4, atol=1e-8))
    assert c.heat is not None and c.heat.block == (1, 1) and c.heat.shape == (2, 3)
    np.testing.assert_allclose(
        c.heat.ratio, [[0.0, 1e-3 / (1e-8 + 2e-4), 0.0], [0.1, 0.0, math.inf]]
    )
    assert c.heat.cell(c.worst_index) == (1, 2)
    # a single sample, and a batch of one row, have none
    assert compare("m", got[0], "r", ref[0], Tolerance(1e-4, 1e-8)).heat is None
    assert compare("m", got[:1], "r", ref[:1], Tolerance(1e-4, 1e-8)).heat is None
