"""Verdicts you can trust: the corpus of correct and wrong implementations, and the rules behind it.

``tests/trust_cases.py`` holds the matrix (implementations x regimes x dtypes x reductions) that
``benchmarks/trust.py`` prints; here every case must come out as expected: a correct
implementation passes (no false alarm), a wrong one fails (no silent pass, and not merely
"inconclusive").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trust_cases

from gradcheck_cli.compare import Tolerance, compare
from gradcheck_cli.core import CrossEntropyProblem, reduce_any
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import ImplError, load, options_for
from gradcheck_cli.model import Spec

IMPLS = trust_cases.IMPLS_PATH
CASES = list(trust_cases.cases())


def _id(case: tuple[str, str, str, str, str]) -> str:
    impl, _, regime, dtype, reduction = case
    return f"{impl}-{regime}-{dtype}-{reduction}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_corpus_case(case: tuple[str, str, str, str, str]) -> None:
    impl, expected, regime, dtype, reduction = case
    if impl == "torch_f_cross_entropy":
        pytest.importorskip("torch")
    outcome, detail = trust_cases.run_case(impl, regime, dtype, reduction)
    assert outcome == ("pass" if expected == "pass" else "fail"), detail


def test_corpus_covers_both_sides() -> None:
    expected = {c[1] for c in CASES}
    dtypes = {c[3] for c in CASES if c[1] == "catch"}
    assert expected == {"pass", "catch"} and dtypes == {"float64", "float32", "float16"}
    assert len(CASES) > 400


def spec(z: np.ndarray, y: np.ndarray, **kw: object) -> Spec:
    return Spec(name="s", file="s.yaml", logits=z, single=False, labels=y, **kw)  # type: ignore[arg-type]


def impl_rows(result: object) -> dict[str, object]:
    return {c.quantity: c for c in result.comparisons if c.method.startswith("impl")}  # type: ignore[attr-defined]


def test_real_buffers_fool_no_complex_step() -> None:
    """Accepting complex logits is not evidence: the probe's complex step (0, the imaginary
    part was dropped) disagrees with differences, so Richardson differences are used."""
    z, y = trust_cases.problem("random")
    r = run_spec(spec(z, y), RunOptions(impl=load(f"{IMPLS}:real_buffers"), methods=("analytic",)))
    assert r.status == "pass"
    assert impl_rows(r)["directions"].method == "impl self-consistency (Richardson differences)"  # type: ignore[attr-defined]
    assert "disagrees with differences" in r.method_notes["impl self-consistency"]


@pytest.mark.parametrize(("offset", "dtype"), [(1000.0, "float32"), (1e6, "float64")])
def test_self_consistency_at_large_logits(offset: float, dtype: str) -> None:
    """The issue's false alarms: float32 logits near 1e3 and float64 near 1e6. The step and the
    predicted error follow the forward's rounding at that magnitude."""
    z, y = trust_cases.problem("random")
    r = run_spec(
        spec(z + offset, y),
        RunOptions(impl=load(f"{IMPLS}:log_softmax_route"), methods=("analytic",), dtype=dtype),  # type: ignore[arg-type]
    )
    row = impl_rows(r)["directions"]
    assert r.status == "pass" and row.passed and row.inconclusive is None  # type: ignore[attr-defined]
    assert row.predicted is not None and row.max_abs_error <= row.predicted  # type: ignore[attr-defined]


def test_loss_allowance_follows_the_shifted_scale() -> None:
    """Logits near 1e4: a loss of 0 against log 2 fails (the allowance no longer grows with
    max|z|), and so does a relative loss error of 1e-9."""
    z = np.array([[1e4, 1e4], [2e4 + 1.0, 2e4]])
    y = np.array([0, 1])
    r = run_spec(
        spec(z, y),
        RunOptions(impl=load(f"{IMPLS}:loss_zero_at_large_logits"), methods=("analytic",)),
    )
    loss = impl_rows(r)["loss"]
    assert r.status == "fail" and not loss.passed and loss.atol < 2e-11  # type: ignore[attr-defined]
    planted = load(f"{trust_cases.IMPLS_PATH.parent / 'impl' / 'impls.py'}:planted_loss")
    for offset in (0.0, 1e3, 1e4):
        zz, yy = trust_cases.problem("random")
        r = run_spec(spec(zz + offset, yy), RunOptions(impl=planted, methods=("analytic",)))
        assert not impl_rows(r)["loss"].passed, offset  # type: ignore[attr-defined]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_array_is_in_the_checks_dtype(dtype: str) -> None:
    z, y = trust_cases.problem("random")
    s = spec(z, y, weight=np.linspace(0.5, 2.0, z.shape[1]))
    opts = options_for(s, dtype)
    assert opts["weight"].dtype == np.dtype(dtype) and opts["labels"].dtype == np.int64
    r = run_spec(
        s, RunOptions(impl=load(f"{IMPLS}:strict_dtypes"), methods=("analytic",), dtype=dtype)
    )  # type: ignore[arg-type]
    assert r.status == "pass"


