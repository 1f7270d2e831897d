"""--impl in fast mode (``engine._FastImpl``, ``impl_scale``): the implementation is called once
on the whole batch, its gradient is compared chunk by chunk, and the self-consistency check
differences its own forward along gradient-based directions. Row chunks are made tiny here so
that every path crosses chunk boundaries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli import fastmode, impl
from gradcheck_cli.core import build_problem
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.model import Spec

DATA = Path(__file__).resolve().parent / "data" / "impl"


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastmode, "ROW_CHUNK_ELEMENTS", 64)  # 3 rows per chunk of 20 classes


def spec(reduction: str = "mean", n: int = 10, k: int = 20, **kw: object) -> Spec:
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(n, k)) * 3
    logits[2, 5] = -np.inf  # a padded class
    labels = rng.integers(0, k, n)
    labels[2] = 4
    return Spec(
        name="s",
        file="s.yaml",
        logits=logits,
        single=False,
        labels=labels,
        reduction=reduction,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def run(target: str, reduction: str = "mean", dtype: str = "float64", **kw: object) -> object:
    return run_spec(
        spec(reduction, **kw),
        RunOptions(impl=impl.load(target), fast=True, dtype=dtype),  # type: ignore[arg-type]
    )


def rows(result: object) -> dict[str, object]:
    return {c.method: c for c in result.comparisons}  # type: ignore[attr-defined]


def failing(result: object) -> set[str]:
    found = {c.quantity for c in result.comparisons if not c.passed}  # type: ignore[attr-defined]
    return found | {c.name for c in result.checks if not c.passed}  # type: ignore[attr-defined]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numpy_protocol_passes_in_fast_mode(reduction: str, dtype: str) -> None:
    r = run(f"{DATA / 'impls.py'}:correct", reduction, dtype)
    assert r.status == "pass", [c for c in r.comparisons if not c.passed]  # type: ignore[attr-defined]
    methods = set(rows(r))
    assert {"impl " + f"{DATA / 'impls.py'}:correct"} <= methods
    assert "impl self-consistency (Richardson differences)" in methods
    assert "called once on the whole batch" in r.method_notes["impl at scale"]  # type: ignore[attr-defined]
    # only the reference is computed for an implementation unless methods are asked for
    assert not any(m.startswith(("analytic", "jacobian", "finite")) for m in methods)


def test_fast_and_full_agree_on_the_loss_and_the_gradient_error() -> None:
    target = f"{DATA / 'impls.py'}:correct"
    fast = run(target).comparisons  # type: ignore[attr-defined]
    full = run_spec(
        spec(), RunOptions(impl=impl.load(target), full=True, methods=("analytic",))
    ).comparisons
    for quantity in ("loss", "logits"):
        (a,) = [c for c in fast if c.quantity == quantity and c.method == f"impl {target}"]
        (b,) = [c for c in full if c.quantity == quantity and c.method == f"impl {target}"]
        assert a.max_abs_error == pytest.approx(b.max_abs_error, rel=1e-6, abs=1e-18)  # type: ignore[attr-defined]
        assert a.worst_index == b.worst_index  # type: ignore[attr-defined]


def test_planted_numpy_bugs_fail_in_fast_mode() -> None:
    r = run(f"{DATA / 'impls.py'}:planted_grad")
    assert r.status == "fail"  # type: ignore[attr-defined]
    assert "logits" in failing(r)


@pytest.mark.parametrize(
    ("dtype", "reduction", "options"),
    [
        ("float64", "mean", {}),
        ("float32", "sum", {}),
        ("float64", "none", {"label_smoothing": 0.1}),
        ("float64", "mean", {"z_loss": 1e-3, "weight": np.linspace(0.5, 2, 20)}),
        ("float32", "mean", {"softcap": 4.0}),
    ],
)
def test_chunked_scales_equal_the_whole_batch(
    dtype: str, reduction: str, options: dict[str, object]
) -> None:
    s = spec(reduction)
    labels = s.labels.copy()  # type: ignore[union-attr]
    labels[7] = -100
    problem = build_problem(
        "softmax_cross_entropy",
        s.logits.astype(dtype),
        labels,
        None,
        reduction,  # type: ignore[arg-type]
        {"ignore_index": -100, **options},
    )
    whole = dataclasses.astuple(impl.scales(problem))
    chunked = dataclasses.astuple(impl.scales(problem, rows_per=3))
    # (float32: the whole batch's derivative scale rounds 1/N to float32 on the way)
    assert chunked == pytest.approx(whole, rel=1e-7 if dtype == "float32" else 1e-12)
    if problem.one_hot and problem.softcap is None:  # the gather shortcut = the general formula
        assert impl._one_hot_parts(problem) == pytest.approx(
            impl._general_parts(problem), rel=1e-6 if dtype == "float32" else 1e-12
        )


torch = pytest.importorskip("torch")
KERNELS = DATA / "torch_kernels.py"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_losses_pass_in_fast_mode(reduction: str, dtype: str) -> None:
    for target in ("torch", f"torch:{KERNELS}:correct"):
        r = run(target, reduction, dtype)
        assert r.status == "pass", [c for c in r.comparisons if not c.passed]  # type: ignore[attr-defined]
        assert {"impl_side_effects", "impl_deterministic"} <= {c.name for c in r.checks}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("function", "reduction", "caught", "text"),
    [
        ("first_grad_output", "none", {"logits"}, "scaled by grad_output[0]"),  # Liger #1298
        ("ignore_grad_output", "mean", {"logits"}, "the backward ignores grad_output"),
        ("inplace", "mean", {"impl_side_effects"}, "changed the logits it received"),
        ("offset_labels", "mean", {"loss", "logits"}, "self-consistent"),
        ("nondeterministic", "mean", {"impl_deterministic"}, "two identical calls differ"),
        ("backward_scaled", "mean", {"directions", "logits"}, "1.01 times the reference"),
    ],
)
def test_planted_torch_bugs_are_caught_in_fast_mode(
    function: str, reduction: str, caught: set[str], text: str
) -> None:
    r = run(f"torch:{KERNELS}:{function}", reduction)
    assert r.status == "fail"  # type: ignore[attr-defined]
    assert caught <= failing(r), failing(r)
    said = [str(c.diagnosis) for c in r.comparisons] + [c.detail for c in r.checks]  # type: ignore[attr-defined]
    assert any(text in line for line in said), said


def test_a_gradient_that_is_nan_is_a_failed_check_not_a_crash() -> None:
    r = run(f"{DATA / 'impls.py'}:nan_gradient")
    (check,) = [c for c in r.checks if c.name == "impl_finite"]  # type: ignore[attr-defined]
    assert not check.passed and "in the gradient at [" in check.detail


def test_determinism_by_fingerprint_calls_again_only_when_results_differ() -> None:
    from gradcheck_cli.torch_native import call_spread, fingerprint

    loss, grad = np.asarray(0.5), np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    calls: list[int] = []

    def again() -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return loss, grad + np.float32(2**-20)

    assert call_spread(loss, grad.copy(), fingerprint(loss, grad), again) == 0.0
    assert calls == []
    changed = grad.copy()
    changed[2, 3] = np.nextafter(changed[2, 3], np.float32(2))
    assert call_spread(loss, changed, fingerprint(loss, grad), again) > 0.0
    assert calls == [1]


@pytest.mark.parametrize("confident", [False, True])
def test_gradient_bound_is_an_upper_bound_and_tight_for_index_labels(confident: bool) -> None:
    from gradcheck_cli.impl_scale import gradient_bound
    from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS

    s = spec("mean")
    logits = s.logits.copy()
    if confident:
        logits[np.arange(10), s.labels] = 15.0  # type: ignore[index]
    problem = build_problem(
        "softmax_cross_entropy", logits, s.labels, None, "mean",
        {"weight": np.linspace(0.5, 2.0, 20)},
    )  # fmt: skip
    true_max = float(np.max(np.abs(METHODS["analytic"](problem, DEFAULT_SETTINGS).grad)))
    bound = gradient_bound(problem, 3, fallback=1.0)
    assert true_max <= bound * (1 + 1e-12)
    assert bound <= 1.5 * true_max  # tight: the label column of the worst row


def test_golden_values_are_checked_at_the_specs_own_inputs_in_fast_mode() -> None:
    """Below float64, fast mode runs on the rounded logits but, as in full mode, golden values
    describe the spec's own float64 inputs (class_weights.yaml: 1e-12-tight golden loss)."""
    from gradcheck_cli.api import load as load_specs

    root = Path(__file__).resolve().parents[1] / "specs"
    (s,) = load_specs(root / "class_weights.yaml")
    r = run_spec(s, RunOptions(fast=True, dtype="float32"))
    (check,) = [c for c in r.checks if c.name == "expect.loss"]
    assert check.passed, check.detail
