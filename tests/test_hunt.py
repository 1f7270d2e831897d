"""``xentcheck hunt`` (gradcheck_cli/hunt.py): the drawn inputs, the written specs, the judge, the
search on planted bugs and on correct kernels, the example database, and the command line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli import hunt
from gradcheck_cli.api import load
from gradcheck_cli.cli import app
from gradcheck_cli.engine import RunOptions
from gradcheck_cli.impl import load as load_impl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "planted_bugs.py"
NUMPY_BUGS = (
    "true_class_rounded",
    "zloss_ignored_rows",
    "mean_all_rows",
    "no_max_shift",
    "global_max",
    "smoothing_count",
)


def _impl(name: str, torch: bool = False):  # type: ignore[no-untyped-def]
    return load_impl(f"{'torch:' if torch else ''}{EXAMPLES}:{name}")


def _candidate(**changes: object) -> hunt.Candidate:
    base = {
        "dtype": "float64",
        "rows": 3,
        "classes": 5,
        "regime": "normal",
        "level": 1.0,
        "seed": 4,
        "reduction": "mean",
    }
    base.update(changes)
    return hunt.Candidate(**base)  # type: ignore[arg-type]


def _search(impl, budget=30.0, seed=0, **space):  # type: ignore[no-untyped-def]
    return hunt.hunt(
        impl, RunOptions(), space=hunt.space_for(impl, **space), budget=budget, seed=seed,
        database=None,
    )  # fmt: skip


# --- drawn inputs and the written spec -------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("regime", hunt.REGIMES)
def test_written_spec_loads_back_to_exactly_the_drawn_values(dtype: str, regime: str) -> None:
    c = _candidate(dtype=dtype, regime=regime, level=hunt.LEVELS[regime][-1] if regime != "huge"
                   else 100.0, classes=7)  # fmt: skip
    logits, labels = c.arrays()
    spec = load(hunt.spec_text(c.spec_mapping()))[0]
    # the loader keeps the decimals; the engine rounds them to the dtype, to the drawn values
    np.testing.assert_array_equal(hunt._representable(spec.logits, dtype), logits)
    np.testing.assert_array_equal(spec.labels, labels)
    assert spec.dtype == dtype and spec.methods == hunt.METHODS


def test_decimals_are_short_and_round_to_the_same_value() -> None:
    value = float(np.float32(0.3))
    assert hunt._decimal(value, "float32") == 0.3
    assert float(np.float32(hunt._decimal(value, "float32"))) == value
    assert hunt._decimal(value, "float64") == value  # float64 keeps every digit
    assert hunt._decimal(-math.inf, "bfloat16") == -math.inf


def test_regimes_build_what_they_say() -> None:
    logits, labels = _candidate(regime="confident", level=0.999, classes=50, rows=4).arrays()
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert np.all(p[np.arange(4), labels] >= 0.999 - 1e-12)
    logits, labels = _candidate(regime="masked", level=0.5, classes=10).arrays()
    assert np.all(np.isneginf(logits[:, 5:])) and np.all(np.isfinite(logits[:, :5]))
    assert np.all(labels < 5)
    logits, _ = _candidate(regime="huge", level=1000.0).arrays()
    assert logits.min() > 990
    logits, labels = _candidate(ignored="all", ignore_index=2).arrays()
    assert np.all(labels == 2)
    _, labels = _candidate(ignored="some", ignore_index=-100, rows=6).arrays()
    assert 0 < np.count_nonzero(labels == -100) < 6
    assert not np.any(_candidate(regime="uniform").arrays()[0])


def test_the_space_follows_the_signature() -> None:
    numpy_space = hunt.space_for(_impl("correct"))
    assert set(numpy_space.options) == {"label_smoothing", "z_loss"}
    assert numpy_space.ignore and not numpy_space.upstream

    def no_options(logits, *, labels):  # type: ignore[no-untyped-def]
        return 0.0, np.zeros_like(logits)

    from gradcheck_cli.impl import wrap

    bare = hunt.space_for(wrap("bare", no_options))
    assert bare.options == () and not bare.ignore and bare.reductions == ("mean",)


# --- the judge -------------------------------------------------------------------------------


def test_judge_passes_the_fixed_kernel_and_fails_the_bug() -> None:
    c = _candidate(
        rows=2, classes=1, ignored="some", ignore_index=-100, options=(("z_loss", 1e-4),)
    )
    assert hunt.judge(c, _impl("correct"), RunOptions()).outcome == "pass"
    assert hunt.judge(c, _impl("zloss_ignored_rows"), RunOptions()).outcome == "fail"


def test_a_nan_reference_is_expected_in_the_written_spec() -> None:
    c = _candidate(ignored="all", ignore_index=-100)
    verdict = hunt.judge(c, _impl("correct"), RunOptions())
    assert verdict.outcome == "pass"
    assert "expect:\n  loss: .nan" in verdict.text
    assert hunt.judge(c, _impl("mean_all_rows"), RunOptions()).outcome == "fail"


def test_an_implementation_that_raises_is_a_failure() -> None:
    from gradcheck_cli.impl import wrap

    def crashes(logits, *, labels, reduction):  # type: ignore[no-untyped-def]
        raise IndexError("boom")

    verdict = hunt.judge(_candidate(), wrap("crashes", crashes), RunOptions())
    assert verdict.outcome == "fail" and "boom" in (verdict.result.message or "")


# --- the search ------------------------------------------------------------------------------


@pytest.mark.parametrize("bug", NUMPY_BUGS)
def test_hunt_finds_each_planted_numpy_bug_and_the_reproducer_passes_the_fix(
    bug: str, tmp_path: Path
) -> None:
    result = _search(_impl(bug))
    assert result.finding is not None, hunt.coverage_text(result.coverage)
    finding = result.finding
    assert finding.candidate.size <= 8  # shrunk
    out = tmp_path / "failing.yaml"
    out.write_text(hunt.reproducer(result, "xentcheck run ..."))
    runner = CliRunner()
    buggy = runner.invoke(app, ["run", "--impl", f"{EXAMPLES}:{bug}", str(out)])
    fixed = runner.invoke(app, ["run", "--impl", f"{EXAMPLES}:correct", str(out)])
    plain = runner.invoke(app, ["run", str(out)])
    assert (buggy.exit_code, fixed.exit_code, plain.exit_code) == (1, 0, 0), buggy.output


def test_hunt_finds_the_grad_output_0_bug_of_a_torch_kernel() -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    result = _search(_impl("torch_first_grad_output", torch=True))
    assert result.finding is not None
    c = result.finding.candidate
    assert c.reduction == "none" and c.rows >= 2
    assert "grad_output[0]" in hunt.diagnosis(result)


def test_hunt_finds_a_torch_kernel_that_ignores_the_labels_storage_offset() -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    kernels = Path(__file__).resolve().parent / "data" / "impl" / "torch_kernels.py"
    impl = load_impl(f"torch:{kernels}:ignores_offsets")
    result = _search(impl, dtypes=("float64",))
    assert result.finding is not None
    assert "impl_views" in hunt.diagnosis(result)


def test_no_false_alarm_on_the_correct_kernel_and_every_regime_is_covered() -> None:
    impl = _impl("correct")
    result = hunt.hunt(
        impl, RunOptions(), space=hunt.space_for(impl), budget=600, seed=3, database=None,
        max_examples=120,
    )  # fmt: skip
    assert result.finding is None
    cov = result.coverage
    assert set(cov.regimes) == set(hunt.REGIMES)
    assert set(cov.dtypes) == {"float64", "float32", "float16", "bfloat16"}
    assert set(cov.ignored) == set(hunt.IGNORED) and set(cov.reductions) == set(hunt.REDUCTIONS)
    assert {"label_smoothing", "z_loss"} <= set(cov.options)
    assert sum(cov.rejected.values()) < cov.inputs / 10


def test_pytorch_half_precision_loss_is_a_finding_that_names_the_tolerance_model() -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    impl = load_impl("torch")
    c = _candidate(dtype="bfloat16", rows=1, classes=2, regime="confident", level=0.999,
                   reduction="sum")  # fmt: skip
    verdict = hunt.judge(c, impl, RunOptions())
    assert verdict.outcome == "fail"
    result = hunt.HuntResult(
        impl.name, 0, 1.0, 1.0, hunt.Coverage(), hunt.Finding(c, verdict, 0.5, c.size)
    )
    text = hunt.diagnosis(result)
    assert "bfloat16 tolerance model rounded" in text and "p_y = 0.999" in text


def test_same_seed_same_finding_and_the_database_replays_it(tmp_path: Path) -> None:
    impl = _impl("smoothing_count")
    first, second = _search(impl, seed=5), _search(impl, seed=5)
    assert first.finding is not None and second.finding is not None
    assert first.finding.candidate == second.finding.candidate
    space = hunt.space_for(impl)
    where = hunt.database_dir(tmp_path, impl, space)
    found = hunt.hunt(impl, RunOptions(), space=space, budget=30, seed=9, database=where)
    again = hunt.hunt(impl, RunOptions(), space=space, budget=30, seed=9, database=where)
    assert found.finding is not None and again.finding is not None
    assert where.is_dir() and any(where.rglob("*"))
    assert again.finding.candidate == found.finding.candidate
    assert again.coverage.inputs < found.coverage.inputs


def test_the_budget_bounds_the_search() -> None:
    import time

    started = time.perf_counter()
    result = _search(_impl("correct"), budget=2.0)
    assert result.finding is None and time.perf_counter() - started < 8.0


# --- the command line ------------------------------------------------------------------------


def test_cli_writes_the_reproducer_and_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "found.yaml"
    result = CliRunner().invoke(app, [
        "hunt", "--impl", f"{EXAMPLES}:no_max_shift", "--budget", "30s", "--out", str(out),
        "--no-database", "-q",
    ])  # fmt: skip
    assert result.exit_code == 1, result.output
    text = out.read_text()
    assert text.startswith("# Found by: xentcheck hunt --impl")
    assert "# Observed:" in text and "dtype: float32" in text
    assert f"xentcheck run --impl {EXAMPLES}:no_max_shift {out}" in result.output


def test_cli_reports_coverage_and_exits_0(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "hunt", "--impl", f"{EXAMPLES}:correct", "--budget", "3", "--dtype", "float64",
        "--out", str(tmp_path / "x.yaml"), "--database", str(tmp_path / "db"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no failing input" in result.output and "regimes:" in result.output
    assert "dtypes: float64" in result.output
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "soon"], "--budget soon"),
        (["--budget", "-3"], "--budget -3"),
        (["--dtype", "float8"], "--dtype float8"),
        (["--out", "/no/such/dir/x.yaml"], "does not exist"),
    ],
)
def test_cli_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["hunt", "--impl", f"{EXAMPLES}:correct", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_bad_impl_exits_2() -> None:
    result = CliRunner().invoke(app, ["hunt", "--impl", "no_such_module:fn", "--budget", "1"])
    assert result.exit_code == 2 and "no_such_module" in result.output


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.0, -2.5, 1e-05, 3e20, 1.5e-300, 5e-324, math.inf, -math.inf, 0.1 + 0.2]
)
def test_yaml_floats_read_back_exactly(value: float) -> None:
    import yaml

    read = yaml.safe_load(hunt._yaml_float(value))
    assert isinstance(read, float) and (
        read == value and math.copysign(1, read) == math.copysign(1, value)
    )
