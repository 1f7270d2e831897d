"""Low-precision tolerance models (``tolerance_models``): rounded, baseline and fixed, the ulp
statistics, the naive baseline, and the vacuity check that names the planted wrong answers an
allowance would accept. The claims of issue 16, measured on PyTorch's CPU kernels, an accurate
kernel and the Liger-Kernel #1268 bug."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from gradcheck_cli import tolerance_models as tm
from gradcheck_cli.core import build_problem
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import load
from gradcheck_cli.model import Spec

KERNELS = Path(__file__).resolve().parent / "data" / "impl" / "lowp_kernels.py"


def spec(confident: bool, dtype: str = "bfloat16") -> Spec:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(8, 50))
    labels = rng.integers(0, 50, 8)
    if confident:  # p_y >= 0.999 in every row
        logits[np.arange(8), labels] = 12.0
    return Spec(name="s", file="s.yaml", logits=logits, single=False, labels=labels, dtype=dtype)  # type: ignore[arg-type]


def grad_row(target: str, confident: bool, model: str | None = None, dtype: str = "bfloat16"):  # type: ignore[no-untyped-def]
    options = RunOptions(
        impl=load(target), methods=("analytic",), tolerance_model=tm.Settings(model)
    )
    r = run_spec(spec(confident, dtype), options)
    (row,) = [c for c in r.comparisons if c.method.startswith("impl") and c.quantity == "logits"]
    return row


def test_ulp_errors_count_units_of_the_dtype() -> None:
    truth = np.array([1.0, 0.5, -2.0, 0.0])
    spacing = np.spacing(np.array([1.0, 0.5, 2.0], dtype=np.float32)).astype(np.float64)
    got = truth + np.array([3 * spacing[0], -spacing[1], 0.0, 0.0])
    assert tm.ulp_errors(got, truth, "float32")[:3] == pytest.approx([3.0, 1.0, 0.0])
    bf = tm.ulp_errors(np.array([1.0 + 2**-7]), np.array([1.0]), "bfloat16")
    assert bf[0] == pytest.approx(1.0)  # bfloat16 spacing at 1 is 2^-7


def test_the_naive_baseline_rounds_every_step() -> None:
    s = spec(True)
    problem = build_problem(
        "softmax_cross_entropy", s.logits.astype(ml_dtypes.bfloat16), s.labels, None, "mean", {}
    )
    found = tm.naive(problem)
    assert found is not None
    _, grad = found
    rows = np.arange(8)
    # p_y >= 0.999 rounds to 1 in bfloat16, so the naive true-class gradient is exactly 0
    assert np.all(grad[rows, s.labels] == 0.0)  # type: ignore[index]
    with_z_loss = build_problem(
        "softmax_cross_entropy", s.logits, s.labels, None, "mean", {"z_loss": 1e-4}
    )
    assert tm.naive(with_z_loss) is None


@pytest.mark.parametrize("confident", [False, True])
def test_an_accurate_kernel_passes_rounded_and_baseline(confident: bool) -> None:
    for model in ("rounded", "baseline"):
        row = grad_row(f"{KERNELS}:accurate", confident, model)
        assert row.passed, (model, row.precision)
        assert row.precision.ulps_worst <= 1.0  # float32 inside, one rounding


def test_liger_1268_is_caught_by_rounded_and_baseline_would_miss_it() -> None:
    row = grad_row(f"{KERNELS}:liger_1268", True)  # the default model: rounded
    assert not row.passed and row.precision.model == "rounded"
    assert row.precision.ulps_worst > 100
    base = grad_row(f"{KERNELS}:liger_1268", True, "baseline")
    assert base.passed  # no worse than the naive computation...
    assert "the Liger-Kernel #1268 rounding" in base.loose  # ...and the report says so


def test_pytorch_cpu_bfloat16_fails_rounded_and_passes_baseline_at_confident_logits() -> None:
    pytest.importorskip("torch")
    random_logits = grad_row("torch", False)
    assert random_logits.passed and not random_logits.loose
    rounded = grad_row("torch", True)
    assert not rounded.passed
    assert rounded.precision.baseline_ratio == pytest.approx(1.0, abs=0.05)
    assert rounded.precision.ulps_worst > 100  # the true-class gradient is exactly 0
    assert grad_row("torch", True, "baseline").passed


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("model", ["rounded", "baseline", "fixed"])
def test_a_zero_gradient_is_caught_or_the_tolerance_is_marked_loose(
    dtype: str, reduction: str, model: str
) -> None:
    s = spec(True, dtype)
    s = Spec(**{**s.__dict__, "reduction": reduction})
    options = RunOptions(
        impl=load(f"{KERNELS}:zero_gradient"),
        methods=("analytic",),
        tolerance_model=tm.Settings(model),
    )
    r = run_spec(s, options)
    (row,) = [c for c in r.comparisons if c.method.startswith("impl") and c.quantity == "logits"]
    assert (not row.passed) or "a zero gradient" in row.loose
    if model == "rounded":
        assert not row.passed  # the default model always catches it


def test_fixed_half_precision_tables_are_reported_loose_at_confident_logits() -> None:
    row = grad_row(f"{KERNELS}:accurate", True, "fixed")
    assert row.passed and set(row.loose) == {"a zero gradient", "the Liger-Kernel #1268 rounding"}


def test_float32_keeps_the_fixed_table_by_default_and_float64_has_no_model() -> None:
    row = grad_row(f"{KERNELS}:accurate", False, None, "float32")
    assert row.precision.model == "fixed" and row.passed
    wide = Spec(**{**spec(False).__dict__, "dtype": "float64"})
    r = run_spec(wide, RunOptions(impl=load(f"{KERNELS}:accurate"), methods=("analytic",)))
    assert all(c.precision is None for c in r.comparisons)


def test_cli_model_options_and_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    s = spec(True)
    path = tmp_path / "c.yaml"
    path.write_text(
        json.dumps({"logits": s.logits.tolist(), "label": s.labels.tolist(), "dtype": "bfloat16"})  # type: ignore[union-attr]
    )
    out = CliRunner().invoke(
        app,
        ["run", str(path), "--impl", f"{KERNELS}:liger_1268", "-m", "analytic", "--format", "json",
         "--tolerance-model", "baseline", "--model-k", "2"],
    )  # fmt: skip
    doc = json.loads(out.stdout)
    rows = doc["results"][0]["comparisons"]
    (row,) = [c for c in rows if c["method"].startswith("impl") and c["quantity"] == "logits"]
    assert row["precision"]["model"] == "baseline" and row["precision"]["k"] == 2.0
    assert row["loose"] == ["the Liger-Kernel #1268 rounding"]
    table = CliRunner().invoke(
        app,
        ["run", str(path), "--impl", f"{KERNELS}:liger_1268", "-m", "analytic"],
        env={"COLUMNS": "250"},
    )
    assert table.exit_code == 1
    assert "model rounded (k = 4" in table.output and "ulps at the worst element" in table.output


def test_built_in_methods_in_low_precision_report_ulps_and_loose_tables() -> None:
    r = run_spec(spec(True, "float16"), RunOptions(methods=("analytic", "finite_difference")))
    rows = {c.method: c for c in r.comparisons}
    assert rows["analytic"].precision is not None and rows["analytic"].precision.model == "fixed"
    # float16's fixed tables (atol 5e-3, 0.2) accept a zero gradient of magnitude 1e-4
    assert "a zero gradient" in rows["finite_difference"].loose
    wide = run_spec(spec(True, "float64"), RunOptions(methods=("analytic",)))
    assert all(c.precision is None for c in wide.comparisons)
