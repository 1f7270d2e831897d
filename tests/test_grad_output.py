"""The spec key ``grad_output``: the upstream gradient a framework-native implementation is
back-propagated with, instead of the seeded one.

Covered: loading (a number for mean/sum, N numbers for none, one number for a single sample,
per element for sigmoid) and every located error, at the API and on the command line (exit 2);
the schema; with ``--impl torch:...`` the Liger-Kernel #1298 kernel (``grad_output[0]`` for every
row) passing on all ones and on a scalar and failing, diagnosed, on distinct values; the correct
kernel on values of any sign and zero; what the kernel actually received (a recording kernel),
in the full check, fast mode and per micro-batch; a fused ``linear:`` spec; JAX; and the note
when no framework-native implementation uses the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

import gradcheck_cli as xc
from gradcheck_cli.cli import app
from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.errors import SpecError
from gradcheck_cli.impl import load
from gradcheck_cli.model import Spec
from gradcheck_cli.schema import spec_schema
from gradcheck_cli.spec import load_text

DATA = Path(__file__).resolve().parent / "data" / "impl"
TORCH_KERNELS = DATA / "torch_kernels.py"
JAX_KERNELS = DATA / "jax_kernels.py"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fused_linear_ce.py"
runner = CliRunner()

BATCH = """\
logits: [[1.0, 2.0, 0.5], [0.3, -0.2, 2.2], [1.5, 1.5, -0.5]]
label: [1, 2, 0]
"""


def only(text: str) -> Spec:
    (item,) = load_text(text, "s.yaml")
    assert isinstance(item, Spec), str(item)
    return item


def batch(reduction: str, grad_output: str) -> str:
    return f"{BATCH}reduction: {reduction}\ngrad_output: {grad_output}\n"


def impl_row(result: Any, quantity: str = "logits") -> Any:
    (row,) = [
        c for c in result.comparisons if c.method.startswith("impl") and c.quantity == quantity
    ]
    return row


# --------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize(
    ("text", "expected", "shape"),
    [
        (batch("mean", "1.5"), 1.5, ()),
        (batch("sum", "-0.25"), -0.25, ()),
        (batch("mean", "0"), 0.0, ()),
        (batch("none", "[0.5, 2.0, -1.5]"), [0.5, 2.0, -1.5], (3,)),
        (batch("none", "[1, 1, 1]"), [1.0, 1.0, 1.0], (3,)),
        ("logits: [1, 2, 0.5]\nlabel: 1\nreduction: none\ngrad_output: 0.75\n", [0.75], (1,)),
        ("logits: [1, 2, 0.5]\nlabel: 1\nreduction: none\ngrad_output: [0.75]\n", [0.75], (1,)),
        ("logits: [1, 2, 0.5]\nlabel: 1\ngrad_output: 2\n", 2.0, ()),
        (
            "loss: sigmoid_cross_entropy\nlogits: [[1, -2], [0.5, 3]]\ntarget: [[1, 0], [0, 1]]\n"
            "reduction: none\ngrad_output: [[1, 2], [0.5, -1]]\n",
            [[1.0, 2.0], [0.5, -1.0]],
            (2, 2),
        ),
        (
            "loss: sigmoid_cross_entropy\nlogits: [1, -2]\ntarget: [1, 0]\n"
            "reduction: none\ngrad_output: [1, 2]\n",
            [[1.0, 2.0]],
            (1, 2),
        ),
    ],
)
def test_grad_output_is_read_shaped_like_the_loss(
    text: str, expected: object, shape: tuple[int, ...]
) -> None:
    spec = only(text)
    assert spec.grad_output is not None
    assert spec.grad_output.shape == shape
    np.testing.assert_array_equal(spec.grad_output, expected)


def test_grad_output_is_optional() -> None:
    assert only(BATCH).grad_output is None


def test_grad_output_from_a_file(tmp_path: Path) -> None:
    np.save(tmp_path / "up.npy", np.array([0.5, 2.0, 1.5]))
    path = tmp_path / "s.yaml"
    path.write_text(batch("none", "{file: up.npy}"), encoding="utf-8")
    (spec,) = xc.load(path)
    np.testing.assert_array_equal(spec.grad_output, [0.5, 2.0, 1.5])


def test_cases_inherit_and_override_grad_output() -> None:
    text = BATCH + "reduction: none\ngrad_output: [1, 2, 3]\ncases:\n  - {}\n"
    text += "  - {grad_output: [3, 2, 1]}\n  - {reduction: sum, grad_output: 0.5}\n"
    got = [s.grad_output for s in load_text(text, "s.yaml")]
    assert [None if g is None else g.tolist() for g in got] == [[1, 2, 3], [3, 2, 1], 0.5]


MEAN_LIST = (
    "expected one number (the upstream gradient of the loss reduced by mean; one per sample "
    "is for reduction none), found a list"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (batch("mean", "[1, 2, 3]"), f"s.yaml:4:14: grad_output: {MEAN_LIST}"),
        (
            batch("sum", "{a: 1}"),
            "s.yaml:4:14: grad_output: expected one number (the upstream gradient of the loss "
            "reduced by sum; one per sample is for reduction none), found a mapping",
        ),
        (
            batch("none", "[1.0, 2.0]"),
            "s.yaml:4:14: grad_output: expected 3 numbers (reduction none: one per row of "
            "logits), found 2 numbers",
        ),
        (
            batch("none", "[1, 2, 3, 4]"),
            "s.yaml:4:14: grad_output: expected 3 numbers (reduction none: one per row of "
            "logits), found 4 numbers",
        ),
        (
            batch("none", "1.5"),
            "s.yaml:4:14: grad_output: expected 3 numbers (reduction none: one per row of "
            "logits), found number 1.5",
        ),
        (
            batch("none", "[[1], [2], [3]]"),
            "s.yaml:4:14: grad_output: expected 3 numbers (reduction none: one per row of "
            "logits), found shape (3, 1)",
        ),
        (
            "logits: [1, 2, 0.5]\nlabel: 1\nreduction: none\ngrad_output: [1, 2]\n",
            "s.yaml:4:14: grad_output: expected one number (a single sample, reduction none), "
            "found 2 numbers",
        ),
        (
            batch("none", "[1.0, .inf, 2.0]"),
            "s.yaml:4:20: grad_output[1]: expected a finite number, found inf",
        ),
        (
            batch("none", "[1.0, 2.0, .nan]"),
            "s.yaml:4:25: grad_output[2]: expected a finite number, found nan",
        ),
        (batch("mean", "-.inf"), "s.yaml:4:14: grad_output: expected a finite number, found -.inf"),
        (
            batch("mean", ".nan"),
            "s.yaml:4:14: grad_output: expected a finite number, found .nan",
        ),
        (
            batch("none", "[1.0, two, 2.0]"),
            "s.yaml:4:20: grad_output[1]: expected a number, found string 'two'",
        ),
        (
            batch("mean", "'1.5'"),
            "s.yaml:4:14: grad_output: expected a number, found string '1.5'",
        ),
        (batch("mean", "true"), "s.yaml:4:14: grad_output: expected a number, found boolean true"),
        (
            batch("mean", "!!float 1.5"),
            "s.yaml:4:14: grad_output: explicit YAML tag !!float is not allowed",
        ),
        (
            batch("mean", ""),
            "s.yaml:4:13: grad_output: expected the upstream gradient a framework-native --impl "
            "is back-propagated with: a number (reduction mean or sum), or one per sample "
            "(reduction none), found an empty value",
        ),
        (
            "loss: sigmoid_cross_entropy\nlogits: [[1, -2], [0.5, 3]]\ntarget: [[1, 0], [0, 1]]\n"
            "reduction: none\ngrad_output: [1, 2]\n",
            "s.yaml:5:14: grad_output: expected numbers shaped like the logits (2, 2) "
            "(reduction none: one per element), found 2 numbers",
        ),
        (
            BATCH + "reduction: none\ncases:\n  - {grad_output: [1, 2, 3]}\n"
            "  - {grad_output: [1, 2]}\n",
            "s.yaml:6:19: cases[1].grad_output: expected 3 numbers (reduction none: one per row "
            "of logits), found 2 numbers",
        ),
    ],
)
def test_grad_output_errors_are_located(text: str, expected: str) -> None:
    *others, last = load_text(text, "s.yaml")
    assert all(isinstance(item, Spec) for item in others)
    assert isinstance(last, SpecError), last
    assert str(last) == expected


def test_a_grad_output_error_does_not_hide_others() -> None:
    text = batch("mean", "[1, 2]") + "microbatches: 9\n"
    (item,) = load_text(text, "s.yaml")
    assert isinstance(item, SpecError)
    messages = item.all_messages()
    assert messages[0] == f"s.yaml:4:14: grad_output: {MEAN_LIST}"
    assert messages[1].startswith("s.yaml:5:15: microbatches:")


def test_the_command_line_exits_2_with_the_located_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(batch("none", "[1.0, 2.0]"), encoding="utf-8")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    assert (
        f"error: {path}:4:14: grad_output: expected 3 numbers (reduction none: one per row of "
        "logits), found 2 numbers"
    ) in " ".join(result.stderr.split())


def test_schema_accepts_numbers_and_lists_and_rejects_strings() -> None:
    validator = jsonschema.Draft202012Validator(spec_schema())
    base: dict[str, Any] = {"logits": [[1, 2], [0, 1]], "label": [0, 1]}
    for value in (1.5, [0.5, 2.0], {"file": "up.npy"}):
        assert not list(validator.iter_errors(base | {"grad_output": value}))
    for value in ("1.5", [], [["a"]], {"path": "x"}):
        assert list(validator.iter_errors(base | {"grad_output": value}))


def test_a_programmatic_spec_of_the_wrong_shape_is_an_error_result() -> None:
    pytest.importorskip("torch")
    spec = only(batch("none", "[1, 2, 3]"))
    wrong = Spec(**{**spec.__dict__, "grad_output": np.array([1.0, 2.0])})
    report = xc.check(wrong, impl=f"torch:{TORCH_KERNELS}:correct", methods=["analytic"])
    (result,) = report.results
    assert result.status == "error"
    assert "grad_output: expected finite numbers of shape (3,) like the loss" in str(result.message)


# --------------------------------------------------------------------------------------------
# Unused: no --impl, or the NumPy protocol


def test_without_a_native_implementation_grad_output_is_unused_and_said() -> None:
    spec = only(batch("none", "[0.5, 2.0, 1.5]"))
    plain = run_spec(only(BATCH + "reduction: none\n"), RunOptions(methods=("analytic",)))
    alone = run_spec(spec, RunOptions(methods=("analytic",)))
    assert alone.status == "pass"
    np.testing.assert_array_equal(alone.gradients["analytic"], plain.gradients["analytic"])
    assert "not used: no --impl" in alone.method_notes["grad_output"]
    numpy_impl = load(f"{DATA / 'impls.py'}:correct")
    checked = run_spec(spec, RunOptions(impl=numpy_impl, methods=("analytic",)))
    assert checked.status == "pass", [c for c in checked.comparisons if not c.passed]
    assert "follows the NumPy protocol" in checked.method_notes["grad_output"]
    assert "impl grad_output" not in checked.method_notes
    assert "grad_output" not in plain.method_notes


# --------------------------------------------------------------------------------------------
# PyTorch


def torch_run(function: str, text: str, *args: str, kernels: Path = TORCH_KERNELS) -> Any:
    pytest.importorskip("torch")
    impl = load(f"torch:{kernels}:{function}")
    fast = "--fast" in args
    return run_spec(only(text), RunOptions(impl=impl, methods=("analytic",), fast=fast))


@pytest.mark.parametrize(
    "text",
    [
        batch("none", "[1.0, 1.0, 1.0]"),
        batch("none", "[2.0, 2.0, 2.0]"),
        batch("mean", "1.0"),
        batch("mean", "1.75"),
        batch("sum", "-0.5"),
    ],
)
def test_the_grad_output_0_kernel_passes_where_the_values_cannot_tell(text: str) -> None:
    r = torch_run("first_grad_output", text)
    assert r.status == "pass", [c for c in r.comparisons if not c.passed]


def test_all_ones_is_allowed_and_the_note_says_what_it_cannot_show() -> None:
    r = torch_run("first_grad_output", batch("none", "[1.0, 1.0, 1.0]"))
    note = r.method_notes["impl grad_output"]
    assert "the spec's grad_output [1, 1, 1]" in note
    assert "a backward that ignores grad_output" in note
    assert "a backward that uses grad_output[0] for every row" in note
    scalar = torch_run("correct", batch("mean", "1.0")).method_notes["impl grad_output"]
    assert "the spec's grad_output 1 (a backward that ignores grad_output" in scalar
    seeded = torch_run("correct", BATCH + "reduction: none\n").method_notes["impl grad_output"]
    assert "seeded grad_output uniform in [0.5, 2]" in seeded


@pytest.mark.parametrize("fast", [False, True])
def test_the_grad_output_0_kernel_fails_on_distinct_values_diagnosed(fast: bool) -> None:
    args = ("--fast",) if fast else ()
    r = torch_run("first_grad_output", batch("none", "[0.5, 2.0, 1.5]"), *args)
    assert r.status == "fail"
    row = impl_row(r)
    assert not row.passed
    assert "every row is scaled by grad_output[0]" in str(row.diagnosis), row.diagnosis
    assert "[0.5, 2, 1.5]" in r.method_notes["impl grad_output"]


def test_the_ignoring_kernel_fails_on_a_given_scalar_diagnosed() -> None:
    r = torch_run("ignore_grad_output", batch("sum", "-2.5"))
    assert r.status == "fail"
    assert "the backward ignores grad_output" in str(impl_row(r).diagnosis)


@pytest.mark.parametrize(
    ("reduction", "values"),
    [
        ("none", "[0.5, 2.0, 1.5]"),
        ("none", "[-1.0, 0.0, 2.5]"),
        ("none", "[0.0, 0.0, 0.0]"),
        ("none", "[-3.0, -0.125, 1e-3]"),
        ("mean", "-0.75"),
        ("mean", "0"),
        ("sum", "3.25"),
    ],
)
@pytest.mark.parametrize("fast", [False, True])
def test_the_correct_kernel_passes_with_given_values(
    reduction: str, values: str, fast: bool
) -> None:
    args = ("--fast",) if fast else ()
    text = batch(reduction, values)
    r = torch_run("correct", text, *args)
    assert r.status == "pass", [(c.quantity, c.diagnosis) for c in r.comparisons if not c.passed]
    assert "the spec's grad_output" in r.method_notes["impl grad_output"]
    if not np.any(only(text).grad_output):
        assert "grad_output is 0 everywhere" in r.not_computable["impl self-consistency"]
    else:
        assert "impl self-consistency" not in r.not_computable


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_builtin_torch_per_element_sigmoid_and_float32(dtype: str) -> None:
    pytest.importorskip("torch")
    sigmoid = (
        "loss: sigmoid_cross_entropy\nlogits: [[1, -2], [0.5, 3]]\ntarget: [[1, 0], [0, 1]]\n"
        "reduction: none\ngrad_output: [[1, 2], [0.5, -1]]\n"
    )
    options = RunOptions(impl=load("torch"), methods=("analytic",), dtype=dtype)
    for text in (sigmoid, batch("none", "[-1.5, 0.25, 0.0]"), batch("mean", "-3")):
        r = run_spec(only(text), options)
        assert r.status == "pass", [(c.quantity, c.diagnosis) for c in r.comparisons]
    note = run_spec(only(sigmoid), options).method_notes["impl grad_output"]
    assert "[1, 2, 0.5, -1] (shape (2, 2), row by row)" in note


RECORDING = """\
import json
import torch

