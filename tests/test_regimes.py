"""regime: logits and labels built from a seed (gradcheck_cli.regimes), the loader's key, and the
bundled low-precision specs (specs/lowp/) against an accurate kernel and the Liger-Kernel #1268
bug."""

from __future__ import annotations

import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from gradcheck_cli.api import load as load_specs
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.errors import SpecError
from gradcheck_cli.model import Spec
from gradcheck_cli.regimes import Regime, RegimeError, generate
from gradcheck_cli.spec import load_text

ROOT = Path(__file__).resolve().parents[1]
LOWP = ROOT / "specs" / "lowp"
KERNELS = ROOT / "tests" / "data" / "impl" / "lowp_kernels.py"


def probs(z: np.ndarray) -> np.ndarray:
    w = z.astype(np.float64)
    e = np.exp(w - w.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# The generators


@pytest.mark.parametrize("p", [0.99, 0.999, 0.9999, 0.05])
def test_confident_rows_reach_p_exactly_in_float64(p: float) -> None:
    z, y = generate(Regime("confident", rows=64, num_classes=1000, seed=3, p=p))
    assert z.dtype == np.float64 and z.shape == (64, 1000) and y.shape == (64,)
    got = probs(z)[np.arange(64), y]
    assert np.max(np.abs(got - p)) < 1e-12


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("p", [0.99, 0.999])
def test_confident_rows_in_low_precision_never_fall_below_p(dtype: str, p: float) -> None:
    z, y = generate(Regime("confident", rows=32, num_classes=32000, seed=0, p=p), dtype)
    assert z.dtype.name == dtype
    got = probs(z)[np.arange(32), y]  # the logits as the check sees them, in float64
    assert np.all(got >= p) and np.all(1 - got > 0.85 * (1 - p))


def test_same_seed_same_logits_and_labels_other_seed_others() -> None:
    r = Regime("tied", rows=9, num_classes=7, seed=11)
    (z1, y1), (z2, y2) = generate(r), generate(r)
    assert np.array_equal(z1, z2) and np.array_equal(y1, y2)
    z3, _ = generate(Regime("tied", rows=9, num_classes=7, seed=12))
    assert not np.array_equal(z1, z3)


def test_the_draws_do_not_depend_on_the_dtype_only_their_rounding() -> None:
    r = Regime("large-gap", rows=5, num_classes=300, seed=1, scale=10.0)
    wide, y64 = generate(r)
    low, y16 = generate(r, "bfloat16")
    assert np.array_equal(y64, y16)
    assert np.array_equal(wide.astype(np.float32).astype(ml_dtypes.bfloat16), low)
    assert 5 < np.std(wide) < 15


def test_masked_lanes_are_minus_inf_never_at_a_label() -> None:
    z, y = generate(Regime("masked", rows=200, num_classes=50304, seed=0, pad=47), "float32")
    assert np.all(z[:, -47:] == -np.inf) and np.all(np.isfinite(z[:, :-47]))
    assert np.all(y < 50304 - 47)
    zc, yc = generate(Regime("masked", rows=20, num_classes=103, seed=0, pad=3, p=0.9))
    assert np.max(np.abs(probs(zc)[np.arange(20), yc] - 0.9)) < 1e-12


def test_uniform_and_tied() -> None:
    z, _ = generate(Regime("uniform", rows=3, num_classes=10))
    assert np.all(probs(z) == 0.1)
    z, y = generate(Regime("tied", rows=50, num_classes=20, seed=2), "float16")
    top2 = np.sort(z.astype(np.float64), axis=1)[:, -3:]
    assert np.all(top2[:, 1] == top2[:, 2]) and np.all(top2[:, 0] < top2[:, 1])
    assert np.all(z[np.arange(50), y] == top2[:, 2])


def test_ignored_rows_get_ignore_index_and_other_labels_never_do() -> None:
    _, y = generate(Regime("uniform", rows=40, num_classes=5, ignored=0.25), ignore_index=2)
    assert np.sum(y == 2) == 10 and set(y[y != 2]) <= {0, 1, 3, 4}


@pytest.mark.parametrize(
    ("regime", "field"),
    [
        (Regime("sure", rows=2, num_classes=3), "kind"),
        (Regime("confident", rows=2, num_classes=3), "p"),
        (Regime("confident", rows=2, num_classes=3, p=0.3), "p"),
        (Regime("confident", rows=2, num_classes=3, p=1.0), "p"),
        (Regime("uniform", rows=2, num_classes=3, p=0.9), "p"),
        (Regime("uniform", rows=0, num_classes=3), "rows"),
        (Regime("uniform", rows=2, num_classes=1), "num_classes"),
        (Regime("masked", rows=2, num_classes=3, pad=3), "pad"),
        (Regime("large-gap", rows=2, num_classes=3, scale=-1.0), "scale"),
        (Regime("uniform", rows=2, num_classes=3, ignored=0.5), "ignored"),
    ],
)
def test_invalid_regimes_name_their_parameter(regime: Regime, field: str) -> None:
    with pytest.raises(RegimeError) as info:
        generate(regime)
    assert info.value.field == field


def test_llm_size_is_fast_and_stays_in_float32() -> None:
    start = time.perf_counter()
    z, y = generate(Regime("confident", rows=1024, num_classes=32000, p=0.999), "float32")
    assert z.dtype == np.float32 and y.dtype == np.int64
    assert time.perf_counter() - start < 5  # about 0.5 s here (4096 x 32000: about 2 s)


# --------------------------------------------------------------------------------------------
# The loader


def one(text: str) -> Spec | SpecError:
    (item,) = load_text(text, "s.yaml")
    return item


def test_a_regime_spec_combines_with_the_other_keys() -> None:
    s = one(
        "regime: {kind: confident, p: 0.999, rows: 16, num_classes: 300, seed: 4, ignored: 0.25}\n"
        "dtype: bfloat16\nignore_index: -100\nlabel_smoothing: 0.1\nreduction: sum\n"
    )
    assert isinstance(s, Spec), str(s)
    assert s.logits.shape == (16, 300) and s.logits.dtype.name == "bfloat16"
    assert s.dtype == "bfloat16" and s.reduction == "sum" and not s.single
    assert s.labels is not None and np.sum(s.labels == -100) == 4
    assert run_spec(s).status == "pass"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "regime: {kind: sure, rows: 2, num_classes: 3}\n",
            "s.yaml:1:16: regime.kind: expected one of confident | large-gap | masked | uniform"
            " | tied, found 'sure'",
        ),
        (
            "regime: {kind: confident, p: 1.5, rows: 2, num_classes: 3}\n",
            "s.yaml:1:30: regime.p: expected a probability in (1/3, 1) = (0.333333, 1), found 1.5",
        ),
        (
            "regime: {kind: uniform, num_classes: 3}\n",
            "s.yaml:1:9: regime.rows: missing required key: number of rows N (integer >= 1)",
        ),
        (
            "regime: {kind: uniform, rows: 2, num_classes: 3}\nlogits: [[1, 2, 3]]\n",
            "s.yaml:2:1: logits: give either 'regime' or 'logits', not both (the regime builds the"
            " logits and the labels)",
        ),
        (
            "regime: {kind: uniform, rows: 2, num_classes: 3}\nlabel: [0, 1]\n",
            "s.yaml:2:1: label: give either 'regime' or 'label', not both (the regime builds the"
            " logits and the labels)",
        ),
        (
            "regime: {kind: uniform, rows: 2.5, num_classes: 3}\n",
            "s.yaml:1:31: regime.rows: expected an integer, found number 2.5",
        ),
        (
            "regime: {kind: uniform, rows: 2, clases: 3}\n",
            "s.yaml:1:34: regime.clases: unknown key; did you mean 'num_classes'?",
        ),
        (
            "regime: {kind: uniform, rows: 2, num_classes: 3, ignored: 0.5}\n",
            "s.yaml:1:59: regime.ignored: needs the spec's ignore_index (e.g. ignore_index: -100)",
        ),
        (
            "regime: {kind: large-gap, scale: 1.0e5, rows: 2, num_classes: 30}\ndtype: float16\n",
            "overflow float16 (largest 65504): lower the scale",
        ),
        (
            "regime: {kind: uniform, rows: 100000, num_classes: 32000}\n",
            "s.yaml:1:31: regime.rows: the logits would take 24,414.1 MiB in float64, more than"
            " the limit of 640 MiB (--max-array-mb)",
        ),
        (
            "loss: sigmoid_cross_entropy\nregime: {kind: uniform, rows: 2, num_classes: 3}\n",
            "s.yaml:2:9: regime: regime applies to loss softmax_cross_entropy (it draws class"
            " labels)",
        ),
    ],
)
def test_loader_errors_are_located(text: str, expected: str) -> None:
    item = one(text)
    assert isinstance(item, SpecError)
    assert expected in str(item), str(item)


