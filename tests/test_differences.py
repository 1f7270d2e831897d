"""The shared differencing routine: exactness orders, step rules, blocks, directions."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.methods import SCHEMES, Scheme, differences

#: Highest polynomial degree each scheme differentiates exactly (its order p).
EXACT_DEGREE = {"forward": 1, "central": 2, "richardson": 4}


def polynomial(z: np.ndarray, degree: int) -> np.ndarray:
    return sum(z**j / (j + 1) for j in range(degree + 1))


def slope(z: np.ndarray, degree: int) -> np.ndarray:
    return sum(j * z ** (j - 1) / (j + 1) for j in range(1, degree + 1))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_is_exact_up_to_its_order(scheme: Scheme) -> None:
    degree = EXACT_DEGREE[scheme]
    z = np.linspace(-2.0, 3.0, 7)
    h = differences.relative_steps(z, 1e-2)  # large: truncation, not rounding, would show
    moved = differences.points(scheme, z, h)
    values = [polynomial(m, degree) for m in moved]
    got = differences.coordinate_quotient(scheme, values, moved, polynomial(z, degree), z)
    np.testing.assert_allclose(got, slope(z, degree), rtol=1e-9)
    one_more = [polynomial(m, degree + 1) for m in moved]
    off = differences.coordinate_quotient(scheme, one_more, moved, polynomial(z, degree + 1), z)
    assert np.max(np.abs(off - slope(z, degree + 1))) > 1e-9  # the next degree is not exact


@pytest.mark.parametrize("scheme", SCHEMES)
def test_directions_combine_like_coordinates(scheme: Scheme) -> None:
    # Along d the quotient of f(z + t d) with the nominal h equals that of the coordinate case.
    degree = EXACT_DEGREE[scheme]
    z, d, h = np.array([0.25]), np.array([1.0]), 0.125  # z + c h exact: no step rounding
    moved = differences.points(scheme, z, h * d)
    values = [float(polynomial(m, degree)[0]) for m in moved]
    base = float(polynomial(z, degree)[0])
    diffs = differences.pair_differences(scheme, values, base)
    got = differences.directional_quotient(scheme, diffs, h)
    assert got == pytest.approx(float(slope(z, degree)[0]), rel=1e-12)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_balanced_step_minimises_the_error_model(scheme: Scheme) -> None:
    model = (0.5, 10.0, float(np.finfo(np.float64).eps), 3.0)  # bound, roundings, eps, scale
    h = differences.balanced_step(scheme, *model)
    best = differences.difference_error(scheme, h, *model)
    for factor in (0.9, 1.1):
        assert differences.difference_error(scheme, h * factor, *model) > best


def test_automatic_step_is_the_balance_at_unit_sizes() -> None:
    eps = float(np.finfo(np.float64).eps)
    for scheme in SCHEMES:
        order = differences.ERROR_MODEL[scheme][0]
        assert differences.step_factor(scheme) == eps ** (1 / (order + 1))


def test_blocks_give_the_same_gradient_as_one_block() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=(5, 9))
    h = differences.relative_steps(z, differences.step_factor("central"))
    moved = differences.points("central", z, h)

    def evaluate(cols: np.ndarray) -> np.ndarray:  # f = sum over the row of sin: rows apart
        out = []
        for m in moved:
            batch = np.broadcast_to(z, (cols.size, *z.shape)).copy()
            batch[np.arange(cols.size), :, cols] = m[:, cols].T
            out.append(np.sum(np.sin(batch), axis=-1))
        return np.array(out)  # (P, B, N)

    whole = differences.coordinatewise("central", z, moved, evaluate, None, block=9, work=0)
    pieces = differences.coordinatewise("central", z, moved, evaluate, None, block=2, work=0)
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_allclose(whole, np.cos(z), atol=1e-9)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_balanced_step_without_rounding_is_unbounded(scheme: Scheme) -> None:
    """A forward scale of 0 (no row contributes: every sample ignored or masked) used to give a
    step of 0 and a ZeroDivisionError in difference_error (``--impl`` self-consistency of an
    all-ignored ``sum``); the step is now inf, which callers cap at 1."""
    h = min(1.0, differences.balanced_step(scheme, 1.0, 8.0, 2.0**-52, 0.0))
    assert h == 1.0
    assert differences.difference_error(scheme, h, 1.0, 8.0, 2.0**-52, 0.0) > 0.0


def test_impl_self_consistency_of_a_batch_where_nothing_contributes() -> None:
    """Every sample ignored under ``sum`` (loss 0), and ``empty_mean: zero``, through --impl
    torch in the full and the fast path: both passed through a zero step before."""
    pytest.importorskip("torch")
    import gradcheck_cli as xc
    from gradcheck_cli.spec import load_text

    text = "logits: [[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]]\nlabel: [1, 1]\nignore_index: 1\n"
    specs = [
        *load_text(text + "reduction: sum\n"),
        *load_text(text + "empty_mean: zero\nexpect: {loss: 0.0}\n"),
    ]
    for fast in (False, True):
        report = xc.check(specs, impl="torch", fast=fast)  # type: ignore[arg-type]
        assert report.passed and len(report.results) == 2, report.summary_text()
