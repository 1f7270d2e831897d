"""xentcheck explain: the walkthrough's numbers come from the core; the Markdown is stable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app
from gradcheck_cli.explain import walkthrough
from gradcheck_cli.model import Spec
from gradcheck_cli.report.explain import markdown
from gradcheck_cli.spec import load_file

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def bundled(name: str) -> Spec:
    (spec,) = [s for s in load_file(ROOT / "specs" / name) if isinstance(s, Spec)][:1]
    return spec


def test_cat_dog_bird_numbers() -> None:
    w = walkthrough(bundled("cat_dog_bird.yaml"))
    np.testing.assert_allclose(w.probs, [0.2312239, 0.6285317, 0.1402444], atol=5e-8)
    assert w.loss == pytest.approx(0.4643688, abs=5e-8)
    assert w.loss_via_lse == pytest.approx(w.loss, rel=1e-15)
    np.testing.assert_allclose(w.closed_form, [0.2312239, -0.3714683, 0.1402444], atol=5e-8)
    np.testing.assert_allclose(w.chain, w.closed_form, atol=1e-16)
    assert w.rounded_figure == (0.63, pytest.approx(0.46203546, abs=1e-8))
    assert abs(w.fd_quotient - w.closed_form[w.fd_class]) < 1e-9
    np.testing.assert_array_equal(w.jacobian, w.jacobian.T)


def test_three_class_example() -> None:
    w = walkthrough(bundled("three_class.yaml"))
    np.testing.assert_allclose(w.probs, [0.0900, 0.2447, 0.6652], atol=5e-5)
    np.testing.assert_allclose(w.closed_form, w.probs - np.eye(3)[1], atol=1e-16)


def test_markdown_text() -> None:
    text = markdown(walkthrough(bundled("cat_dog_bird.yaml")))
    assert "\x1b[" not in text
    assert text.startswith("# Why d(loss)/d(logits) = p − y: cat-dog-bird\n")
    for line in [
        "| dog | 2 | 0 | 1 | 0.628532 |",
        "$$L = -\\log p_{dog} = -\\log 0.628532 = 0.464369$$",
        "The expected values round p_dog to 0.63 and report −log 0.63 = 0.462; the exact "
        "probability 0.628532 gives 0.4644. The difference, 0.0023, is the rounding of p, not "
        "a different loss.",
        "| dog | -0.145332 | 0.23348 | -0.088148 |",
        "| dog | 1 | -1.59101 |",
        "| dog | -0.371468 | -0.371468 | negative: gradient descent raises this logit |",
        "Gradient: (0.2312, -0.3715, 0.1402). One sample: its mean is itself.",
        "* closed form p − y = -0.371468280788; difference 3.47e-12",
    ]:
        assert line in text.splitlines(), line


def test_batch_sample_and_options() -> None:
    w = walkthrough(bundled("class_weights.yaml"), sample=2)
    assert w.sample == 2 and w.n == 3
    assert "weight" in w.options
    assert w.scale == pytest.approx(1 / 4.5)
    text = markdown(w)
    assert "(sample 2 of 3)" in text.splitlines()[0]
    assert "divided by the sum of the non-ignored labels' class weights" in text


def test_cli_default_and_logits() -> None:
    out = runner.invoke(app, ["explain"])
    assert out.exit_code == 0, out.output
    assert "Why d(loss)/d(logits)" in out.stdout and "0.464369" in out.stdout
    md = runner.invoke(app, ["explain", "--logits", "2,3,4", "--label", "1", "-f", "markdown"])
    assert md.exit_code == 0, md.output
    assert "| 1 | 3 | -1 | 0.367879 | 0.244728 |" in md.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["specs/sigmoid.yaml"], "explain covers softmax cross-entropy (not sigmoid) for now"),
        (
            ["specs/batch_mean.yaml", "--sample", "9"],
            "--sample 9: expected 0 to 3 (the batch has 4 rows)",
        ),
        (["--logits", "1,2"], "--logits needs --label (the true class)"),
        (["nope.yaml"], "nope.yaml: no such file"),
    ],
)
def test_cli_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["explain", *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"


def test_rounding_note_follows_the_expectations_not_the_name() -> None:
    """The note appears for any spec whose expected loss is -log of its rounded expected p_y,
    whatever its name, and not for a spec whose expectations are exact."""
    import gradcheck_cli as xc

    text = (
        "name: other\nlogits: [1.0, 2.0, 0.5]\nlabel: 1\n"
        "expect: {loss: 0.462, probs: [0.23, 0.63, 0.14], atol: 0.005}\n"
    )
    (renamed,) = xc.load(text)
    assert "The expected values round p_1 to 0.63" in markdown(walkthrough(renamed))
    exact = markdown(walkthrough(bundled("three_class.yaml")))
    assert "The expected values round" not in exact


def test_terminal_explain_has_no_raw_latex() -> None:
    import io

    from rich.console import Console

    from gradcheck_cli.report.explain import render_terminal, unicode_math

    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render_terminal(walkthrough(bundled("cat_dog_bird.yaml"))))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "$$" not in text and "\\frac" not in text and "\\partial" not in text
    assert "∂p_i/∂z_i = p_i (1 − p_i),      ∂p_i/∂z_j = −p_i p_j    (i ≠ j)" in text
    assert unicode_math(r"\frac{\partial L}{\partial p_c} = -\frac{q_c}{p_c}") == (
        "∂L/∂p_c = −q_c/p_c"
    )
    assert unicode_math(r"-z_y + \log \sum_j e^{z_j}") == "−z_y + log Σ_j e^(z_j)"
    # the Markdown for course notes keeps its LaTeX
    assert "\\frac{\\partial p_i}" in markdown(walkthrough(bundled("cat_dog_bird.yaml")))


def test_ignored_rows_are_skipped_by_default_and_refused_by_name(tmp_path: Path) -> None:
    from gradcheck_cli.api import load
    from gradcheck_cli.errors import XentcheckError

    path = tmp_path / "ig.yaml"
    path.write_text("logits: [[1, 2, 0.5], [0.3, 0.1, 2]]\nlabel: [-100, 1]\nignore_index: -100\n")
    (s,) = load(path)
    assert walkthrough(s).sample == 1  # the first row that counts
    with pytest.raises(XentcheckError, match=r"--sample 0: that row's label is ignore_index"):
        walkthrough(s, sample=0)
    path.write_text("logits: [[1, 2, 0.5]]\nlabel: [-100]\nignore_index: -100\n")
    (s,) = load(path)
    with pytest.raises(XentcheckError, match="every row's label is ignore_index"):
        walkthrough(s)