def test_classes_must_agree_with_the_regime() -> None:
    item = one("regime: {kind: uniform, rows: 2, num_classes: 3}\nnum_classes: 4\n")
    assert "num_classes is 4 but the logits have 3 classes" in str(item)


# --------------------------------------------------------------------------------------------
# The bundled low-precision specs


def lowp_specs() -> list[Spec]:
    specs = [s for path in sorted(LOWP.glob("*.yaml")) for s in load_specs(path)]
    assert len(specs) == 8 and all(isinstance(s, Spec) for s in specs)
    return specs


def confident_without_smoothing(s: Spec) -> bool:
    return "-p." in s.name and not s.label_smoothing


def failing(result: object, impl_only: bool = False) -> set[str]:
    return {
        c.quantity
        for c in result.comparisons  # type: ignore[attr-defined]
        if not c.passed and (not impl_only or c.method.startswith("impl"))
    }


def test_the_bundled_lowp_specs_pass_in_their_dtypes() -> None:
    specs = lowp_specs()
    assert {s.dtype for s in specs} == {"bfloat16", "float16"}
    assert {s.logits.shape[1] for s in specs} == {32000, 50257, 50304}
    assert all(run_spec(s).status == "pass" for s in specs)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kernel", ["torch_accurate", "torch_liger_1268"])
