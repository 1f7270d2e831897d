"""--format github (gradcheck_cli/report/github.py): annotations at the spec line that defines
the failing quantity, GitHub's limit of 10 per step, the job summary, and the automatic choice
inside GitHub Actions."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app
from gradcheck_cli.report.github import MAX_ANNOTATIONS, Annotation

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ROOT / "tests" / "data" / "impl" / "impls.py"
runner = CliRunner()

# the expected loss is wrong; its line is 7
WRONG_GOLDEN = """\
# A spec whose golden loss is wrong.
name: wrong-golden
classes: [cat, dog, bird]
logits: [1.0, 2.0, 0.5]
label: 1
expect:
  loss: 0.5
"""

BATCH = """\
name: batch
logits:
  - [1.0, 2.0, 0.5]
  - [0.5, 0.2, 3.0]
  - [2.0, 2.0, 2.0]
label: [1, 2, 0]
"""


def _annotations(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("::error")]


def test_a_failing_expectation_is_annotated_at_its_line(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    Path("spec.yaml").write_text(WRONG_GOLDEN)
    result = runner.invoke(app, ["run", "spec.yaml", "--format", "github"])
    assert result.exit_code == 1, result.output
    (line,) = _annotations(result.output)
    assert line.startswith("::error file=spec.yaml,line=7,col=3,title=xentcheck%3A wrong-golden")
    assert "::expect.loss: 0.4643687841 vs expected 0.5" in line
    assert "0 passed, 1 failed, 0 errors" in result.output


def test_an_implementation_failure_is_annotated_at_the_worst_row(tmp_path: Path) -> None:
    spec = tmp_path / "batch.yaml"
    spec.write_text(BATCH)
    impl = f"{IMPLS}:wrong_last_row"
    result = runner.invoke(app, ["run", str(spec), "--impl", impl, "--format", "github"])
    assert result.exit_code == 1, result.output
    lines = _annotations(result.output)
    gradient = [a for a in lines if "vs reference:" in a]
    assert gradient and ",line=5,col=5," in gradient[0]  # row 2 of the batch is on line 5
    assert "diagnosis" in gradient[0]


def test_an_invalid_spec_is_annotated_at_its_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("name: broken\nlogits: [1.0, 2.0]\nlabel: 5\n")
    Path("good.yaml").write_text("logits: [1.0, 2.0]\nlabel: 1\n")
    result = runner.invoke(app, ["run", "bad.yaml", "good.yaml", "--format", "github"])
    assert result.exit_code == 2
    (line,) = _annotations(result.output)
    assert line == (
        "::error file=bad.yaml,line=3,col=8,title=xentcheck%3A invalid spec bad::"
        "label: class index 5 out of range: expected 0 to 1"
    )
    assert "1 passed, 0 failed, 1 error" in result.output


def test_more_than_ten_failures_are_summarised_in_the_tenth(tmp_path: Path) -> None:
    cases = "".join(
        f"  - name: c{i}\n    logits: [1.0, 2.0, 0.5]\n    label: 1\n    expect:\n"
        f"      loss: {i + 1}.0\n"
        for i in range(13)
    )
    spec = tmp_path / "many.yaml"
    spec.write_text("cases:\n" + cases)
    result = runner.invoke(app, ["run", str(spec), "--format", "github"])
    lines = _annotations(result.output)
    assert len(lines) == MAX_ANNOTATIONS
    assert "title=xentcheck%3A 4 more failures::4 more failing places" in lines[-1]
    assert "file=" not in lines[-1]  # about the run, not one file
    assert result.output.count("FAIL c") == 13  # the log still lists every one


def test_messages_and_properties_are_escaped() -> None:
    a = Annotation("a,b:c.yaml", 3, 1, "t: x", "50% off\nsecond line")
    assert (
        a.command()
        == "::error file=a%2Cb%3Ac.yaml,line=3,col=1,title=t%3A x::50%25 off%0Asecond line"
    )


def test_the_job_summary_is_appended(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    Path("spec.yaml").write_text(WRONG_GOLDEN)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    spec = str(ROOT / "specs" / "cat_dog_bird.yaml")
    result = runner.invoke(app, ["run", "spec.yaml", spec, "--format", "github"])
    assert result.exit_code == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n### xentcheck: 1 passed, 1 failed, 0 errors\n")
    assert "| ❌ fail | wrong-golden | `spec.yaml:2` | expect.loss |" in text
    assert "| ✅ pass | cat-dog-bird |" in text
    assert "expect.loss: 0.4643687841 vs expected 0.5" in text  # the details


@pytest.mark.parametrize(
    ("env", "args", "github"),
    [
        ({"GITHUB_ACTIONS": "true"}, [], True),
        ({"GITHUB_ACTIONS": "true"}, ["--format", "table"], False),
        ({"GITHUB_ACTIONS": "true"}, ["--output", "report.txt"], False),
        ({}, [], False),
    ],
)
def test_github_is_the_default_inside_actions(
    tmp_path: Path,
    monkeypatch,
    env: dict[str, str],
    args: list[str],
    github: bool,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Path("spec.yaml").write_text(WRONG_GOLDEN)
    result = runner.invoke(app, ["run", "spec.yaml", *args])  # CliRunner: not a terminal
    assert result.exit_code == 1
    assert bool(_annotations(result.output)) is github
