"""Complex step, finite-difference schemes, the exact reference, dtypes and the step sweep.

Accuracy targets (float64, seeded random logits of scale up to 12, K up to 40, against the
50-digit references of ``mpref``), with margins: analytic <= 1e-13 relative (labels), exact <=
1e-15 relative, jacobian and complex step <= 1e-14 absolute, central differences <= 1e-8
absolute, Richardson clearly better than central.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app
from gradcheck_cli.core import CrossEntropyProblem, SigmoidProblem, dense_targets
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.methods import METHODS, MethodSettings, NotComputable
from gradcheck_cli.methods import exact as exact_module
from gradcheck_cli.methods.finite_difference import fd_gradient, step_factor
from gradcheck_cli.model import Spec
from gradcheck_cli.precision import DTYPE_TOLERANCES, predicted_error
from gradcheck_cli.sweep import STEPS, sweep, taylor_test

import mpref

DEFAULT = MethodSettings()


def suite(seed: int, count: int = 80) -> list[CrossEntropyProblem]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n, k = int(rng.integers(1, 4)), int(rng.integers(2, 41))
        z = rng.normal(size=(n, k)) * rng.uniform(0.1, 12.0) + rng.normal() * 5
        red = str(rng.choice(["mean", "sum", "none"]))
        out.append(CrossEntropyProblem(z, labels=rng.integers(0, k, n), reduction=red))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def references() -> list[tuple[CrossEntropyProblem, np.ndarray]]:
    return [(p, mpref.grad(p.logits, dense_targets(p), p.reduction)) for p in suite(5)]


def worst(
    method: str,
    refs: list[tuple[CrossEntropyProblem, np.ndarray]],
    settings: MethodSettings = DEFAULT,
) -> tuple[float, float]:
    rel = ab = 0.0
    for problem, ref in refs:
        g = METHODS[method](problem, settings).grad
        diff = np.where(g == ref, 0.0, np.abs(g - ref))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(diff == 0, 0.0, diff / np.abs(ref))
        rel, ab = max(rel, float(np.max(r))), max(ab, float(np.max(diff)))
    return rel, ab


def test_accuracy_targets(references: list[tuple[CrossEntropyProblem, np.ndarray]]) -> None:
    assert worst("analytic", references)[0] <= 1e-13
    assert worst("exact", references)[0] <= 1e-15
    assert worst("jacobian", references)[1] <= 1e-14
    assert worst("complex_step", references)[1] <= 1e-14
    central = worst("finite_difference", references)[1]
    richardson = worst("finite_difference", references, MethodSettings(fd_scheme="richardson"))[1]
    forward = worst("finite_difference", references, MethodSettings(fd_scheme="forward"))[1]
    assert central <= 1e-8
    assert richardson <= central / 5
    assert forward <= 1e-6


def test_complex_step_recovers_tiny_components() -> None:
    problem = CrossEntropyProblem(np.array([[40.0, 0.0, 0.0]]), labels=np.array([0]))
    g = METHODS["complex_step"](problem, DEFAULT).grad[0]
    np.testing.assert_allclose(
        g, [-8.4967085105831779e-18, 4.248354255291589e-18, 4.248354255291589e-18], rtol=1e-15
    )


def test_complex_step_on_every_option() -> None:
    rng = np.random.default_rng(9)
    for _ in range(30):
        n, k = 3, 5
        z = rng.normal(size=(n, k)) * 3
        problem = CrossEntropyProblem(
            z,
            labels=np.array([0, -100, 4]),
            ignore_index=-100,
            weight=rng.uniform(0.5, 2.0, k),
            label_smoothing=0.1,
            softcap=4.0,
            z_loss=0.01,
            reduction="mean",
        )
        np.testing.assert_allclose(
            METHODS["complex_step"](problem, DEFAULT).grad,
            METHODS["exact"](problem, DEFAULT).grad,
            rtol=1e-13,
            atol=1e-16,
        )
        sig = SigmoidProblem(
            z, rng.uniform(size=(n, k)), "sum", pos_weight=rng.uniform(0.5, 2.0, k)
        )
        np.testing.assert_allclose(
            METHODS["complex_step"](sig, DEFAULT).grad,
            METHODS["exact"](sig, DEFAULT).grad,
            rtol=1e-13,
            atol=1e-16,
        )


def test_exact_declines_above_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact_module, "EXACT_MAX_ELEMENTS", 5)
    problem = CrossEntropyProblem(np.zeros((2, 3)), labels=np.array([0, 1]))
    with pytest.raises(NotComputable, match="6 elements is above the limit of 5"):
        METHODS["exact"](problem, DEFAULT)


def test_reference_is_exact_when_computed_else_analytic() -> None:
    spec = Spec(
        name="s",
        file="s.yaml",
        logits=np.array([[1.0, 2.0, 0.5]]),
        single=True,
        labels=np.array([1]),
    )
    assert run_spec(spec).reference == "exact"
    without = run_spec(spec, RunOptions(methods=("jacobian", "finite_difference")))
    assert without.reference == "analytic"
    assert "exact" not in without.gradients


def test_step_factors_follow_the_dtype() -> None:
    assert step_factor("central") == pytest.approx(6.0554544523933395e-06)
    assert step_factor("forward") == pytest.approx(1.4901161193847656e-08)
    assert step_factor("richardson") == pytest.approx(np.finfo(np.float64).eps ** 0.2)
    assert step_factor("central", np.float16) == pytest.approx(0.0992, rel=1e-3)


def test_float16_step_is_not_below_the_spacing() -> None:
    # A fixed 1e-4 step is below float16's spacing near 1 (9.8e-4): z + h == z and the
    # difference quotient is 0/0 (the jax bug); the dtype-scaled step resolves the gradient.
    z = np.array([[1.0, 2.0, 0.5]], dtype=np.float16)
    problem = CrossEntropyProblem(z, labels=np.array([1]))
    with pytest.raises(NotComputable, match="below the spacing of float16"):
        fd_gradient(problem, "central", 1e-4)
    g = METHODS["finite_difference"](problem, DEFAULT).grad.astype(np.float64)
    np.testing.assert_allclose(g[0], [0.2312239, -0.3714683, 0.1402444], atol=0.02)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dtype_runs_meet_their_table(dtype: str) -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        z = rng.normal(size=(3, 8)) * 4
        spec = Spec(
            name="d",
            file="d.yaml",
            logits=z,
            single=False,
            labels=rng.integers(0, 8, 3),
            dtype=dtype,
        )  # type: ignore[arg-type]
        r = run_spec(spec)
        assert r.status == "pass", [c for c in r.comparisons if not c.passed]
        analytic = next(c for c in r.comparisons if c.method == "analytic")
        assert analytic.dtype == dtype and analytic.reference == "exact"
        assert analytic.predicted is not None and analytic.max_abs_error <= analytic.predicted
        assert any(c.name == f"loss_{dtype}" and c.passed for c in r.checks)
    assert DTYPE_TOLERANCES["float32"]["analytic"].rtol < 2e-3  # tighter than jax's float32


def test_float16_has_no_complex_step() -> None:
    spec = Spec(
        name="d",
        file="d.yaml",
        logits=np.array([[1.0, 2.0]]),
        single=False,
        labels=np.array([0]),
        dtype="float16",
    )
    r = run_spec(spec)
    assert "no float16 complex" in r.not_computable["complex_step"]


def test_predicted_error_bounds_the_observed_error(
    references: list[tuple[CrossEntropyProblem, np.ndarray]],
) -> None:
    for problem, ref in references:
        for scheme in ("forward", "central", "richardson"):
            settings = MethodSettings(fd_scheme=scheme)  # type: ignore[arg-type]
            g = METHODS["finite_difference"](problem, settings).grad
            bound = predicted_error("finite_difference", problem, ref, scheme=scheme)  # type: ignore[arg-type]
            assert bound is not None and float(np.max(np.abs(g - ref))) <= bound


def test_sweep_shows_the_v_and_a_flat_complex_step() -> None:
    z = np.array([[2.0, 1.0, 0.1, -1.2, 0.5], [-0.3, 2.2, 1.7, 0.0, -2.0]])
    problem = CrossEntropyProblem(z, labels=np.array([0, 2]))
    result = sweep(problem, "s", "s.yaml")
    assert result.reference == "exact"
    central = result.errors["central"]
    best = STEPS.index(result.best_step["central"])  # type: ignore[arg-type]
    assert 3 <= best <= 6  # around eps^(1/3) ~ 6e-6
    assert central[0] > central[best] * 1e3 and central[-3] > central[best] * 1e3  # type: ignore[operator]
    tiny = [e for h, e in zip(STEPS, result.errors["complex_step"], strict=True) if h <= 1e-8]
    assert all(e is not None and e <= 1e-15 for e in tiny)
    assert result.taylor.slope is not None and abs(result.taylor.slope - 2.0) < 0.1
    assert result.taylor.verdict.startswith("gradient consistent")


def test_taylor_test_catches_a_wrong_gradient() -> None:
    z = np.array([[2.0, 1.0, 0.1, -1.2, 0.5]])
    problem = CrossEntropyProblem(z, labels=np.array([0]))
    good = METHODS["analytic"](problem, DEFAULT).grad
    wrong = good.copy()
    wrong[0, 1] *= 1.05  # a 5% error in one component
    result = taylor_test(problem, wrong)
    assert result.slope is not None and abs(result.slope - 1.0) < 0.2
    assert result.verdict.startswith("gradient WRONG")


def test_sweep_command_json(specs_dir: object) -> None:
    result = CliRunner().invoke(app, ["sweep", "specs/batch_mean.yaml", "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    doc = json.loads(result.stdout)
    assert set(doc) >= {"steps", "errors", "best_step", "taylor"}
    assert set(doc["errors"]) == {"forward", "central", "richardson", "complex_step"}
    assert len(doc["steps"]) == 16 and doc["taylor"]["slope"] == pytest.approx(2.0, abs=0.1)


def test_sweep_command_table_and_errors(tmp_path: object) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["sweep", "specs/cat_dog_bird.yaml"])
    assert out.exit_code == 0, out.output
    assert "errors against exact" in out.stdout and "log10 h" in out.stdout
    missing = runner.invoke(app, ["sweep", "nope.yaml"])
    assert missing.exit_code == 2 and missing.stderr == "error: nope.yaml: no such file\n"
    case = runner.invoke(app, ["sweep", "specs/reductions.yaml", "--case", "nope"])
    assert case.exit_code == 2
    assert "no case named 'nope'" in case.stderr and "reduction-mean" in case.stderr


def test_sweep_goes_directional_above_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large spec is swept along seeded random directions (run's fast-mode budget), with the
    same V of truncation against rounding, progress reported, and --full forcing elements."""
    import gradcheck_cli.sweep as sweep_module
    from gradcheck_cli.core import CrossEntropyProblem

    rng = np.random.default_rng(5)
    problem = CrossEntropyProblem(rng.normal(size=(6, 40)) * 2, labels=rng.integers(0, 40, 6))
    calls: list[tuple[int, int]] = []
    small = sweep(problem, "s", "s.yaml", progress=lambda d, t: calls.append((d, t)))
    assert "mode" not in small.notes and calls[-1] == (len(STEPS) * 4, len(STEPS) * 4)
    monkeypatch.setattr(sweep_module, "SWEEP_BUDGET", 10.0)
    large = sweep(problem, "s", "s.yaml")
    assert "directional sweep" in large.notes["mode"]
    central = large.errors["central"]
    best = STEPS.index(large.best_step["central"])
    assert 2 <= best <= 7  # the bottom of the V between h = 1e-3 and 1e-8
    assert central[best] is not None and central[best] < 1e-9
    assert central[0] is not None and central[0] > 1e-6  # truncation at h = 0.1
    assert large.errors["complex_step"][10] is not None and large.errors["complex_step"][10] < 1e-15
    forced = sweep(problem, "s", "s.yaml", directional=False)
    assert "mode" not in forced.notes
