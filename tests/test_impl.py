"""--impl: the protocol, the three checks, the default tolerances, and every way to fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import ImplError, load, options_for
from gradcheck_cli.model import Spec

IMPLS = Path(__file__).resolve().parent / "data" / "impl" / "impls.py"
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def spec(**kw: object) -> Spec:
    rng = np.random.default_rng(0)
    args: dict[str, object] = dict(
        name="s",
        file="s.yaml",
        logits=rng.normal(size=(4, 6)) * 2,
        single=False,
        labels=np.array([0, 3, 5, 1]),
    )
    args.update(kw)
    return Spec(**args)  # type: ignore[arg-type]


def run_with(function: str, **kw: object) -> object:
    return run_spec(spec(**kw), RunOptions(impl=load(f"{IMPLS}:{function}"), methods=("analytic",)))


def impl_rows(result: object) -> dict[str, object]:
    return {c.quantity: c for c in result.comparisons if c.method.startswith("impl")}  # type: ignore[attr-defined]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_correct_implementation_passes(reduction: str) -> None:
    for function in ("correct", "real_only"):
        r = run_with(function, reduction=reduction)
        assert r.status == "pass"  # type: ignore[attr-defined]
        rows = impl_rows(r)
        assert set(rows) == {"loss", "logits", "directions"}
    assert rows["directions"].method == "impl self-consistency (Richardson differences)"  # type: ignore[attr-defined]


def test_complex_safe_implementation_gets_a_complex_step() -> None:
    rows = impl_rows(run_with("complex_safe"))
    assert rows["directions"].method == "impl self-consistency (complex step)"  # type: ignore[attr-defined]
    assert rows["directions"].max_abs_error < 1e-15  # type: ignore[attr-defined]


def test_planted_errors_are_caught() -> None:
    grad = impl_rows(run_with("planted_grad"))["logits"]
    assert not grad.passed and grad.worst_index == (0, 0)  # type: ignore[attr-defined]
    loss = impl_rows(run_with("planted_loss"))["loss"]
    assert not loss.passed  # type: ignore[attr-defined]


def test_forward_backward_inconsistency_is_caught() -> None:
    rows = impl_rows(run_with("inconsistent"))
    assert not rows["directions"].passed  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("raises", "raised RuntimeError: kernel launch failed"),
        ("wrong_shape", "returned a gradient of shape (6,); expected (4, 6) like the logits"),
        ("not_a_tuple", "returned float; expected a tuple (loss, grad)"),
        ("strings", "returned a loss of type str (dtype <U3); expected real numbers"),
    ],
)
def test_broken_implementations_are_errors(function: str, message: str) -> None:
    with pytest.raises(
        ImplError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        run_with(function)


def test_options_it_does_not_accept_are_an_error() -> None:
    with pytest.raises(ImplError, match="does not accept option 'label_smoothing'"):
        run_with("correct", label_smoothing=0.1)
    r = run_with("no_options")  # takes labels only: reduction and loss are not forced on it
    assert r.status == "pass"  # type: ignore[attr-defined]


def test_options_for_passes_only_what_the_spec_sets() -> None:
    s = spec(weight=np.ones(6), label_smoothing=0.2)
    opts = options_for(s)
    assert set(opts) == {"reduction", "loss", "labels", "weight", "label_smoothing"}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nonexistent.module:f", "cannot import nonexistent.module"),
        ("no_colon", "expected module:function, path/to/file.py:function, torch, torch:"),
        (f"{IMPLS}:missing", "has no function 'missing'"),
        ("tests/nope.py:f", "no such file tests/nope.py"),
    ],
)
def test_bad_targets(target: str, message: str) -> None:
    with pytest.raises(ImplError, match=message):
        load(target)


def test_cli_impl_errors_exit_2_and_other_specs_still_run() -> None:
    bad = f"{IMPLS}:raises"
    result = runner.invoke(
        app, ["run", str(ROOT / "specs" / "three_class.yaml"), "--impl", bad, "-f", "json"]
    )
    assert result.exit_code == 2
    (r,) = json.loads(result.stdout)["results"]
    assert r["status"] == "error" and "raised RuntimeError: kernel launch failed" in r["message"]
    missing = runner.invoke(app, ["run", "--impl", "no.such:f"])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: --impl 'no.such:f'")


def test_cli_example_implementation_passes_supported_specs() -> None:
    example = ROOT / "examples" / "numpy_cross_entropy.py"
    specs = [
        str(ROOT / "specs" / n)
        for n in (
            "cat_dog_bird.yaml",
            "class_weights.yaml",
            "ignore_index.yaml",
            "label_smoothing.yaml",
        )
    ]
    result = runner.invoke(app, ["run", *specs, "--impl", f"{example}:cross_entropy", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "6 passed, 0 failed, 0 errors"


def test_torch_target_without_torch_is_a_clear_error() -> None:
    pytest.importorskip("numpy")
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImplError, match="--impl torch needs PyTorch"):
            load("torch")
    else:
        r = run_spec(spec(), RunOptions(impl=load("torch")))
        assert r.status == "pass"


@pytest.mark.parametrize(
    ("function", "quantity", "diagnosis"),
    [
        ("not_divided_by_n", "logits", "N = 4 times the reference: a mean not divided by N"),
        ("labels_off_by_one", "loss", "every label value shifted by +1"),
        ("one_column_off", "logits", "only column 2 is off, in 4 rows"),
        ("float32_arithmetic", "logits", "float32 arithmetic inside a float64 check"),
    ],
)
def test_common_bug_shapes_are_diagnosed(function: str, quantity: str, diagnosis: str) -> None:
    row = impl_rows(run_with(function))[quantity]
    assert not row.passed  # type: ignore[attr-defined]
    assert row.diagnosis is not None and diagnosis in row.diagnosis, row.diagnosis  # type: ignore[attr-defined]


def test_no_diagnosis_without_evidence() -> None:
    for function in ("planted_grad", "planted_loss"):
        for row in impl_rows(run_with(function)).values():
            assert row.diagnosis is None  # type: ignore[attr-defined]


def test_nan_where_the_reference_is_finite_is_a_failure_not_an_error() -> None:
    r = run_with("nan_gradient")
    assert r.status == "fail"  # type: ignore[attr-defined]
    (check,) = [c for c in r.checks if c.name == "impl_finite"]  # type: ignore[attr-defined]
    assert not check.passed and "returned nan in the gradient at [1, 3]" in check.detail


def test_user_file_imports_its_neighbours_and_errors_point_at_user_code() -> None:
    kernel = IMPLS.parent / "sibling" / "kernel.py"
    r = run_spec(spec(), RunOptions(impl=load(f"{kernel}:cross_entropy"), methods=("analytic",)))
    assert r.status == "pass"
    with pytest.raises(ImplError) as info:
        run_spec(spec(), RunOptions(impl=load(f"{kernel}:broken"), methods=("analytic",)))
    message = str(info.value)
    assert "raised ValueError: bad tile size 7" in message
    assert f'(at {kernel}:17 in _inner: `raise ValueError("bad tile size 7")`)' in message


def test_impl_gradient_is_reported() -> None:
    r = run_with("correct")
    assert "impl" in r.gradients  # type: ignore[attr-defined]
    np.testing.assert_allclose(r.gradients["impl"], r.gradients["analytic"], atol=1e-15)  # type: ignore[attr-defined]


def test_dropped_option_and_self_consistency_are_diagnosed() -> None:
    rows = impl_rows(run_with("ignores_smoothing", label_smoothing=0.2))
    loss, grad = rows["loss"], rows["logits"]
    assert not loss.passed and not grad.passed  # type: ignore[attr-defined]
    assert "matches the reference without label_smoothing" in str(loss.diagnosis)  # type: ignore[attr-defined]
    assert "self-consistent" in str(grad.diagnosis)  # type: ignore[attr-defined]
