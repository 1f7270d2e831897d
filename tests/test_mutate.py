"""``xentcheck mutate``: every mutant is killed by a spec made for it and not by one that cannot
show it (with the computed reason), the bundled specs kill every mutant, mutants of a given
implementation, exit codes and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import gradcheck_cli as xc
from gradcheck_cli.api import bundled_specs_dir
from gradcheck_cli.cli import app
from gradcheck_cli.core import softmax
from gradcheck_cli.impl import load as load_impl
from gradcheck_cli.impl import options_for, wrap
from gradcheck_cli.model import Spec
from gradcheck_cli.mutate import (
    BY_NAME,
    MUTANTS,
    ImplSubject,
    MutantResult,
    Subject,
    implementation,
    mutate,
    mutate_specs,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "numpy_cross_entropy.py"
runner = CliRunner()


def specs(*texts: str) -> list[Spec]:
    return [s for text in texts for s in xc.load(text)]


def only(name: str, given: list[Spec], **options: Any) -> MutantResult:
    report = mutate_specs(given, mutants=[BY_NAME[name]], **options)
    (result,) = report.mutants
    return result


BATCH = "name: batch\nlogits: [[2, 1, 0.1, -1.2], [-0.3, 2.2, 1.7, 0], [0.5, 0.5, -1, 3]]\n"
LABELS = "label: [0, 2, 3]\n"
SINGLE = "name: single\nlogits: [1.0, 2.0, 0.5]\nlabel: 1\n"
LINEAR = "linear: {seed: 3, rows: 4, hidden_size: 3, vocab_size: 5, margin: 2%s}\n"

#: mutant -> (a spec made to kill it, a spec that cannot show it, the reason's words there)
CASES: dict[str, tuple[str, str, str]] = {
    "zero-grad": (
        SINGLE,
        "name: all-ignored\nlogits: [[1, 2], [0, 1]]\nlabel: [1, 1]\nignore_index: 1\n"
        "reduction: sum\n",
        "on all-ignored its outputs equal the unmutated ones beyond rounding",
    ),
    "grad-times-n": (
        BATCH + LABELS,
        BATCH + LABELS + "reduction: sum\n",
        "not applicable: no spec has reduction mean",
    ),
    "true-class-rounding": (
        "name: f16\nlogits: [[8, 0, 0], [0, 9, 1]]\nlabel: [0, 1]\ndtype: float16\n",
        SINGLE,
        "not applicable: no spec has a dtype below float64",
    ),
    "smoothing-local-vocab": (
        BATCH + LABELS + "label_smoothing: 0.1\n",
        BATCH + LABELS,
        "not applicable: no spec has label_smoothing > 0",
    ),
    "z-loss-ignored-rows": (
        BATCH + "label: [0, -100, 3]\nignore_index: -100\nz_loss: 0.01\n",
        BATCH + LABELS + "z_loss: 0.01\n",
        "not applicable: no spec has an ignored row (ignore_index)",
    ),
    "grad-output-first-row": (
        BATCH + LABELS + "reduction: none\n",
        BATCH + LABELS,
        "not applicable: no spec has reduction none",
    ),
    "loss-ulp": (
        SINGLE,
        SINGLE.replace("single", "single16") + "dtype: float16\n",
        "on single16 its outputs equal the unmutated ones beyond rounding",
    ),
    "label-shift": (
        BATCH + LABELS,
        "name: same-rows\nlogits: [[1, 2, 0.5], [1, 2, 0.5]]\nlabel: [1, 1]\n",
        "on same-rows its outputs equal the unmutated ones beyond rounding",
    ),
    "bias-dropped": (
        "name: lin\n" + LINEAR % "" + "label: [0, 1, 2, 4]\n",
        "name: lin-nobias\n" + LINEAR % ", with_bias: false" + "label: [0, 1, 2, 4]\n",
        "not applicable: no spec has a linear: spec with a bias",
    ),
    "softcap-minus-inf": (
        "name: capped\nlogits: [[3, -.inf, 0.5], [1, 2, -.inf]]\nlabel: [0, 1]\nsoftcap: 2\n",
        "name: capped\nlogits: [[3, 1, 0.5], [1, 2, 0]]\nlabel: [0, 1]\nsoftcap: 2\n",
        "not applicable: no spec has a −inf logit",
    ),
}


def test_every_mutant_has_a_case() -> None:
    assert set(CASES) == {m.name for m in MUTANTS}


@pytest.mark.parametrize("name", list(CASES))
def test_a_spec_made_for_the_mutant_kills_it(name: str) -> None:
    killer, _, _ = CASES[name]
    given = specs(killer)
    assert xc.check(given).passed  # the spec itself passes with the real reference
    result = only(name, given)
    assert result.status == "killed", result.reason
    assert result.killed_by == (given[0].name,)
    assert "beyond" in result.reason or "impl_finite" in result.reason


@pytest.mark.parametrize("name", list(CASES))
def test_a_spec_that_cannot_show_the_mutant_does_not_kill_it(name: str) -> None:
    _, other, words = CASES[name]
    result = only(name, specs(other))
    assert result.status in ("not applicable", "not exercised")
    assert words in result.reason


def test_conditions_never_met_together_are_named_together() -> None:
    given = specs(
        BATCH + LABELS + "z_loss: 0.01\n", BATCH + "label: [0, -100, 3]\nignore_index: -100\n"
    )
    result = only("z-loss-ignored-rows", given)
    assert result.reason == (
        "not applicable: no spec has z_loss > 0 and an ignored row (ignore_index) together"
    )


def test_a_survivor_names_the_spec_and_the_tolerance_that_admitted_it() -> None:
    # rtol 5e-2 admits a loss off by 1e-6 (atol stays the default: a zero gradient still fails)
    given = specs(SINGLE, BATCH + LABELS)
    report = mutate_specs(given, rtol=5e-2)
    loss = next(m for m in report.mutants if m.name == "loss-ulp")
    assert loss.status == "survived" and not loss.claimed
    assert "tolerance rtol 0.05" in loss.reason and "admits it" in loss.reason
    assert loss.reason.startswith("closest on ")
    assert next(m for m in report.mutants if m.name == "zero-grad").status == "killed"
    # a survivor no option claims lowers the score; it fails the run only under --min-score
    assert report.score is not None and report.score < 1 and report.exit_code == 0
    assert mutate_specs(given, rtol=5e-2, min_score=1.0).exit_code == 1


def test_a_claimed_survivor_fails_the_run_and_says_why() -> None:
    # float32 at p_y = 0.9997: rounding p to float32 moves the true-class gradient by ~1e-4 of
    # itself, inside float32's rtol 1e-4 of the gradient
    spec = specs("name: f32\nlogits: [[9, 0, 0], [0, 10, 1]]\nlabel: [0, 1]\ndtype: float32\n")
    report = mutate_specs(spec, mutants=[BY_NAME["true-class-rounding"]])
    (result,) = report.mutants
    assert result.status == "survived" and result.claimed, result.reason
    assert "closest on f32:" in result.reason and "admits it" in result.reason
    p_y = np.max(softmax(spec[0].logits)[[0, 1], [0, 1]])
    assert f"the largest p_y there is {p_y:.4g}" in result.reason
    assert report.exit_code == 1 and report.uncovered == (result,)


def test_true_class_rounding_at_moderate_p_y_is_rounding_and_says_so() -> None:
    # in float32 at p_y ~ 0.6 rounding p moves the gradient by less than 4 ulps of its scale
    spec = specs("name: f32\nlogits: [[2, 1.5, 0], [0, 1, 3]]\nlabel: [0, 2]\ndtype: float32\n")
    (result,) = mutate_specs(spec, mutants=[BY_NAME["true-class-rounding"]]).mutants
    assert result.status == "not exercised", result.reason
    p_y = np.max(softmax(spec[0].logits)[[0, 1], [0, 2]])
    assert 0.5 < p_y < 0.9
    assert f"no spec has p_y > 0.9 (the largest is {p_y:.4g})" in result.reason


def test_bundled_specs_kill_every_mutant() -> None:
    report = mutate([str(bundled_specs_dir())])
    status = {m.name: m.status for m in report.mutants}
    assert status == {m.name: "killed" for m in MUTANTS}, [m.reason for m in report.mutants]
    assert report.score == 1.0 and report.exit_code == 0 and not report.unusable


def test_every_spec_lists_every_killer() -> None:
    given = specs(SINGLE, BATCH + LABELS)
    first = mutate_specs(given, mutants=[BY_NAME["zero-grad"]])
    every = mutate_specs(given, mutants=[BY_NAME["zero-grad"]], every_spec=True)
    assert first.mutants[0].killed_by == ("single",)
    assert every.mutants[0].killed_by == ("single", "batch")


def test_the_control_must_pass_for_a_spec_to_judge() -> None:
    # the expectation is wrong: the reference itself fails, so the spec judges nothing
    given = specs(SINGLE + "expect: {loss: 9.0}\n")
    report = mutate_specs(given, mutants=[BY_NAME["zero-grad"]])
    assert report.mutants[0].status == "not exercised"
    assert report.mutants[0].reason == "single judges nothing (the unmutated target fails it)"
    assert report.unusable and report.unusable[0][0] == "single"


# ---------------------------------------------------------------------------------------------
# Mutants of a given implementation.


def test_mutants_of_an_implementation_are_its_outputs_plus_the_bug() -> None:
    """On the example implementation, a delta mutant's outputs equal the reference mutant's
    (the implementation agrees with the reference) and a transformation acts on its outputs."""
    impl = load_impl(f"{EXAMPLE}:cross_entropy")
    (spec,) = specs(BATCH + LABELS + "label_smoothing: 0.1\n")
    options = options_for(spec)
    for name in ("smoothing-local-vocab", "label-shift", "grad-times-n"):
        mine = implementation(BY_NAME[name], ImplSubject(impl), spec, native=False)
        ref = implementation(BY_NAME[name], Subject(), spec, native=False)
        assert mine is not None and ref is not None
        got = mine.function(spec.logits, **options)
        want = ref.function(spec.logits, **options)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-15)
    report = mutate_specs([spec], impl)
    assert report.target == impl.name
    assert {m.name: m.status for m in report.mutants if m.applicable} == {
        "zero-grad": "killed",
        "grad-times-n": "killed",
        "smoothing-local-vocab": "killed",
        "loss-ulp": "killed",
        "label-shift": "killed",
    }


def test_grad_output_mutant_of_a_framework_native_implementation() -> None:
    pytest.importorskip("torch")
    given = specs(BATCH + LABELS + "reduction: none\n")
    report = mutate_specs(given, load_impl("torch"), mutants=[BY_NAME["grad-output-first-row"]])
    assert report.mutants[0].status == "killed", report.mutants[0].reason


def _numpy_linear(
    hidden: Any, weight: Any, bias: Any = None, *, labels: Any, reduction: Any, **unused: Any
) -> Any:
    """A plain NumPy fused linear cross-entropy ((V, D) weight): gradients of the summed loss."""
    from gradcheck_cli.core import build_problem, reduce_any
    from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS

    z = hidden @ weight.T + (0.0 if bias is None else bias)
    problem = build_problem("softmax_cross_entropy", z, labels, None, reduction, {})
    g = METHODS["analytic"](problem, DEFAULT_SETTINGS).grad
    return reduce_any(problem), g @ weight, g.T @ hidden, None if bias is None else g.sum(0)


NONE_LINEAR = "name: lin-none\n" + LINEAR % "" + "label: [0, 1, 2, 4]\nreduction: none\n"


def test_a_mutant_that_cannot_be_planted_is_listed_as_such() -> None:
    impl = wrap("numpy_linear", _numpy_linear)
    given = specs(NONE_LINEAR)
    assert xc.check(given, impl=impl).passed
    report = mutate_specs(given, impl)
    status = {m.name: m.status for m in report.mutants}
    assert status["grad-output-first-row"] == "not liftable"
    assert status["bias-dropped"] == "killed" and status["label-shift"] == "killed"


# ---------------------------------------------------------------------------------------------
# The command line.


def test_cli_prints_the_table_and_the_score(specs_dir: Path) -> None:
    paths = [str(specs_dir / "cat_dog_bird.yaml"), str(specs_dir / "z_loss.yaml")]
    report = mutate(paths)
    result = runner.invoke(app, ["mutate", *paths])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["mutant", "result", "killed", "by"]
    for m in report.mutants:
        row = next(line for line in lines if line.startswith(m.name + " "))
        assert m.status in row
    assert f"mutation score {report.killed}/{report.applicable} = " in result.stdout


def test_cli_min_score_and_survivors_set_the_exit_code(specs_dir: Path) -> None:
    path = str(specs_dir / "cat_dog_bird.yaml")
    loose = ["mutate", path, "--rtol", "0.05", "-q"]
    survived = runner.invoke(app, loose)
    assert survived.exit_code == 0, survived.output  # loss-ulp survives, no option claims it
    assert "survived: loss-ulp" in survived.stdout
    assert runner.invoke(app, [*loose, "--min-score", "1"]).exit_code == 1
    assert runner.invoke(app, [*loose, "--min-score", "0.5"]).exit_code == 0
    strict = runner.invoke(app, ["mutate", path, "--min-score", "1", "-q"])
    assert strict.exit_code == 0, strict.output
    assert "meets --min-score 1" in strict.stdout


def test_cli_json(specs_dir: Path) -> None:
    result = runner.invoke(app, ["mutate", str(specs_dir / "reductions.yaml"), "-f", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["score"] == doc["killed"] / doc["applicable"]
    assert [m["name"] for m in doc["mutants"]] == [m.name for m in MUTANTS]
    assert "mutation score" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mutate", "no/such.yaml"], "error: no/such.yaml"),
        (["mutate", "specs/cat_dog_bird.yaml", "--impl", "no.such:f"], "error: --impl 'no.such:f'"),
        (
            ["mutate", "tests/data/bad/duplicate_key.yaml"],
            "error: tests/data/bad/duplicate_key.yaml:",
        ),
        (["mutate", "specs/cat_dog_bird.yaml", "--min-score", "2"], "--min-score"),
    ],
)
def test_cli_bad_input_exits_2(args: list[str], message: str, monkeypatch: Any) -> None:
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
