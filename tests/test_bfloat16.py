"""bfloat16 end to end: the spec's dtype, .npy files, the built-in methods, and implementations
returning bfloat16 (NumPy through ml_dtypes, torch.bfloat16, JAX); an accurate kernel passes,
the Liger-Kernel #1268 bug and a zero gradient fail at confident logits."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from gradcheck_cli.api import load as load_specs
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import load
from gradcheck_cli.model import Spec

KERNELS = Path(__file__).resolve().parent / "data" / "impl" / "lowp_kernels.py"


def spec(confident: bool, n: int = 8, k: int = 50) -> Spec:
    """Random logits (p_y about 1/K), or confident ones: z_y = 12 against N(0, 1) elsewhere,
    p_y >= 0.999 in every row."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(n, k))
    labels = rng.integers(0, k, n)
    if confident:
        logits[np.arange(n), labels] = 12.0
    return Spec(
        name="c" if confident else "r", file="s.yaml", logits=logits, single=False,
        labels=labels, dtype="bfloat16",
    )  # fmt: skip


def failing(result: object) -> set[str]:
    return {c.quantity for c in result.comparisons if not c.passed}  # type: ignore[attr-defined]


def test_bundled_style_inline_spec_and_cli_dtype(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("logits: [[1, 2, 0.5]]\nlabel: [1]\ndtype: bfloat16\n")
    (s,) = load_specs(path)
    assert s.dtype == "bfloat16"
    r = run_spec(s)
    assert r.status == "pass"
    dtypes = {c.method: c.dtype for c in r.comparisons}
    assert dtypes["analytic"] == dtypes["jacobian"] == "bfloat16"
    assert dtypes["finite_difference"] == "float64"  # run on float64 up-cast copies


def test_npy_bfloat16_is_read_as_bfloat16(tmp_path: Path) -> None:
    z = np.random.default_rng(0).normal(size=(4, 30)).astype(ml_dtypes.bfloat16)
    np.save(tmp_path / "z.npy", z)  # written as raw 2-byte records ('<V2')
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 3]))
    (tmp_path / "s.yaml").write_text("logits: {file: z.npy}\nlabel: {file: y.npy}\n")
    (s,) = load_specs(tmp_path / "s.yaml")
    assert s.dtype == "bfloat16"
    assert np.array_equal(s.logits.astype(np.float64), z.astype(np.float64))
    assert run_spec(s, RunOptions(methods=("analytic",))).status == "pass"


@pytest.mark.parametrize("confident", [False, True])
def test_an_accurate_numpy_kernel_passes(confident: bool) -> None:
    r = run_spec(spec(confident), RunOptions(impl=load(f"{KERNELS}:accurate"), methods=()))
    assert not failing(r) - {"directions"}, [c for c in r.comparisons if not c.passed]


def test_the_liger_1268_bug_fails_only_at_confident_logits() -> None:
    impl = load(f"{KERNELS}:liger_1268")
    assert "logits" not in failing(run_spec(spec(False), RunOptions(impl=impl, methods=())))
    assert "logits" in failing(run_spec(spec(True), RunOptions(impl=impl, methods=())))


@pytest.mark.parametrize("confident", [False, True])
def test_a_zero_gradient_fails(confident: bool) -> None:
    r = run_spec(spec(confident), RunOptions(impl=load(f"{KERNELS}:zero_gradient"), methods=()))
    assert "logits" in failing(r)


torch = pytest.importorskip("torch")


def test_torch_bfloat16_kernels() -> None:
    for target, confident, fails in (
        ("torch", False, False),  # PyTorch's CPU kernel at random logits
        (f"torch:{KERNELS}:torch_accurate", True, False),
        (f"torch:{KERNELS}:torch_liger_1268", True, True),
    ):
        r = run_spec(spec(confident), RunOptions(impl=load(target), methods=()))
        assert ("logits" in failing(r)) is fails, (target, r.comparisons)
        assert {"impl_side_effects", "impl_deterministic"} <= {c.name for c in r.checks}


def test_fast_mode_holds_bfloat16_kernels_to_the_rounded_model() -> None:
    for target, fails in (
        (f"torch:{KERNELS}:torch_accurate", False),
        (f"torch:{KERNELS}:torch_liger_1268", True),
    ):
        r = run_spec(spec(True), RunOptions(impl=load(target), fast=True))
        assert ("logits" in failing(r)) is fails, (target, r.comparisons)


def test_numerical_derivatives_run_on_float64_upcasts_and_say_so() -> None:
    r = run_spec(spec(False), RunOptions(methods=("analytic", "finite_difference", "complex_step")))
    rows = {c.method: c for c in r.comparisons}
    assert rows["analytic"].dtype == "bfloat16"
    assert rows["finite_difference"].dtype == "float64" == rows["complex_step"].dtype
    assert rows["complex_step"].max_abs_error < 1e-12  # at the rounded logits, in float64
    assert "up-cast copies of the bfloat16 logits" in r.method_notes["finite_difference"]