LOG = {log!r}


class _Recorded(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, reduction):
        logp = torch.log_softmax(logits, dim=-1)
        ctx.save_for_backward(logp, labels)
        ctx.reduction = reduction
        per = -logp.gather(-1, labels[:, None])[:, 0]
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.mean()

    @staticmethod
    def backward(ctx, grad_output):
        with open(LOG, "a") as f:
            f.write(json.dumps(grad_output.tolist()) + "\\n")
        logp, labels = ctx.saved_tensors
        grad = logp.exp()
        grad[torch.arange(len(labels)), labels] -= 1.0
        if ctx.reduction == "mean":
            grad = grad / len(labels)
        scale = grad_output[:, None] if ctx.reduction == "none" else grad_output
        return grad * scale, None, None


def loss(logits, *, labels, reduction):
    return _Recorded.apply(logits, labels, reduction)
"""


def recorded(tmp_path: Path, text: str, *args: str) -> tuple[Any, list[Any]]:
    """Run ``text`` with a kernel that logs every grad_output its backward receives."""
    log = tmp_path / "received.jsonl"
    kernel = tmp_path / "recording_kernel.py"
    kernel.write_text(RECORDING.format(log=str(log)), encoding="utf-8")
    r = torch_run("loss", text, *args, kernels=kernel)
    lines = log.read_text(encoding="utf-8").splitlines()
    return r, [json.loads(line) for line in lines]


@pytest.mark.parametrize("fast", [False, True])
def test_the_given_values_reach_the_backward(tmp_path: Path, fast: bool) -> None:
    args = ("--fast",) if fast else ()
    given = [0.5, -2.0, 0.0]
    r, got = recorded(tmp_path, batch("none", str(given)), *args)
    assert r.status == "pass", [c for c in r.comparisons if not c.passed]
    # the checked call first, then the side-effect and determinism calls; the forward-only
    # evaluations of the self-consistency check are back-propagated with ones, if at all
    assert got[:2] == [given, given], got
    assert all(g in (given, [1.0, 1.0, 1.0]) for g in got), got
    (tmp_path / "received.jsonl").unlink()
    r, got = recorded(tmp_path, batch("sum", "-1.25"), *args)
    assert r.status == "pass"
    assert got[:2] == [-1.25, -1.25] and set(got) <= {-1.25, 1.0}, got


def test_each_micro_batch_gets_its_rows_of_grad_output(tmp_path: Path) -> None:
    text = batch("none", "[0.5, -2.0, 3.0]") + "microbatches: 2\n"
    r, got = recorded(tmp_path, text)
    assert r.status == "pass", [c.name for c in r.checks if not c.passed]
    assert [0.5, -2.0] in got and [3.0] in got, got  # numpy.array_split(3 rows, 2)
    assert {c.name for c in r.checks} >= {"impl_microbatches"}


# --------------------------------------------------------------------------------------------
# A fused linear spec

LINEAR = """\
linear:
  hidden: [[0.1, 0.5, 0.4], [-0.3, 0.2, 0.9], [0.7, -0.6, 0.05]]
  weight:
    - [0.1, 0.6, 0.11]
    - [0.2, 0.7, 0.12]
    - [0.3, 0.8, 0.13]
    - [0.4, 0.9, 0.14]
    - [0.5, 0.1, 0.15]
  bias: [0.0, 0.1, -0.1, 0.2, 0.05]