def test_lowp_specs_against_an_accurate_kernel_and_the_liger_1268_bug(kernel: str) -> None:
    """Element by element (full mode), what xentcheck run specs/lowp/ --full --impl
    torch:tests/data/impl/lowp_kernels.py:KERNEL reports for the kernel."""
    from gradcheck_cli.impl import load

    impl = load(f"torch:{KERNELS}:{kernel}")
    caught = []
    for s in lowp_specs():
        r = run_spec(s, RunOptions(impl=impl, methods=("analytic",), full=True))
        assert r.status != "error", r.message
        assert not failing(r) - {"logits"}, (s.name, r.comparisons)
        if "logits" in failing(r, impl_only=True):
            caught.append(s.name)
    expected = [] if kernel == "torch_accurate" else [
        s.name for s in lowp_specs() if confident_without_smoothing(s)
    ]  # fmt: skip
    assert caught == expected


@pytest.mark.parametrize("kernel", ["torch_accurate", "torch_liger_1268"])
def test_fast_mode_reaches_the_same_verdicts_on_the_lowp_specs(kernel: str) -> None:
    """The default mode for these sizes (fast: the rounded model's floor from a tight bound on
    max |gradient|, not the gradient scale): the same specs are caught as element by element."""
    from gradcheck_cli.impl import load

    impl = load(f"torch:{KERNELS}:{kernel}")
    caught = [
        s.name
        for s in lowp_specs()
        if "logits" in failing(run_spec(s, RunOptions(impl=impl, fast=True)), impl_only=True)
    ]
    expected = [] if kernel == "torch_accurate" else [
        s.name for s in lowp_specs() if confident_without_smoothing(s)
    ]  # fmt: skip
    assert caught == expected
