"""--impl jax:module:function and --impl optax: JAX losses as they are, differentiated by
jax.vjp with a seeded grad_output (skipped where JAX is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gradcheck_cli as xc
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import ImplError, load
from gradcheck_cli.model import Spec

jax = pytest.importorskip("jax")
pytest.importorskip("optax")

KERNELS = Path(__file__).resolve().parent / "data" / "impl" / "jax_kernels.py"
SPECS = Path(__file__).resolve().parents[1] / "specs"
#: Bundled specs whose options optax has (no class weights, ignore_index, softcap, z-loss).
OPTAX_SPECS = [
    "cat_dog_bird.yaml",
    "batch_mean.yaml",
    "three_class.yaml",
    "reductions.yaml",
    "probability_target.yaml",
    "near_one_hot.yaml",
    "extreme_logits.yaml",
    "tied_maximum.yaml",
    "binary_two_classes.yaml",
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_optax_passes_the_bundled_specs_it_supports(dtype: str) -> None:
    report = xc.check([*(s for name in OPTAX_SPECS for s in xc.load(SPECS / name))], impl="optax",
                      dtype=dtype)  # type: ignore[arg-type]  # fmt: skip
    assert report.passed, report.summary_text()
    assert all("impl grad_output" in r.method_notes for r in report.results)


def test_optax_names_an_option_it_does_not_have() -> None:
    with pytest.raises(ImplError, match="does not accept option 'weight'"):
        (spec,) = xc.load(SPECS / "class_weights.yaml")
        run_spec(spec, RunOptions(impl=load("optax"), methods=("analytic",)))


def spec(reduction: str) -> Spec:
    rng = np.random.default_rng(9)
    return Spec(
        name="s",
        file="s.yaml",
        logits=rng.normal(size=(5, 6)) * 2,
        single=False,
        labels=np.array([0, 3, 5, 1, 2]),
        reduction=reduction,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_jax_function_passes_and_float64_stays_float64(reduction: str) -> None:
    r = run_spec(spec(reduction), RunOptions(impl=load(f"jax:{KERNELS}:cross_entropy")))
    assert r.status == "pass", [c for c in r.comparisons if not c.passed]
    grad = [c for c in r.comparisons if c.quantity == "logits" and c.method.startswith("impl")]
    assert grad[0].max_abs_error < 1e-15  # float64, not silently float32


def test_grad_output_broadcast_is_caught_in_jax_too() -> None:
    r = run_spec(spec("none"), RunOptions(impl=load(f"jax:{KERNELS}:first_grad_output")))
    rows = {c.quantity: c for c in r.comparisons if c.method.startswith("impl")}
    assert r.status == "fail" and "grad_output[0]" in str(rows["logits"].diagnosis)
    assert not jax.config.jax_enable_x64  # x64 only inside each call


def test_devices_are_placed_or_refused_clearly() -> None:
    from gradcheck_cli.impl import ImplError, load

    cpu = load("optax", device="cpu:0")
    assert "cpu" in str(cpu.native.device).lower()  # type: ignore[union-attr]
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ImplError, match=r"--device cuda: JAX sees 0 gpu device\(s\) here"):
            load("optax", device="cuda")
    with pytest.raises(ImplError, match="expected cpu, cuda, cuda:N, gpu or tpu"):
        load("optax", device="mps")
    with pytest.raises(ImplError, match="a NumPy implementation runs where NumPy does"):
        load("gradcheck_cli.torch_adapter:torch_cross_entropy", device="cuda")


def test_optax_has_no_loss_mask_and_its_mean_is_never_empty() -> None:
    """optax's losses take no per-sample mask (``where`` masks classes): loss_mask is an error
    naming it; empty_mean is accepted and changes nothing (every sample counts, so the mean's
    divisor is N >= 1); defaults: torch sets ignore_index, which optax does not have."""
    (masked,) = xc.load(SPECS / "loss_mask.yaml")[:1]
    with pytest.raises(ImplError, match="does not accept option 'weight', 'ignore_index', "
                       "'loss_mask'"):  # fmt: skip
        run_spec(masked, RunOptions(impl=load("optax"), methods=("analytic",)))
    only_mask = spec("mean")
    only_mask = Spec(**{**only_mask.__dict__, "loss_mask": np.ones(5)})
    with pytest.raises(ImplError, match="does not accept option 'loss_mask'"):
        run_spec(only_mask, RunOptions(impl=load("optax"), methods=("analytic",)))
    zero = Spec(**{**spec("mean").__dict__, "empty_mean": "zero"})
    r = run_spec(zero, RunOptions(impl=load("optax")))
    assert r.status == "pass", [c for c in r.comparisons if not c.passed]
    (torch_defaults,) = xc.load(SPECS / "defaults_torch.yaml")
    with pytest.raises(ImplError, match="does not accept option 'ignore_index'"):
        run_spec(torch_defaults, RunOptions(impl=load("optax"), methods=("analytic",)))
