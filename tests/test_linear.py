"""``linear:`` specs (a fused lm_head + softmax cross-entropy) and ``--impl`` on fused linear
cross-entropy kernels.

Covered: loading (inline arrays in the (V, D) and (D, V) layouts, located errors), the chunked
float64 reference of ``methods.linear`` against a direct NumPy closed form, its error budget
(``Roundoff``) against the naive baseline and a planted bfloat16-sized error, ``--impl`` end to
end on the correct and planted-bug kernels of ``examples/fused_linear_ce.py`` (with ``--chunks``),
the built-in ``--impl torch``/``optax`` fused twins, the NumPy and JAX protocols, the reference's
own directional check on the chunked path (logits never held) and ``--chunks`` errors.

Sizes are small: a materialised case is N = 12, D = 8, V = 160; the chunked path (the spec's
logits are a zero-strided placeholder when ``fastmode.needs_fast(N, V)``) is N = 8, D = 8,
V = 8000 (N V^2 = 5.12e8 > 5e8).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import gradcheck_cli as xc
from gradcheck_cli.cli import app
from gradcheck_cli.core import lowp
from gradcheck_cli.core.layer import Layer
from gradcheck_cli.core.softmax_ce import CrossEntropyProblem
from gradcheck_cli.errors import SpecError
from gradcheck_cli.linear_check import kernel_inputs
from gradcheck_cli.methods import linear as linear_methods
from gradcheck_cli.model import Spec
from gradcheck_cli.spec import load_file, load_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fused_linear_ce.py"
THREE_CLASS = ROOT / "specs" / "three_class.yaml"
runner = CliRunner()

# The worked example of specs/linear/softmax_layer.yaml: h = (0.1, 0.5, 0.4), a (V, D) = (5, 3)
# weight (row v = class v's weights), label 2.
WORKED_H = np.array([0.1, 0.5, 0.4])
WORKED_W = np.array(
    [[0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 0.1], [0.11, 0.12, 0.13, 0.14, 0.15]]
).T
WORKED_P = np.array([0.19091352, 0.20353145, 0.21698333, 0.23132428, 0.15724743])
WORKED_LOSS = 1.5279347484961026
WORKED = """\
name: worked
linear:
  hidden: [0.1, 0.5, 0.4]
  weight:
    - [0.1, 0.6, 0.11]
    - [0.2, 0.7, 0.12]
    - [0.3, 0.8, 0.13]
    - [0.4, 0.9, 0.14]
    - [0.5, 0.1, 0.15]
