"""[tool.xentcheck] in pyproject.toml (gradcheck_cli/settings.py): found from the working
directory up, overridden by the command line, shown by `xentcheck config`, located errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

PYPROJECT = """\
[project]
name = "demo"

[tool.xentcheck]
specs = ["checks"]
rtol = 1e-6
fail-on-growth = "2x,+1ulp"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "checks").mkdir()
    shutil.copy(ROOT / "specs" / "cat_dog_bird.yaml", tmp_path / "checks")
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "deeper").mkdir()
    monkeypatch.chdir(tmp_path / "deeper")  # found from a subdirectory too
    return tmp_path


def test_run_without_paths_checks_the_configured_specs(project: Path) -> None:
    result = runner.invoke(app, ["run", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # paths above the working directory are shown absolute
    assert [r["file"] for r in doc["results"]] == [str(project / "checks" / "cat_dog_bird.yaml")]
    (spec,) = doc["results"]
    assert {c["rtol"] for c in spec["comparisons"]} == {1e-6}  # the file's rtol


def test_the_command_line_overrides_the_file(project: Path) -> None:
    result = runner.invoke(app, ["run", "--format", "json", "--rtol", "1e-3"])
    (spec,) = json.loads(result.stdout)["results"]
    assert {c["rtol"] for c in spec["comparisons"]} == {1e-3}
    given = runner.invoke(app, ["run", "--format", "json", str(ROOT / "specs" / "batch_mean.yaml")])
    assert [r["name"] for r in json.loads(given.stdout)["results"]] == ["batch-mean"]


def test_config_shows_each_value_and_where_it_came_from(project: Path) -> None:
    result = runner.invoke(app, ["config", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["file"] == str(project / "pyproject.toml")
    found = doc["settings"]
    file = project / "pyproject.toml"
    assert found["specs"] == {"value": [str(project / "checks")], "source": f"{file}:5"}
    assert found["rtol"] == {"value": 1e-6, "source": f"{file}:6"}
    assert found["fail_on_growth"]["source"] == f"{file}:7"
    assert found["impl"]["value"] is None and found["impl"]["source"].startswith("default")
    table = runner.invoke(app, ["config"])
    assert "rtol" in table.output and "pyproject.toml:6" in table.output


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("rtl = 1e-6", "pyproject.toml:5: tool.xentcheck.rtl: unknown key"),
        ('rtol = "small"', "pyproject.toml:5: tool.xentcheck.rtol: expected a number >= 0"),
        ('dtype = "float8"', "tool.xentcheck.dtype: expected one of float64 | float32"),
        ('specs = "checks"', "tool.xentcheck.specs: expected a list of spec files"),
    ],
)
def test_a_bad_setting_is_a_located_usage_error(project: Path, line: str, message: str) -> None:
    (project / "pyproject.toml").write_text(f"[project]\nname = 'x'\n\n[tool.xentcheck]\n{line}\n")
    for command in (["run"], ["config"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output


def test_invalid_toml_is_a_usage_error(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.xentcheck]\nrtol = = 1\n")
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "invalid TOML" in result.output


def test_a_pyproject_without_the_table_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["file"] != str(tmp_path / "pyproject.toml")


def test_format_and_baseline_from_the_file(project: Path) -> None:
    base = project / "base.json"
    first = runner.invoke(app, ["run", "--save-baseline", str(base), "-q"])
    assert first.exit_code == 0, first.output
    text = PYPROJECT + 'format = "github"\nbaseline = "base.json"\n'
    (project / "pyproject.toml").write_text(text)
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 0, result.output
    assert "1 passed, 0 failed, 0 errors" in result.output  # the github format's closing line
    assert "comparisons grew past --fail-on-growth" in result.output  # the baseline was read
