"""--impl torch:module:function: PyTorch losses as they are, with their own autograd, a seeded
upstream gradient and side-effect checks; planted bugs from real projects must each be caught
with a message naming the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import load
from gradcheck_cli.model import Spec

torch = pytest.importorskip("torch")

KERNELS = Path(__file__).resolve().parent / "data" / "impl" / "torch_kernels.py"


def spec(reduction: str, **kw: object) -> Spec:
    rng = np.random.default_rng(7)
    return Spec(
        name="s",
        file="s.yaml",
        logits=rng.normal(size=(5, 6)) * 2,
        single=False,
        labels=np.array([0, 3, 5, 1, 2]),
        reduction=reduction,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def run(function: str, reduction: str = "mean", dtype: str = "float64") -> object:
    impl = load(f"torch:{KERNELS}:{function}")
    return run_spec(spec(reduction), RunOptions(impl=impl, methods=("analytic",), dtype=dtype))  # type: ignore[arg-type]


def failing(result: object) -> set[str]:
    rows = {c.quantity for c in result.comparisons if not c.passed}  # type: ignore[attr-defined]
    return rows | {c.name for c in result.checks if not c.passed}  # type: ignore[attr-defined]


@pytest.mark.parametrize("function", ["correct", "f_cross_entropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_correct_native_losses_pass(function: str, reduction: str, dtype: str) -> None:
    r = run(function, reduction, dtype)
    assert r.status == "pass", [c for c in r.comparisons if not c.passed]  # type: ignore[attr-defined]
    assert "grad_output" in r.method_notes["impl grad_output"]  # type: ignore[attr-defined]
    assert {"impl_side_effects", "impl_deterministic"} <= {c.name for c in r.checks}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("function", "reduction", "caught"),
    [
        ("first_grad_output", "none", {"logits"}),  # Liger-Kernel #1298
        ("ignore_grad_output", "mean", {"logits"}),
        ("inplace", "mean", {"impl_side_effects"}),  # Liger-Kernel #272
        ("offset_labels", "mean", {"loss", "logits"}),  # flash-attn bedf8774
        ("nondeterministic", "mean", {"impl_deterministic"}),
    ],
)
def test_planted_bugs_are_caught(function: str, reduction: str, caught: set[str]) -> None:
    r = run(function, reduction)
    assert r.status == "fail"  # type: ignore[attr-defined]
    assert caught <= failing(r), failing(r)


def test_messages_name_the_problem() -> None:
    inplace = run("inplace")
    (effects,) = [c for c in inplace.checks if c.name == "impl_side_effects"]  # type: ignore[attr-defined]
    assert "changed the logits it received (first at [0, 0]" in effects.detail
    shifted = run("offset_labels")
    rows = {c.quantity: c for c in shifted.comparisons if c.method.startswith("impl")}  # type: ignore[attr-defined]
    assert "labels read from an offset" in str(rows["loss"].diagnosis)
    for function, reduction, text in (
        ("first_grad_output", "none", "scaled by grad_output[0]"),
        ("ignore_grad_output", "mean", "the backward ignores grad_output"),
    ):
        rows = {c.quantity: c for c in run(function, reduction).comparisons}  # type: ignore[attr-defined]
        assert text in str(rows["logits"].diagnosis), rows["logits"].diagnosis
    spread = [c for c in run("nondeterministic").checks if c.name == "impl_deterministic"]  # type: ignore[attr-defined]
    assert "two identical calls differ by at most" in spread[0].detail


def test_cli_accepts_native_targets(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    specs = Path(__file__).resolve().parents[1] / "specs"
    result = CliRunner().invoke(
        app, ["run", str(specs / "batch_mean.yaml"), "--impl", f"torch:{KERNELS}:correct"]
    )
    assert result.exit_code == 0, result.output
    bug = CliRunner().invoke(
        app,
        ["run", str(specs / "reductions.yaml"), "--impl", f"torch:{KERNELS}:first_grad_output"],
    )
    assert bug.exit_code == 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_builtin_torch_is_native_and_passes_every_bundled_spec(dtype: str) -> None:
    """--impl torch is the same machinery on F.cross_entropy (and the documented softcap and
    z-loss composition): upstream gradients, side effects and determinism included."""
    import gradcheck_cli as xc

    specs = Path(__file__).resolve().parents[1] / "specs"
    # specs/lowp/ is left out: at confident logits and V >= 32000, F.cross_entropy's float32 CPU
    # kernel itself misses float32's tolerance (its sum of exponentials is swamped by the label's)
    report = xc.check(str(specs / "*.yaml"), impl="torch", dtype=dtype)  # type: ignore[arg-type]
    assert report.passed, report.summary_text()
    checked = [r for r in report.results if r.status == "pass"]
    assert all("impl grad_output" in r.method_notes for r in checked)
    assert all(any(c.name == "impl_side_effects" for c in r.checks) for r in checked)


def test_views_catch_a_kernel_that_ignores_storage_offsets() -> None:
    from gradcheck_cli.impl import NativeChecks

    options = RunOptions(
        impl=load(f"torch:{KERNELS}:ignores_offsets"),
        methods=("analytic",),
        native=NativeChecks(views=True),
    )
    r = run_spec(spec("mean"), options)
    (views,) = [c for c in r.checks if c.name == "impl_views"]
    assert r.status == "fail" and not views.passed
    good = RunOptions(
        impl=load(f"torch:{KERNELS}:correct"),
        methods=("analytic",),
        native=NativeChecks(views=True),
    )
    assert run_spec(spec("mean"), good).status == "pass"


def test_allow_inplace_and_nondeterministic_tol() -> None:
    from gradcheck_cli.impl import NativeChecks

    loose = NativeChecks(nondeterministic_tol=1e-6)
    options = RunOptions(
        impl=load(f"torch:{KERNELS}:nondeterministic"), methods=("analytic",), native=loose
    )
    r = run_spec(spec("mean"), options)
    assert all(c.passed for c in r.checks if c.name == "impl_deterministic")


def test_an_absent_device_is_a_clear_error() -> None:
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app
    from gradcheck_cli.impl import ImplError

    if not torch.cuda.is_available():
        with pytest.raises(ImplError, match="--device cuda: this machine has 0 CUDA device"):
            load("torch", device="cuda")
    with pytest.raises(ImplError, match="expected cpu, cuda, cuda:N or mps"):
        load("torch", device="tpu")
    result = CliRunner().invoke(app, ["run", "--device", "cuda"])
    assert (
        result.exit_code == 2
        and "--device applies to --impl torch:... and jax:... only" in result.stderr
    )


def test_compile_checks_the_compiled_function_on_its_own() -> None:
    eager = load(f"torch:{KERNELS}:correct")
    twin = load(f"torch:{KERNELS}:correct", compile_backend="aot_eager")
    assert twin.name.endswith("[compiled: aot_eager]")
    r = run_spec(spec("none"), RunOptions(impl=eager, compiled=twin, methods=("analytic",)))
    assert r.status == "pass", [c for c in r.comparisons if not c.passed]
    methods = {c.method for c in r.comparisons}
    assert {f"impl {eager.name}", f"impl {twin.name}"} <= methods
    assert {"impl_side_effects_compiled", "impl_deterministic_compiled"} <= {
        c.name for c in r.checks
    }


def test_a_kernel_that_fails_only_under_compile_is_caught() -> None:
    target = f"torch:{KERNELS}:compile_diverges"
    twin = load(target, compile_backend="aot_eager")
    r = run_spec(spec("mean"), RunOptions(impl=load(target), compiled=twin, methods=("analytic",)))
    assert r.status == "fail"
    eager = [c for c in r.comparisons if c.method == f"impl {target}"]
    assert eager and all(c.passed for c in eager)  # the eager function passes on its own
    compiled = {c.quantity: c for c in r.comparisons if c.method == f"impl {twin.name}"}
    assert not compiled["loss"].passed and not compiled["logits"].passed


def test_a_backend_that_fails_is_a_failed_check_and_an_unknown_one_an_error() -> None:
    from gradcheck_cli.impl import ImplError

    with pytest.raises(ImplError, match="backend"):
        load("torch", compile_backend="no_such_backend")

    def broken(gm: object, inputs: object) -> object:
        raise RuntimeError("the backend broke")

    twin = load("torch", compile_backend="aot_eager")
    twin.native.function = torch.compile(twin.native.function.__wrapped__, backend=broken)  # type: ignore[union-attr]
    r = run_spec(spec("mean"), RunOptions(impl=load("torch"), compiled=twin, methods=("analytic",)))
    (check,) = [c for c in r.checks if c.name == "impl_compiled"]
    assert not check.passed and "the backend broke" in check.detail


def test_compile_without_a_compiler_says_so_and_checks_the_eager_function(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    specs = Path(__file__).resolve().parents[1] / "specs"
    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    exe = Path(sys.executable).parent / "xentcheck"
    out = subprocess.run(
        [str(exe), "run", str(specs / "cat_dog_bird.yaml"), "--impl", "torch", "--compile", "-v"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch.compile cannot compile on this machine" in out.stdout
    assert "No working C++ compiler" in out.stdout


def test_compile_needs_a_torch_implementation() -> None:
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    specs = Path(__file__).resolve().parents[1] / "specs"
    for extra in ([], ["--impl", f"{KERNELS.parent / 'impls.py'}:correct"]):
        result = CliRunner().invoke(
            app, ["run", str(specs / "cat_dog_bird.yaml"), "--compile", *extra]
        )
        assert result.exit_code == 2, result.output
        assert "--compile" in result.output