label: 2
"""

#: A generated case whose (12, 160) logits are materialised.
SMALL = "{seed: %d, rows: 12, hidden_size: 8, vocab_size: 160, margin: 4}"
#: A generated case on the chunked path (the logits are never held).
LARGE = "{seed: %d, rows: 8, hidden_size: 8, vocab_size: 8000, margin: 6}"
IGNORED_LABELS = "[0, 1, -100, 3, 4, 5, 6, -100, 8, 9, 10, -100]"


# --------------------------------------------------------------------------------------------
# Helpers


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def only_spec(text: str) -> Spec:
    (item,) = load_text(text, "s.yaml")
    assert isinstance(item, Spec), str(item)
    return item


def run(*args: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    """``xentcheck run ARGS --format json --quiet``: exit code, results by name, stderr."""
    result = runner.invoke(app, ["run", *args, "--format", "json", "--quiet"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    report = json.loads(result.stdout)
    return result.exit_code, {r["name"]: r for r in report["results"]}, result.stderr


def impl_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["comparisons"] if c["method"].startswith("impl")]


def chunk_of(row: dict[str, Any]) -> int | None:
    found = re.search(r"\[chunks=(\d+)\]$", row["method"])
    return None if found is None else int(found.group(1))


def failing(result: dict[str, Any], chunks: int | None = None) -> set[str]:
    """The impl quantities that failed (of the call with ``chunks``, when given)."""
    return {
        c["quantity"]
        for c in impl_rows(result)
        if not c["passed"] and (chunks is None or chunk_of(c) == chunks)
    }


def all_passed(results: dict[str, dict[str, Any]]) -> None:
    for name, r in results.items():
        bad = [(c["quantity"], c["method"]) for c in r["comparisons"] if not c["passed"]]
        bad += [c["name"] for c in r["checks"] if not c["passed"]]
        assert r["status"] == "pass", (name, r["message"], bad)


def torch_kernel(name: str) -> str:
    pytest.importorskip("torch")
    return f"torch:{EXAMPLE}:{name}"


# --------------------------------------------------------------------------------------------
# 1. Loading


def test_inline_linear_block_is_a_fused_layer_in_the_vd_layout() -> None:
    """The (V, D) weight must be stored transposed as (D, V), with the layer marked fused."""
    spec = only_spec(
        "linear:\n"
        "  hidden: [[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]\n"
        "  weight: [[0.1, -0.2], [0.3, 0.4], [0.5, 0.6], [0.7, -0.8]]\n"
        "  bias: [0.0, 0.1, -0.1, 0.2]\n"
        "label: [3, 0, 1]\n"
    )
    layer = spec.layer
    assert layer is not None and layer.fused and layer.layout == "vd"
    assert layer.shape == (3, 2, 4)
    given = np.array([[0.1, -0.2], [0.3, 0.4], [0.5, 0.6], [0.7, -0.8]])
    np.testing.assert_array_equal(layer.weights, given.T)
    np.testing.assert_array_equal(layer.given_weight(layer.weights), given)
    assert layer.bias is not None
    np.testing.assert_array_equal(layer.bias, [0.0, 0.1, -0.1, 0.2])
    assert layer.names() == {"weights": "weight", "bias": "bias", "inputs": "hidden"}
    np.testing.assert_allclose(spec.logits, layer.inputs @ given.T + layer.bias, rtol=1e-15)
    assert spec.dtype == "float64" and not spec.single


def test_weight_layout_dv_takes_the_weight_as_given() -> None:
    """weight_layout: dv must store the (D, V) weight untransposed and give the same logits."""
    dv = only_spec(
        "linear:\n"
        "  hidden: [[0.5, -1.0], [2.0, 0.25]]\n"
        "  weight: [[0.1, -0.2, 0.3], [0.5, 0.6, -0.7]]\n"
        "  weight_layout: dv\n"
        "label: [2, 0]\n"
    )
    vd = only_spec(
        "linear:\n"
        "  hidden: [[0.5, -1.0], [2.0, 0.25]]\n"
        "  weight: [[0.1, 0.5], [-0.2, 0.6], [0.3, -0.7]]\n"
        "label: [2, 0]\n"
    )
    assert dv.layer is not None and vd.layer is not None
    assert dv.layer.layout == "dv" and dv.layer.fused
    np.testing.assert_array_equal(dv.layer.weights, [[0.1, -0.2, 0.3], [0.5, 0.6, -0.7]])
    np.testing.assert_array_equal(dv.layer.weights, vd.layer.weights)
    np.testing.assert_array_equal(dv.logits, vd.logits)


def test_worked_example_loss_and_weight_gradient_in_the_vd_layout() -> None:
    """The seed-004 case: its loss, and dL/dweight[v, d] = (p_v - y_v) h_d shaped (V, D)."""
    (result,) = xc.check(WORKED).results
    assert result.status == "pass"
    assert result.shape == (5,)
    assert isinstance(result.loss, float)
    np.testing.assert_allclose(result.loss, WORKED_LOSS, rtol=1e-12)
    assert result.probs is not None
    np.testing.assert_allclose(result.probs, WORKED_P, atol=5e-9)
    z = WORKED_W @ WORKED_H
    p = np.exp(z - z.max()) / np.sum(np.exp(z - z.max()))
    y = np.eye(5)[2]
    expected = (p - y)[:, None] * WORKED_H[None, :]  # (V, D)
    weight = result.parameter_gradients["weight"]
    for method in ("analytic", "jacobian", "finite_difference"):
        got = weight[method]
        assert got is not None and got.shape == (5, 3), method
        np.testing.assert_allclose(
            got, expected, rtol=1e-7 if method == "finite_difference" else 1e-14
        )
    hidden = result.parameter_gradients["hidden"]["analytic"]
    assert hidden is not None
    np.testing.assert_allclose(np.ravel(hidden), WORKED_W.T @ (p - y), rtol=1e-13, atol=1e-16)


def test_worked_example_through_the_command_line(tmp_path: Path) -> None:
    """xentcheck run must report the golden loss and the (V, D) weight gradient in JSON."""
    code, results, _ = run(str(write(tmp_path, WORKED)))
    assert code == 0
    r = results["worked"]
    assert r["status"] == "pass"
    assert abs(r["loss"] - WORKED_LOSS) <= 1e-12 * WORKED_LOSS
    grad = np.array(r["parameter_gradients"]["weight"]["analytic"])
    np.testing.assert_allclose(grad[:, 0], (WORKED_P - np.eye(5)[2]) * 0.1, atol=1e-9)
    assert {c["quantity"] for c in r["comparisons"]} == {"logits", "weight", "hidden"}


def test_bundled_linear_specs_pass() -> None:
    """The bundled worked example (golden loss and probabilities) and option cases must pass."""
    code, results, _ = run(str(ROOT / "specs" / "linear"))
    assert code == 0
    all_passed(results)
    r = results["softmax-layer-linear"]
    assert {"expect.loss", "expect.probs"} <= {c["name"] for c in r["checks"]}


BAD_LINEAR = [
    pytest.param(
        "linear:\n  hidden: [0.1, 0.5]\nlabel: 0\n",
        "2:3: linear.weight: missing required key",
        id="missing-weight",
    ),
    pytest.param(
        "linear:\n  hidden: [0.1, 0.5]\n  weight: [[1, 2, 3], [4, 5, 6], [7, 8, 9]]\nlabel: 0\n",
        "3:11: linear.weight: expected shape (V, D) with D = 2 (one row per class; "
        "weight_layout: vd), found shape (3, 3)",
        id="wrong-shape-vd",
    ),
    pytest.param(
        "linear:\n  hidden: [0.1, 0.5]\n  weight: [[1, 2], [3, 4], [5, 6]]\n"
        "  weight_layout: dv\nlabel: 0\n",
        "3:11: linear.weight: expected shape (D, V) with D = 2 (one row per hidden feature; "
        "weight_layout: dv), found shape (3, 2)",
        id="wrong-shape-dv",
    ),
    pytest.param(
        "linear:\n  seed: 1\n  rows: 2\n  hidden_size: 2\n  vocab_size: 3\n  hidden: [0.1, 0.5]\n",
        "6:3: linear.hidden: a generated linear block (seed) builds the arrays: give either "
        "'seed' or 'hidden'/'weight'/'bias'",
        id="seed-and-hidden",
    ),
    pytest.param(
        "linear:\n  hidden: [0.1, 0.5]\n  weight: [[1, 2], [3, 4]]\n  margin: 3\nlabel: 0\n",
        "4:3: linear.margin: applies only with 'seed' (generated)",
        id="margin-without-seed",
    ),
    pytest.param(
        "logits: [1, 2]\nlinear:\n  hidden: [0.1, 0.5]\n  weight: [[1, 2], [3, 4]]\nlabel: 0\n",
        "1:1: logits: give either 'linear' or 'logits', not both",
        id="with-logits",
    ),
    pytest.param(
        "loss: sigmoid_cross_entropy\nlinear:\n  hidden: [0.1, 0.5]\n  weight: [[1, 2], [3, 4]]\n"
        "label: 0\n",
        "3:3: linear: linear applies to loss softmax_cross_entropy (an lm_head's softmax)",
        id="sigmoid",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_LINEAR)
def test_bad_linear_blocks_are_located_errors(tmp_path: Path, text: str, expected: str) -> None:
    """Each mistake must be an error at its file:line:column and field, never a crash."""
    path = write(tmp_path, text, "s.yaml")
    (item,) = load_file(path, "s.yaml")
    assert isinstance(item, SpecError)
    assert str(item) == f"s.yaml:{expected}"
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}:{expected}\n"


# --------------------------------------------------------------------------------------------
# 2. The chunked reference against a direct closed form


def closed_form(
    h: np.ndarray,
    w_vd: np.ndarray,
    b: np.ndarray,
    labels: np.ndarray,
    reduction: str,
    upstream: np.ndarray | float | None = None,
    ignore: int | None = None,
    smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    class_weights: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The loss and dL/dhidden (N, D), dL/dweight (V, D), dL/dbias of the whole batch at once,
    written out from docs (core.softmax_ce's formula): q = (1 - a) w_y onehot(y) + (a / V) w,
    ce = lse sum(q) - q.z', z-loss s lse^2, mean scales 1 / sum m w_y and 1 / sum m."""
    n, v = h.shape[0], w_vd.shape[0]
    z = h @ w_vd.T + b
    zc = z if softcap is None else softcap * np.tanh(z / softcap)
    top = zc.max(axis=1, keepdims=True)
    lse = (top + np.log(np.sum(np.exp(zc - top), axis=1, keepdims=True)))[:, 0]
    p = np.exp(zc - lse[:, None])
    valid = np.ones(n, dtype=bool) if ignore is None else labels != ignore
    safe = np.where(valid, labels, 0)
    cw = np.ones(v) if class_weights is None else class_weights
    q = smoothing / v * np.tile(cw, (n, 1))
    q[np.arange(n), safe] += (1 - smoothing) * cw[safe]
    q[~valid] = 0.0
    ce = lse * q.sum(axis=1) - np.sum(q * zc, axis=1)
    zl = np.where(valid, z_loss * lse**2, 0.0)
    m = np.ones(n) if mask is None else mask
    if reduction == "mean":
        alpha = m / np.sum((m * cw[safe])[valid])
        beta = m / np.sum(m[valid])
    else:
        alpha = beta = m
    per = alpha * ce + beta * zl
    loss = per if reduction == "none" else np.asarray(per.sum())
    g = alpha[:, None] * (q.sum(axis=1)[:, None] * p - q) + (beta * 2 * z_loss * lse)[:, None] * p
    g[~valid] = 0.0
    if softcap is not None:
        g = g * (1 - (zc / softcap) ** 2)
    if upstream is not None:
        g = g * np.broadcast_to(upstream, (n,))[:, None]
    return loss, g @ w_vd, g.T @ h, g.sum(axis=0)


