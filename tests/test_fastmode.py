"""Fast mode: streamed chunks agree with the full path; directional checks; memory-minded I/O."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli import fastmode
from gradcheck_cli.cli import app
from gradcheck_cli.compare import Tolerance, compare
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.model import Spec
from gradcheck_cli.spec import load_file


def spec(**kw: object) -> Spec:
    rng = np.random.default_rng(21)
    args: dict[str, object] = dict(
        name="f",
        file="f.yaml",
        logits=rng.normal(size=(40, 30)) * 3,
        single=False,
        labels=rng.integers(0, 30, 40),
    )
    args.update(kw)
    return Spec(**args)  # type: ignore[arg-type]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastmode, "ROW_CHUNK_ELEMENTS", 30 * 7)  # 7 rows per chunk


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight": np.linspace(0.5, 2.0, 30), "ignore_index": 3, "reduction": "mean"},
        {"label_smoothing": 0.1, "reduction": "sum"},
        {"softcap": 4.0, "z_loss": 1e-3, "reduction": "none"},
    ],
)
def test_fast_mode_agrees_with_the_full_path(options: dict[str, object]) -> None:
    s = spec(**options)
    full = run_spec(s, RunOptions(full=True))
    fast = run_spec(
        s,
        RunOptions(
            fast=True, methods=("analytic", "jacobian", "finite_difference", "complex_step")
        ),
    )
    assert full.status == "pass"
    assert fast.status == "pass", [c for c in fast.comparisons if not c.passed]
    np.testing.assert_allclose(np.asarray(fast.loss), np.asarray(full.loss), rtol=1e-13)
    methods = {c.method for c in fast.comparisons}
    # in float64 the closed form is the reference: it is not shown compared with itself
    assert "jacobian" in methods and "analytic" not in methods
    assert "not compared with itself" in fast.method_notes["analytic"]
    assert "finite_difference (directional)" in methods
    assert "complex_step (directional, whole batch)" in methods
    assert fast.gradients == {} and "fast mode" in fast.method_notes["mode"]


def test_fast_mode_runs_the_requested_scheme() -> None:
    # Forward differences are O(h) with h = eps^(1/2) max(1, max|z|), central ones O(h^2): a
    # forward spec must report forward differences with errors of that size, not central ones
    # judged at the forward tolerance. Along d with |d_k| < 1 the forward truncation is at most
    # h/2 |d^T H d| <= h alpha / 2 (H = alpha (diag p - p p^T), alpha = 1/N for the mean).
    s = spec()
    errors, notes = {}, {}
    for scheme in ("forward", "central", "richardson"):
        result = run_spec(
            replace(s, fd_scheme=scheme),
            RunOptions(fast=True, methods=("analytic", "finite_difference")),
        )
        assert result.status == "pass"
        (fd,) = [c for c in result.comparisons if c.method == "finite_difference (directional)"]
        errors[scheme] = fd.max_abs_error
        notes[scheme] = result.method_notes["mode"]
    assert "forward differences" in notes["forward"]
    assert "richardson differences" in notes["richardson"]
    assert "finite differences" in notes["central"]  # the default reads as it always did
    h = np.finfo(np.float64).eps ** 0.5 * float(np.max(np.abs(s.logits)))
    assert 100 * errors["central"] < errors["forward"] <= 1.5 * h / (2 * s.logits.shape[0])
    assert errors["richardson"] < errors["central"]


def test_streamed_statistics_equal_the_one_shot_comparison() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(23, 11))
    got = ref * (1 + rng.normal(size=ref.shape) * 1e-9)
    got[17, 4] += 1e-6  # the worst element, in the fourth chunk
    tol = Tolerance(rtol=1e-8, atol=1e-10)
    stream = fastmode.Stream("m", "r", tol, "logits", "float64")
    for start in range(0, 23, 6):
        stream.add(got[start : start + 6], ref[start : start + 6], start)
    streamed = stream.comparison()
    whole = compare("m", got, "r", ref, tol)
    assert streamed.worst_index == whole.worst_index == (17, 4)
    assert streamed.failed_elements == whole.failed_elements
    assert streamed.max_abs_error == whole.max_abs_error
    assert streamed.max_rel_error == pytest.approx(whole.max_rel_error)


def test_streamed_heat_map_equals_the_one_shot_one() -> None:
    """Chunks that start and end inside a block of the heat map (7 rows a chunk, 3 rows a
    cell) merge into the whole batch's cells; the worst element's cell is the hottest."""
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(130, 150))
    got = ref * (1 + rng.normal(size=ref.shape) * 1e-9)
    got[101, 77] = np.nan
    got[40, 3] += 1e-6
    tol = Tolerance(rtol=1e-8, atol=1e-10)
    stream = fastmode.Stream("m", "r", tol, "logits", "float64", shape=(130, 150))
    for start in range(0, 130, 7):
        stream.add(got[start : start + 7], ref[start : start + 7], start)
    streamed, whole = stream.comparison(), compare("m", got, "r", ref, tol)
    assert streamed.heat is not None and whole.heat is not None
    assert whole.heat.block == (3, 3) and whole.heat.ratio.shape == (44, 50)
    np.testing.assert_array_equal(streamed.heat.ratio, whole.heat.ratio)
    assert whole.worst_index == (101, 77) and whole.heat.cell((101, 77)) == (33, 25)
    assert whole.heat.ratio[33, 25] == np.inf  # nan counts as the worst
    finite = np.where(np.isinf(whole.heat.ratio), 0.0, whole.heat.ratio)
    assert np.unravel_index(np.argmax(finite), finite.shape) == (13, 1)  # [40, 3]'s cell


def test_budget_threshold() -> None:
    assert not fastmode.needs_fast(256, 1000)
    assert fastmode.needs_fast(4096, 32000)
    assert fastmode.needs_fast(1, 30000)


def test_float32_logits_from_a_file_stay_float32(tmp_path: Path) -> None:
    z = np.random.default_rng(0).normal(size=(8, 50)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    (tmp_path / "s.yaml").write_text("logits: {file: z.npy}\nlabel: [0, 1, 2, 3, 4, 5, 6, 7]\n")
    (s,) = load_file(tmp_path / "s.yaml")
    assert isinstance(s, Spec) and s.logits.dtype == np.float32 and s.dtype == "float32"
    r = run_spec(s, RunOptions(fast=True))
    assert r.status == "pass"
    assert all(c.dtype == "float32" for c in r.comparisons)
    (tmp_path / "t.yaml").write_text(
        "logits: {file: z.npy}\nlabel: [0, 1, 2, 3, 4, 5, 6, 7]\ndtype: float64\n"
    )
    (t,) = load_file(tmp_path / "t.yaml")
    assert isinstance(t, Spec) and t.logits.dtype == np.float64


def test_fast_mode_skips_what_it_cannot_check() -> None:
    """Element-wise expectations are reported as skipped (the arrays are not kept), not as an
    invalid spec; the loss expectation is still checked."""
    from gradcheck_cli.model import Expect

    s = spec(expect=Expect(grad=np.zeros((40, 30)), loss=123.0))
    r = run_spec(s, RunOptions(fast=True))
    assert r.status == "fail"  # the wrong expected loss
    assert "skipped in fast mode" in r.not_computable["expect.grad"]
    assert [c.name for c in r.checks if not c.passed] == ["expect.loss"]


ROOT = Path(__file__).resolve().parents[1]


def test_bundled_specs_in_fast_mode() -> None:
    """`xentcheck run specs/ --fast`: everything passes but the layer spec, which is skipped
    (not supported in fast mode), with no NumPy warning leaking."""
    import warnings

    import gradcheck_cli as xc

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = xc.check(ROOT / "specs", fast=True)
    bad = {r.name: r.message for r in report.results if r.status != "pass"}
    assert list(bad) == ["softmax-layer"] and report.exit_code == 0
    assert "not supported in fast mode" in str(bad["softmax-layer"])


def test_fast_and_full_exclude_each_other() -> None:
    result = CliRunner().invoke(app, ["run", "specs/cat_dog_bird.yaml", "--fast", "--full"])
    assert result.exit_code == 2 and "--fast and --full exclude each other" in result.stderr


def test_fast_mode_from_the_command_line() -> None:
    result = CliRunner().invoke(
        app, ["run", "specs/batch_mean.yaml", "--fast", "--directions", "3", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "fast mode" in result.stdout and "3 seeded random directions" in result.stdout


def test_memory_budget_sends_tall_batches_to_fast_mode() -> None:
    assert fastmode.needs_fast(1 << 22, 5)  # N K^2 = 1e8 but N K = 2e7 values per array
    assert not fastmode.needs_fast(1 << 20, 5)


def test_fast_mode_skips_an_implementations_per_element_sigmoid_loss(tmp_path: Path) -> None:
    """A sigmoid loss with reduction none has one value per element, fast mode one per row:
    the spec is skipped with the reason (it used to be an internal error)."""
    f = tmp_path / "sig.yaml"
    f.write_text(
        "loss: sigmoid_cross_entropy\nlogits: [[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]]\n"
        "target: [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]\nreduction: none\n"
    )
    impls = Path(__file__).resolve().parent / "data" / "impl" / "impls.py"
    result = CliRunner().invoke(app, ["run", "--fast", "--impl", f"{impls}:correct", str(f)])
    assert result.exit_code == 0, result.output
    assert "per-element sigmoid loss" in result.output and "internal error" not in result.output
