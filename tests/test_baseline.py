"""Error baselines (gradcheck_cli/baseline.py): --save-baseline records every comparison's
error; --baseline --fail-on-growth fails a spec whose error grew, though inside its tolerance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.baseline import Growth, parse_growth
from gradcheck_cli.cli import app
from gradcheck_cli.compare import Comparison, ulp
from gradcheck_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ROOT / "tests" / "data" / "impl" / "impls.py"
SPEC = ROOT / "specs" / "batch_mean.yaml"
runner = CliRunner()


def _run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["run", str(SPEC), *args])


def test_doubling_an_error_inside_its_tolerance_fails_only_against_a_baseline(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base.json"
    saved = _run("--impl", f"{IMPLS}:small_error", "--save-baseline", str(base))
    assert saved.exit_code == 0, saved.output
    doubled = ("--impl", f"{IMPLS}:doubled_error")
    assert _run(*doubled).exit_code == 0  # still inside the tolerance
    same = _run("--impl", f"{IMPLS}:small_error", "--baseline", str(base))
    assert same.exit_code == 0, same.output
    grew = _run(*doubled, "--baseline", str(base), "--fail-on-growth", "2x")
    assert grew.exit_code == 1, grew.output
    assert "2 of 7 comparisons grew past --fail-on-growth" in grew.output
    assert "batch-mean: logits impl" in grew.output  # the before/after table names it
    detail = "max abs error 9.09e-13 -> 1.82e-12 (2.00x; --fail-on-growth 2x fails it from"
    assert detail in " ".join(grew.output.split())  # the spec's failed baseline check
    looser = _run(*doubled, "--baseline", str(base), "--fail-on-growth", "3x")
    assert looser.exit_code == 0, looser.output


def test_the_file_is_stable_and_sorted(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _run("--save-baseline", str(a)).exit_code == 0
    assert _run("--save-baseline", str(b)).exit_code == 0
    assert a.read_text() == b.read_text()
    doc = json.loads(a.read_text())
    keys = list(doc["comparisons"])
    assert keys == sorted(keys) and len(keys) >= 4
    assert all(k.startswith(f"{SPEC}::batch-mean::") for k in keys)


def test_a_bad_baseline_or_allowance_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = _run("--baseline", str(bad))
    assert result.exit_code == 2 and "not a baseline file" in result.output
    missing = _run("--baseline", str(tmp_path / "none.json"))
    assert missing.exit_code == 2 and "cannot read" in missing.output
    growth = _run("--baseline", str(bad), "--fail-on-growth", "twice")
    assert growth.exit_code == 2 and "--fail-on-growth twice" in growth.output


def _comparison(reference_value: float, dtype: str = "float32") -> Comparison:
    return Comparison("impl", "reference", 0.0, 0.0, (0,), 0.0, reference_value, 0, 0, 0,
                      dtype=dtype)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "before", "fails_at"),
    [
        ("2x", 1e-7, 2e-7),
        ("1e-9", 1e-7, 1e-7 + 1e-9),
        ("+1e-9", 1e-7, 1e-7 + 1e-9),
        ("+1ulp", 1e-7, 1e-7 + ulp(0.5, "float32")),
        ("+3ulps", 0.0, 3 * ulp(0.5, "float32")),
        ("2x,+1ulp", 1e-9, 1e-9 + ulp(0.5, "float32")),  # the most lenient
        ("1.5x", 4.0, 6.0),
    ],
)
def test_allowances(text: str, before: float, fails_at: float) -> None:
    growth = parse_growth(text)
    assert math.isclose(growth.limit(before, _comparison(0.5)), fails_at, rel_tol=1e-12)


@pytest.mark.parametrize("text", ["twice", "0.5x", "+ulp", "-1e-9", "inf", ""])
def test_bad_allowances(text: str) -> None:
    with pytest.raises(UsageError, match="--fail-on-growth"):
        parse_growth(text)


def test_growth_from_zero_and_to_nan() -> None:
    from gradcheck_cli.baseline import compare
    from gradcheck_cli.model import SpecResult

    def result(error: float) -> SpecResult:
        c = Comparison("analytic", "exact", error, 0.0, (0,), 0.0, 0.5, 1e-9, 1e-12, 0)
        return SpecResult(name="s", file="f.yaml", status="pass", comparisons=(c,))

    key = "f.yaml::s::logits::analytic"
    growth = Growth("2x", factor=2.0)
    for before, after, fails in [(0.0, 0.0, False), (0.0, 1e-17, True), (1e-16, 1e-16, False),
                                 (1e-16, math.nan, True), (1e-16, 0.5e-16, False)]:  # fmt: skip
        (out,), rows = compare([result(after)], {key: before}, growth)
        assert (out.status == "fail") is fails, (before, after)
        assert rows[0].status == ("grew" if fails else "ok")
    (out,), rows = compare([result(1e-16)], {"other::key": 1.0}, growth)
    assert out.status == "pass" and [r.status for r in rows] == ["new", "gone"]