def test_softmax_function_on_a_sigmoid_spec_is_an_error() -> None:
    z = np.array([[0.5, -1.0], [2.0, 0.0]])
    s = Spec(
        name="s",
        file="s.yaml",
        logits=z,
        single=False,
        targets=np.array([[1.0, 0.0], [0.5, 1.0]]),
        loss="sigmoid_cross_entropy",
    )
    with pytest.raises(ImplError, match="takes no 'loss' parameter, so it is a softmax"):
        run_spec(s, RunOptions(impl=load(f"{IMPLS}:softmax_only"), methods=("analytic",)))


def test_ignored_row_with_overflowing_z_loss_contributes_nothing() -> None:
    z = np.array([[1e200, 0.0, -1.0], [1.0, 2.0, 0.5]])
    for reduction in ("mean", "sum", "none"):
        p = CrossEntropyProblem(
            z, labels=np.array([-100, 1]), ignore_index=-100, z_loss=1e-4, reduction=reduction
        )
        loss = np.asarray(reduce_any(p))
        assert np.all(np.isfinite(loss)), reduction
        if reduction == "none":
            assert loss[0] == 0.0


def test_vacuous_pass_is_inconclusive() -> None:
    ref = np.array([0.002, -0.002])
    loose = Tolerance(rtol=0.0, atol=0.01)
    zero = compare("m", np.zeros(2), "r", ref, loose, ulps=4)
    assert (
        zero.passed
        and zero.verdict == "inconclusive"
        and "a zero would pass" in str(zero.inconclusive)
    )
    exact = compare("m", ref.copy(), "r", ref, loose, ulps=4)
    assert exact.verdict == "pass"
    tight = compare("m", np.zeros(2), "r", ref, Tolerance(rtol=0.0, atol=1e-3), ulps=4)
    assert tight.verdict == "fail"
    assert compare("m", np.zeros(2), "r", ref, loose).verdict == "pass"  # rule only when asked


def test_zero_gradient_fails_in_every_dtype_and_reduction() -> None:
    for dtype in trust_cases.DTYPES:
        for regime in trust_cases.regimes_for(dtype):
            for reduction in trust_cases.REDUCTIONS:
                outcome, detail = trust_cases.run_case("zero_grad", regime, dtype, reduction)
                assert outcome == "fail", (dtype, regime, reduction, detail)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_builtin_torch_adapter_in_low_precision(dtype: str) -> None:
    """weights, probability targets and pos_weight reach torch in the check's dtype."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4, 5))
    base = spec(z, np.array([0, 2, 4, 1]), weight=rng.uniform(0.5, 2.0, 5))
    targets = rng.dirichlet(np.ones(5), size=4)
    sigmoid = Spec(
        name="s",
        file="s.yaml",
        logits=z,
        single=False,
        targets=rng.uniform(size=(4, 5)),
        loss="sigmoid_cross_entropy",
        weight=rng.uniform(0.5, 2.0, 5),
        pos_weight=rng.uniform(0.5, 2.0, 5),
    )
    impl = load("torch")
    for s in (base, replace(base, labels=None, targets=targets), sigmoid):
        r = run_spec(s, RunOptions(impl=impl, methods=("analytic",), dtype=dtype))  # type: ignore[arg-type]
        rows = impl_rows(r)
        assert {"loss", "logits"} <= set(rows), r.method_notes
        assert r.status == "pass", [c for c in r.comparisons if not c.passed]


def test_cli_reports_inconclusive_without_failing() -> None:
    """near_one_hot's gradient (~1e-17) is below what float64's p - 1 resolves: PyTorch returns
    0 for the true class. That is reported as inconclusive, and the run still exits 0."""
    pytest.importorskip("torch")
    from pathlib import Path

    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    near = Path(__file__).resolve().parents[1] / "specs" / "near_one_hot.yaml"
    result = CliRunner().invoke(app, ["run", str(near), "--impl", "torch"])
    assert result.exit_code == 0, result.output
    assert "inconclusive" in result.stdout
    assert "a zero would pass too" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        "1 passed, 0 failed, 0 errors (1 passed with an inconclusive comparison)"
    )