def _case(seed: int = 3, n: int = 11, d: int = 5, v: int = 13) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, v, n)
    labels[[2, 7]] = -100
    mask = rng.uniform(0.0, 1.0, n)
    mask[4] = 0.0
    return {
        "h": rng.standard_normal((n, d)),
        "w": rng.standard_normal((v, d)),
        "b": rng.standard_normal(v),
        "labels": labels,
        "class_weights": rng.uniform(0.5, 2.0, v),
        "mask": mask,
        "upstream": rng.uniform(0.5, 2.0, n),
    }


OPTION_SETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ignore": {"ignore": -100},
    "everything": {
        "ignore": -100,
        "smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 3.0,
        "class_weights": True,
        "mask": True,
    },
}


Built = tuple[Layer, CrossEntropyProblem, dict[str, Any]]


def _problem(c: dict[str, np.ndarray], reduction: str, opts: dict[str, Any]) -> Built:
    """The layer, the template problem (placeholder logits) and the closed form's options."""
    labels = c["labels"] if "ignore" in opts else np.where(c["labels"] < 0, 0, c["labels"])
    layer = Layer(c["h"], c["w"].T, c["b"], fused=True, layout="vd")
    kw = {
        **opts,
        "class_weights": c["class_weights"] if opts.get("class_weights") else None,
        "mask": c["mask"] if opts.get("mask") else None,
    }
    problem = CrossEntropyProblem(
        layer.logits(),
        labels=labels,
        reduction=reduction,  # type: ignore[arg-type]
        ignore_index=kw.get("ignore"),
        label_smoothing=kw.get("smoothing", 0.0),
        z_loss=kw.get("z_loss", 0.0),
        softcap=kw.get("softcap"),
        weight=kw["class_weights"],
        loss_mask=kw["mask"],
    )
    return layer, linear_methods.template_problem(problem), {**kw, "labels": labels}


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("upstream", [False, True])
def test_reference_in_chunks_matches_the_closed_form(
    reduction: str, options: str, upstream: bool
) -> None:
    """4 chunks of <= 3 rows must give the whole batch's loss, dH, dW, db (scales, upstream)."""
    c = _case()
    layer, template, kw = _problem(c, reduction, OPTION_SETS[options])
    up: np.ndarray | float | None = None
    if upstream:
        up = c["upstream"] if reduction == "none" else 1.5
    ref = linear_methods.reference(
        layer, template, None if up is None else np.asarray(up), rows_per=3
    )
    loss, d_h, d_w, d_b = closed_form(
        c["h"],
        c["w"],
        c["b"],
        kw["labels"],
        reduction,
        up,
        ignore=kw.get("ignore"),
        smoothing=kw.get("smoothing", 0.0),
        z_loss=kw.get("z_loss", 0.0),
        softcap=kw.get("softcap"),
        class_weights=kw["class_weights"],
        mask=kw["mask"],
    )
    assert ref.loss.shape == loss.shape
    assert _rel(ref.loss, loss) < 1e-13
    assert ref.grads["weights"].shape == (5, 13)  # internal (D, V)
    assert _rel(ref.grads["inputs"], d_h) < 1e-13
    assert _rel(ref.grads["weights"].T, d_w) < 1e-13
    assert _rel(ref.grads["bias"], d_b) < 1e-13
    np.testing.assert_allclose(
        linear_methods.forward_loss(layer, template, rows_per=3), ref.loss, rtol=1e-14
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_reference_does_not_depend_on_the_chunk_size(reduction: str) -> None:
    """1, 5 or N rows per chunk (and the default) must give the same loss and gradients."""
    c = _case(seed=9, n=17)
    layer, template, _ = _problem(c, reduction, OPTION_SETS["everything"])
    results = [linear_methods.reference(layer, template, rows_per=r) for r in (1, 5, 17, None)]
    first = results[0]
    for other in results[1:]:
        assert _rel(other.loss, first.loss) < 1e-14
        for key in ("inputs", "weights", "bias"):
            assert _rel(other.grads[key], first.grads[key]) < 1e-14, key
    assert [s.stop - s.start for s in linear_methods.row_chunks(17, 13, 5)] == [5, 5, 5, 2]


# --------------------------------------------------------------------------------------------
# 3. The error budget


def _confident_layer(n: int = 48, d: int = 16, v: int = 500) -> tuple[Layer, CrossEntropyProblem]:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((v, d)) / np.sqrt(d)
    labels = rng.integers(0, v, n)
    h = rng.standard_normal((n, d)) + 8 * w[labels] / np.sum(w[labels] ** 2, axis=1)[:, None]
    b = 0.1 * rng.standard_normal(v)
    layer = Layer(h, w.T, b, fused=True, layout="vd")
    placeholder = np.broadcast_to(np.zeros(()), (n, v))
    problem = CrossEntropyProblem(placeholder, labels=labels)
    return layer, linear_methods.template_problem(problem)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_naive_baseline_stays_within_four_budgets(dtype: str) -> None:
    """The naive kernel in the dtype must fit k = 4 budgets everywhere, or correct ones fail."""
    lowp.register(dtype)
    layer, template = _confident_layer()
    _, wide = kernel_inputs(layer, dtype)
    ref = linear_methods.reference(wide, template, roundoff=linear_methods.Roundoff.of(dtype))
    base = linear_methods.baseline(wide, template, dtype)
    assert ref.budget is not None
    for key in ("loss", "inputs", "weights", "bias"):
        got = base.loss if key == "loss" else base.grads[key]
        truth = ref.loss if key == "loss" else ref.grads[key]
        assert np.all(np.abs(got - truth) <= 4 * ref.budget[key]), key
        assert np.any(got != truth), key  # the baseline really is in low precision


def test_a_bfloat16_sized_error_in_dweight_exceeds_the_budget() -> None:
    """A relative 2^-9 error of dW (a bfloat16 accumulator) in a float32 check must not fit."""
    layer, template = _confident_layer()
    _, wide = kernel_inputs(layer, "float32")
    roundoff = linear_methods.Roundoff.of("float32")
    assert roundoff == linear_methods.Roundoff(2.0**-24, 2.0**-24)
    ref = linear_methods.reference(wide, template, roundoff=roundoff)
    assert ref.budget is not None
    planted = ref.grads["weights"] * (1 + 2.0**-9)
    excess = np.abs(planted - ref.grads["weights"]) / (4 * ref.budget["weights"])
    assert excess.max() > 10
    base = linear_methods.baseline(wide, template, "float32")
    assert np.all(np.abs(base.grads["weights"] - ref.grads["weights"]) <= 4 * ref.budget["weights"])


# --------------------------------------------------------------------------------------------
# 4. --impl on fused kernels, end to end


CORRECT_CASES = f"""\
cases:
  - name: bias-f32
    linear: {SMALL % 1}
    dtype: float32
  - name: ignored-f32
    linear: {SMALL % 2}
    label: {IGNORED_LABELS}
    ignore_index: -100
    dtype: float32
  - name: none-f32-no-bias
    linear: {{seed: 3, rows: 12, hidden_size: 8, vocab_size: 160, margin: 4, with_bias: false}}
    reduction: none
    dtype: float32
  - name: bias-bf16
    linear: {SMALL % 4}
    dtype: bfloat16
  - name: large-f32
    linear: {LARGE % 5}
    dtype: float32
"""


def test_correct_chunked_kernel_passes_every_chunk_count(tmp_path: Path) -> None:
    """chunked_linear_ce must pass every call of --chunks 1,4,7, materialised or chunked path."""
    kernel = torch_kernel("chunked_linear_ce")
    path = write(tmp_path, CORRECT_CASES)
    code, results, _ = run(str(path), "-m", "analytic", "--impl", kernel, "--chunks", "1,4,7")
    assert code == 0
    all_passed(results)
    for name, r in results.items():
        rows = impl_rows(r)
        quantities = {"loss", "hidden", "weight"} | ({"bias"} if "no-bias" not in name else set())
        assert {c["quantity"] for c in rows} == quantities, name
        assert {chunk_of(c) for c in rows} == {1, 4, 7}, name
        assert len(rows) == 3 * len(quantities), name
        assert "seeded grad_output" in r["method_notes"]["impl grad_output"]
        assert "error budgets" in r["method_notes"]["impl linear"]
    assert "never the 8 x 8000 logits" in results["large-f32"]["method_notes"]["impl linear"]
    assert results["large-f32"]["gradients"] == {}  # the logits' own methods did not run
    # reduction none: the kernel's loss was compared row by row, (N,) like the reference's
    none = results["none-f32-no-bias"]
    assert len(none["loss"]) == 12
    none_loss = [c for c in impl_rows(none) if c["quantity"] == "loss"]
    assert none_loss and all(len(c["worst_index"]) == 1 for c in none_loss)


def test_correct_chunked_kernel_passes_a_float64_spec(tmp_path: Path) -> None:
    """chunked_linear_ce should pass a float64 spec too (it is documented as correct)."""
    kernel = torch_kernel("chunked_linear_ce")
    path = write(tmp_path, f"name: bias-f64\nlinear: {SMALL % 1}\n")
    code, results, _ = run(str(path), "-m", "analytic", "--impl", kernel, "--chunks", "1,4")
    all_passed(results)
    assert code == 0


BUG_CASES = {
    "bias-f32": f"name: bias-f32\nlinear: {SMALL % 6}\ndtype: float32\n",
    "none-f32": f"name: none-f32\nlinear: {SMALL % 7}\nreduction: none\ndtype: float32\n",
    "n37-f32": "name: n37-f32\n"
    "linear: {seed: 8, rows: 37, hidden_size: 8, vocab_size: 64, margin: 4}\n"
    "dtype: float32\n",
}


@pytest.mark.parametrize(
    ("bug", "case", "chunks", "caught", "diagnosed", "text"),
    [
        (
            "bug_no_bias",
            "bias-f32",
            "1,4",
            {"loss", "hidden", "weight", "bias"},
            {"loss", "hidden", "weight", "bias"},
            "the forward leaves the bias out",
        ),
        ("bug_bf16_dw", "bias-f32", "4", {"weight"}, {"weight"}, "bfloat16's precision"),
        ("bug_grad_output0", "none-f32", "2", {"hidden", "weight", "bias"}, set(), ""),
        (
            "bug_drop_last",
            "n37-f32",
            "3",
            {"loss", "hidden", "weight", "bias"},
            {"hidden"},
            "dhidden is exactly 0 in the last 11 of 37 rows (rows 26..36): the last partial "
            "chunk is dropped",
        ),
    ],
)
def test_planted_bugs_fail_the_right_gradient(
    tmp_path: Path,
    bug: str,
    case: str,
    chunks: str,
    caught: set[str],
    diagnosed: set[str],
    text: str,
) -> None:
    """Each planted bug must fail exactly the quantities it corrupts, with its diagnosis."""
    path = write(tmp_path, BUG_CASES[case])
    code, results, _ = run(
        str(path), "-m", "analytic", "--impl", torch_kernel(bug), "--chunks", chunks
    )
    assert code == 1
    r = results[case]
    assert r["status"] == "fail"
    for count in (int(c) for c in chunks.split(",")):
        assert failing(r, count) == caught, (count, failing(r, count))
    for row in impl_rows(r):
        if row["quantity"] in diagnosed:
            assert row["diagnosis"] is not None and text in row["diagnosis"], row["diagnosis"]
        elif row["quantity"] not in caught:
            assert row["passed"] and row["diagnosis"] is None


def test_dropped_last_chunk_passes_when_the_chunks_divide_the_rows(tmp_path: Path) -> None:
    """bug_drop_last is invisible with one chunk: --chunks 1,3 must pass [chunks=1] only."""
    path = write(tmp_path, BUG_CASES["n37-f32"])
    kernel = torch_kernel("bug_drop_last")
    code, results, _ = run(str(path), "-m", "analytic", "--impl", kernel, "--chunks", "1,3")
    assert code == 1
    r = results["n37-f32"]
    assert failing(r, 1) == set()
    assert "hidden" in failing(r, 3)


def test_grad_output0_is_diagnosed(tmp_path: Path) -> None:
    """bug_grad_output0 (reduction none) should be diagnosed as Liger-Kernel #1298."""
    path = write(tmp_path, BUG_CASES["none-f32"])
    kernel = torch_kernel("bug_grad_output0")
    _, results, _ = run(str(path), "-m", "analytic", "--impl", kernel)
    rows = {c["quantity"]: c for c in impl_rows(results["none-f32"])}
    for quantity in ("hidden", "weight"):
        assert not rows[quantity]["passed"]
        assert "grad_output[0]" in str(rows[quantity]["diagnosis"]), rows[quantity]["diagnosis"]


DV_CASE = """\
name: dv-sum
linear:
  hidden: [[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]
  weight: [[0.1, -0.2, 0.3, 0.4], [0.5, 0.6, -0.7, 0.8]]
  bias: [0.0, 0.1, -0.1, 0.2]
  weight_layout: dv
label: [3, 0, 1]
reduction: sum
"""


def test_builtin_torch_passes_float64_float32_and_the_dv_layout(tmp_path: Path) -> None:
    """--impl torch's fused twin must pass float64/float32, the chunked path and layout dv."""
    pytest.importorskip("torch")
    text = f"""\
cases:
  - name: smoothing-f64
    linear: {SMALL % 11}
    label_smoothing: 0.1
  - name: none-f32
    linear: {SMALL % 12}
    reduction: none
    dtype: float32
  - name: large-ignored-f64
    linear: {LARGE % 13}
    label: [1, 2, -100, 4, 5, 6, 7, 8]
    ignore_index: -100
"""
    paths = [str(write(tmp_path, text)), str(write(tmp_path, DV_CASE, "dv.yaml"))]
    code, results, _ = run(*paths, "-m", "analytic", "--impl", "torch")
    assert code == 0
    all_passed(results)
    assert set(results) == {"smoothing-f64", "none-f32", "large-ignored-f64", "dv-sum"}
    for r in results.values():
        assert {c["quantity"] for c in impl_rows(r)} == {"loss", "hidden", "weight", "bias"}
        assert "impl grad_output" in r["method_notes"]
    dv = results["dv-sum"]
    assert np.shape(dv["parameter_gradients"]["weight"]["analytic"]) == (2, 4)  # (D, V)
    (weight_row,) = [c for c in impl_rows(dv) if c["quantity"] == "weight"]
    assert len(weight_row["worst_index"]) == 2 and weight_row["worst_index"][0] < 2


def test_numpy_protocol_passes_in_float64(tmp_path: Path) -> None:
    """numpy_linear_ce returns (loss, dhidden, dweight, dbias) with no grad_output."""
    text = f"""\
cases:
  - name: mean
    linear: {SMALL % 21}
  - name: none
    linear: {SMALL % 22}
    reduction: none
  - name: large-sum
    linear: {LARGE % 23}
    reduction: sum
"""
    impl = f"{EXAMPLE}:numpy_linear_ce"
    code, results, _ = run(str(write(tmp_path, text)), "-m", "analytic", "--impl", impl)
    assert code == 0
    all_passed(results)
    for r in results.values():
        assert {c["quantity"] for c in impl_rows(r)} == {"loss", "hidden", "weight", "bias"}
        assert "impl grad_output" not in r["method_notes"]
        assert max(c["max_rel_error"] for c in impl_rows(r)) < 1e-11  # float64-accurate


def test_builtin_torch_passes_one_row_with_a_large_vocabulary(tmp_path: Path) -> None:
    """A correct float64 kernel should fit the budget for few rows and a large vocabulary."""
    pytest.importorskip("torch")
    text = (
        "name: one-row\n"
        "linear: {seed: 0, rows: 1, hidden_size: 2, vocab_size: 30000, with_bias: false}\n"
    )
    code, results, _ = run(str(write(tmp_path, text)), "--impl", "torch")
    assert failing(results["one-row"]) == set()
    assert code == 0


def test_builtin_torch_passes_a_linear_spec_with_class_weights(tmp_path: Path) -> None:
    """Class weights (spec key 'weight') on a linear spec should reach the built-in loss."""
    pytest.importorskip("torch")
    text = f"name: class-weights\nlinear: {SMALL % 31}\nweight: [{', '.join(['1.5'] * 160)}]\n"
    code, results, _ = run(str(write(tmp_path, text)), "-m", "analytic", "--impl", "torch")
    assert results["class-weights"]["status"] == "pass", results["class-weights"]["message"]
    assert code == 0


def test_dtype_override_out_of_range_is_skipped(tmp_path: Path) -> None:
    """A hidden state of ~1e6 cannot be rounded to float16: the spec must be skipped."""
    pytest.importorskip("torch")
    text = (
        "name: huge\nlinear: {seed: 0, rows: 8, hidden_size: 8, vocab_size: 8000, margin: 1.0e+6}\n"
    )
    _, results, _ = run(str(write(tmp_path, text)), "--dtype", "float16", "--impl", "torch")
    r = results["huge"]
    assert r["status"] == "skip", (r["status"], r["message"])
    assert "float16" in str(r["message"])


THREE_TIMES_TOO_LARGE = """\
import numpy as np


def f(hidden, weight, bias=None, *, labels, reduction="mean"):
    z = hidden @ weight.T
    top = z.max(axis=1, keepdims=True)
    e = np.exp(z - top)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(z.shape[0])
    per = top[:, 0] + np.log(s[:, 0]) - z[rows, labels]
    g = e / s
    g[rows, labels] -= 1
    g /= z.shape[0]
    return 3 * per.mean(), 3 * (g @ weight), 3 * (g.T @ hidden), None
"""
HUGE_LOGITS = """\
name: huge-logits
linear:
  hidden: [[1.0e+20, 0.0], [0.5, 1.0]]
  weight: [[1.0e+20, 0.0], [0.0, 1.0], [-1.0e+20, 0.0]]
label: [1, 0]
"""


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_wrong_kernel_fails_at_logits_beyond_float32_range(tmp_path: Path) -> None:
    """Logits of 1e40 in a float64 spec must not turn the allowance into nan (a free pass)."""
    kernel = write(tmp_path, THREE_TIMES_TOO_LARGE, "wrong.py")
    path = write(tmp_path, HUGE_LOGITS)
    code, results, _ = run(str(path), "-m", "analytic", "--impl", f"{kernel}:f")
    r = results["huge-logits"]
    assert r["status"] == "fail", [(c["quantity"], c["passed"], c["atol"]) for c in impl_rows(r)]
    assert failing(r) == {"loss", "hidden", "weight"}
    assert code == 1


# --------------------------------------------------------------------------------------------
# 5. JAX


JAX_KERNEL = """\
import jax.numpy as jnp
import optax


def f(hidden, weight, bias=None, *, labels, reduction):
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    per = optax.softmax_cross_entropy_with_integer_labels(z, labels)
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()
"""


def test_optax_and_a_jax_function_pass_linear_specs(tmp_path: Path) -> None:
    """--impl optax and a jax:file:f kernel (pulled back by jax.vjp) must pass linear specs."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    kernel = write(tmp_path, JAX_KERNEL, "jax_kernel.py")
    text = f"""\
cases:
  - name: mean-f32
    linear: {SMALL % 41}
    dtype: float32
  - name: none-f64
    linear: {SMALL % 42}
    reduction: none
"""
    path = str(write(tmp_path, text))
    for impl in ("optax", f"jax:{kernel}:f"):
        code, results, _ = run(path, "-m", "analytic", "--impl", impl)
        assert code == 0, impl
        all_passed(results)
        for r in results.values():
            assert {c["quantity"] for c in impl_rows(r)} == {"loss", "hidden", "weight", "bias"}
            assert "impl grad_output" in r["method_notes"]


# --------------------------------------------------------------------------------------------
# 6. The reference's own check on the chunked path


LARGE_SPEC = f"name: large\nlinear: {LARGE % 51}\nlabel_smoothing: 0.05\n"


def test_directional_self_check_on_the_chunked_path() -> None:
    """Without --impl a large linear spec must check its reference along 2 random directions."""
    (r,) = xc.check(LARGE_SPEC).results
    assert r.status == "pass"
    assert [c.method for c in r.comparisons] == [
        "finite_difference (direction 1)",
        "finite_difference (direction 2)",
    ]
    assert all(c.quantity == "direction" and c.reference == "reference" for c in r.comparisons)
    assert max(c.max_rel_error for c in r.comparisons) < 1e-6
    assert "central differences" in r.method_notes["reference"]
    assert r.gradients == {} and isinstance(r.loss, float) and np.isfinite(r.loss)
    assert r.shape == (8, 8000)


def test_directional_self_check_catches_a_wrong_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference whose dW is 0.1% off must fail the directional check (it is not a no-op)."""
    true_reference = linear_methods.reference

    def skewed(*args: Any, **kwargs: Any) -> linear_methods.LinearResult:
        out = true_reference(*args, **kwargs)
        grads = {**out.grads, "weights": out.grads["weights"] * 1.001}
        return replace(out, grads=grads)

    monkeypatch.setattr(linear_methods, "reference", skewed)
    (r,) = xc.check(LARGE_SPEC).results
    assert r.status == "fail"
    assert not any(c.passed for c in r.comparisons)


# --------------------------------------------------------------------------------------------
# 7. --chunks errors


def test_chunks_on_a_kernel_without_a_chunk_parameter(tmp_path: Path) -> None:
    """--chunks with a kernel that takes no chunk count is an error for that linear spec only."""
    pytest.importorskip("torch")
    path = write(tmp_path, f"name: lin\nlinear: {SMALL % 61}\n")
    code, results, stderr = run(str(path), str(THREE_CLASS), "--impl", "torch", "--chunks", "2")
    assert code == 2
    assert results["lin"]["status"] == "error"
    message = results["lin"]["message"]
    assert "--chunks" in message and "--chunk-option" in message
    assert results["three-class"]["status"] == "pass"
    assert "--chunk-option" in stderr


def test_chunk_option_names_the_parameter(tmp_path: Path) -> None:
    """--chunk-option must pass the count under the name given (the example's own 'chunks')."""
    path = write(tmp_path, BUG_CASES["n37-f32"])
    kernel = torch_kernel("bug_drop_last")
    code, results, _ = run(
        str(path), "-m", "analytic", "--impl", kernel, "--chunks", "3", "--chunk-option", "chunks"
    )
    assert code == 1
    assert {chunk_of(c) for c in impl_rows(results["n37-f32"])} == {3}
    assert "hidden" in failing(results["n37-f32"], 3)


@pytest.mark.parametrize("value", ["0", "a", "1,,2", "-1", "1.5"])
def test_bad_chunk_counts_are_usage_errors(value: str) -> None:
    """--chunks must be positive integers separated by commas: anything else exits 2."""
    result = runner.invoke(app, ["run", str(THREE_CLASS), "--chunks", value])
    assert result.exit_code == 2
    assert f"--chunks {value}: expected positive integers separated by commas" in result.stderr