label: [2, 0, 4]
"""


def linear_run(kernel: str, reduction: str, values: str, *args: str) -> Any:
    pytest.importorskip("torch")
    text = f"{LINEAR}reduction: {reduction}\ngrad_output: {values}\n"
    impl = load(f"torch:{EXAMPLE}:{kernel}")
    fast = "--fast" in args
    return run_spec(only(text), RunOptions(impl=impl, methods=("analytic",), fast=fast))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    ("reduction", "values"),
    [("none", "[0.5, 2.0, 1.5]"), ("none", "[-1.0, 0.0, 2.0]"), ("mean", "-0.5"), ("sum", "0")],
)
def test_a_linear_spec_honours_grad_output(reduction: str, values: str, fast: bool) -> None:
    args = ("--fast",) if fast else ()
    r = linear_run("chunked_linear_ce", reduction, values, *args)
    assert r.status == "pass", [(c.quantity, c.diagnosis) for c in r.comparisons if not c.passed]
    assert "the spec's grad_output" in r.method_notes["impl grad_output"]


@pytest.mark.parametrize("fast", [False, True])
def test_the_linear_grad_output_0_bug_shows_only_on_distinct_values(fast: bool) -> None:
    args = ("--fast",) if fast else ()
    same = linear_run("bug_grad_output0", "none", "[1.0, 1.0, 1.0]", *args)
    assert same.status == "pass", [c.quantity for c in same.comparisons if not c.passed]
    r = linear_run("bug_grad_output0", "none", "[0.5, 2.0, 1.5]", *args)
    assert r.status == "fail"
    for quantity in ("hidden", "weight"):
        row = impl_row(r, quantity)
        assert not row.passed
        assert "grad_output[0] = 0.5" in str(row.diagnosis), row.diagnosis


# --------------------------------------------------------------------------------------------
# JAX


def test_jax_uses_the_given_values() -> None:
    pytest.importorskip("jax")
    impl = load(f"jax:{JAX_KERNELS}:first_grad_output")
    options = RunOptions(impl=impl, methods=("analytic",))
    same = run_spec(only(batch("none", "[1.0, 1.0, 1.0]")), options)
    assert same.status == "pass", [c for c in same.comparisons if not c.passed]
    r = run_spec(only(batch("none", "[0.5, 2.0, 1.5]")), options)
    assert r.status == "fail" and "grad_output[0]" in str(impl_row(r).diagnosis)
    right = load(f"jax:{JAX_KERNELS}:cross_entropy")
    ok = run_spec(only(batch("none", "[-1.0, 0.0, 2.5]")), RunOptions(impl=right))
    assert ok.status == "pass", [c for c in ok.comparisons if not c.passed]
