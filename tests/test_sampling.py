"""Sampled coordinates (methods.differences.sample_columns, fastmode.route): above the
element-wise budget the differencing methods evaluate each row's label and largest logits and
seeded random classes, are compared there, and say so; --full checks every element."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli import fastmode
from gradcheck_cli.checks import jacobian_properties
from gradcheck_cli.cli import app
from gradcheck_cli.core import CrossEntropyProblem, softmax
from gradcheck_cli.methods.complex_step import complex_step
from gradcheck_cli.methods.differences import SAMPLE_TOP, sample_columns, step_factor
from gradcheck_cli.methods.finite_difference import fd_gradient

runner = CliRunner()


def test_a_sample_holds_every_label_and_top_logit_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 3000))
    labels = rng.integers(0, 3000, 5)
    labels[2] = -100  # ignored: not a class
    cols = sample_columns(z, labels, 40)
    assert np.all(np.diff(cols) > 0)  # sorted, unique
    assert set(labels[labels >= 0]) <= set(cols.tolist())
    for row in z:
        assert set(np.argsort(row)[-SAMPLE_TOP:].tolist()) <= set(cols.tolist())
    assert 40 < cols.size <= 40 + 4 + 5 * SAMPLE_TOP
    np.testing.assert_array_equal(cols, sample_columns(z, labels, 40))  # the same every run
    np.testing.assert_array_equal(sample_columns(z[:, :30], None, 40), np.arange(30))  # all K


def test_sampled_differences_equal_the_full_ones_at_their_classes() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=(3, 200)) * 4
    z[1, 7] = -np.inf
    problem = CrossEntropyProblem(z, labels=np.array([5, 7 + 1, 199]), z_loss=1e-3)
    cols = np.array([0, 5, 7, 8, 150, 199])
    for full, part in (
        (fd_gradient(problem, "central", step_factor("central")),
         fd_gradient(problem, "central", step_factor("central"), cols)),
        (complex_step(problem, 1e-20), complex_step(problem, 1e-20, cols)),
    ):  # fmt: skip
        np.testing.assert_array_equal(part[:, cols], full[:, cols])
        others = np.setdiff1d(np.arange(200), cols)
        assert np.all(np.isnan(part[:, others]))
        assert part[1, 7] == 0.0  # a -inf logit's derivative, sampled


@pytest.mark.parametrize(
    ("n", "k", "way"),
    [(1, 3, "full"), (32, 1000, "full"), (8, 50000, "sampled"), (32, 10000, "sampled"),
     (256, 10000, "fast"), (4096, 32000, "fast")],
)  # fmt: skip
def test_route(n: int, k: int, way: str) -> None:
    assert fastmode.route(n, k, 64) == way


def _spec(tmp_path: Path, n: int, k: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.save(tmp_path / "z.npy", rng.normal(size=(n, k)) * 3)
    np.save(tmp_path / "y.npy", rng.integers(0, k, n))
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\nlogits: {file: z.npy}\nlabel: {file: y.npy}\n")
    return spec


def _methods(output: str) -> dict[str, dict]:  # type: ignore[type-arg]
    report, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])
    (spec,) = report["results"]
    return {c["method"]: c for c in spec["comparisons"]}


def test_a_large_vocabulary_is_sampled_automatically_and_says_so(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 4, 20000)  # N K^2 = 1.6e9: above the element-wise budget
    result = runner.invoke(app, ["run", str(spec), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "sampled at" in result.output and "of 20000 classes" in result.output  # stderr
    rows = _methods(result.output)
    assert {"jacobian", "finite_difference", "complex_step"} <= set(rows)
    y = np.load(tmp_path / "y.npy")
    for name in ("finite_difference", "complex_step"):
        assert rows[name]["passed"]
        assert rows[name]["worst_index"][1] in sample_columns(np.load(tmp_path / "z.npy"), y)


def test_a_forced_sample_and_full(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 3, 300)
    sampled = runner.invoke(app, ["run", str(spec), "--sample", "5", "--format", "json"])
    assert sampled.exit_code == 0, sampled.output
    assert "sampled at" in sampled.output
    whole = runner.invoke(app, ["run", str(spec), "--format", "json"])
    assert "sampled at" not in whole.output
    clash = runner.invoke(app, ["run", str(spec), "--sample", "5", "--full"])
    assert clash.exit_code == 2 and "--sample excludes --full" in clash.output


def test_a_wrong_reference_at_a_sampled_class_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted bug in the closed form at every row's label: the sample always holds the
    labels, so the differencing methods catch it."""
    from gradcheck_cli.methods import analytic

    real = analytic.analytic_gradient

    def broken(problem, settings=None):  # type: ignore[no-untyped-def]
        out = real(problem) if settings is None else real(problem, settings)
        g = out.grad.copy()
        g[np.arange(g.shape[0]), problem.labels] *= 1.001
        return type(out)(g, out.note)

    from gradcheck_cli import engine

    monkeypatch.setitem(engine.METHODS, "analytic", broken)
    spec = _spec(tmp_path, 4, 20000)
    result = runner.invoke(app, ["run", str(spec), "--format", "json"])
    assert result.exit_code == 1, result.output
    rows = _methods(result.output)
    assert not rows["finite_difference"]["passed"] and not rows["complex_step"]["passed"]


def test_jacobian_properties_of_a_large_vocabulary_use_whole_rows() -> None:
    z = np.random.default_rng(5).normal(size=(2, 5000))
    check = jacobian_properties(softmax(z))
    assert check.passed, check.detail
    assert "rows of the 209 most probable of 5000 classes" in check.detail
