"""The command line: exit codes, report formats, bundled specs, the jacobian command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gradcheck_cli import __version__
from gradcheck_cli.cli import Format, MethodName, app, bundled_specs_dir
from gradcheck_cli.methods import METHODS

runner = CliRunner()


def strict_json(text: str) -> Any:
    """Parse RFC 8259 JSON: NaN and Infinity tokens are errors."""

    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def test_method_choices_match_the_registry() -> None:
    assert [m.value for m in MethodName] == list(METHODS)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"xentcheck {__version__}\n"


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "run" in result.stdout and "jacobian" in result.stdout


COMMAND_ARGS = {
    "run": ["run", "{specs}/cat_dog_bird.yaml"],
    "jacobian": ["jacobian", "--logits", "1,2,0.5", "--label", "1"],
    "sweep": ["sweep", "{specs}/cat_dog_bird.yaml"],
    "explain": ["explain"],
    "mutate": ["mutate", "{specs}/cat_dog_bird.yaml"],
}


def test_every_command_with_formats_is_in_the_registry() -> None:
    from gradcheck_cli.report import RENDERERS

    assert set(RENDERERS) == set(COMMAND_ARGS)


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("command", list(COMMAND_ARGS))
def test_every_format_of_every_command(command: str, fmt: Format, specs_dir: Path) -> None:
    """Exhaustive over the Format enum: each command renders the formats its registry entry
    names, and refuses every other one with exit 2 and the list of those it has."""
    from gradcheck_cli.report import RENDERERS

    args = [a.format(specs=specs_dir) for a in COMMAND_ARGS[command]]
    result = runner.invoke(app, [*args, "--format", fmt.value])
    if fmt in RENDERERS[command]:
        assert result.exit_code == 0, result.output
        assert result.stdout.strip()
        if fmt is Format.json:
            strict_json(result.stdout)
    else:
        have = ", ".join(f.value for f in RENDERERS[command])
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr == (
            f"error: xentcheck {command} has no --format {fmt.value} (it has: {have})\n"
        )


def test_table_output_of_the_worked_example(specs_dir: Path) -> None:
    result = runner.invoke(app, ["run", str(specs_dir / "cat_dog_bird.yaml")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[" not in out  # no escape codes when not a terminal
    lines = out.splitlines()
    assert lines[0].startswith("PASS  cat-dog-bird")
    assert "loss 0.46436878" in lines[0]
    dog = next(line for line in lines if line.startswith("dog "))
    assert dog.split()[:6] == ["dog", "2", "0.62853172", "1", "-0.37146828", "-0.37146828"]
    assert lines[-1] == "1 passed, 0 failed, 0 errors"


def test_json_report_schema(specs_dir: Path) -> None:
    result = runner.invoke(app, ["run", str(specs_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert doc["schema_version"] == 1
    assert doc["tool"] == {"name": "xentcheck", "version": __version__}
    assert doc["summary"]["errors"] == 0 and doc["summary"]["failed"] == 0
    assert doc["summary"]["total"] == len(doc["results"]) >= 6
    by_name = {r["name"]: r for r in doc["results"]}
    cdb = by_name["cat-dog-bird"]
    assert cdb["status"] == "pass" and cdb["message"] is None
    assert cdb["loss"] == pytest.approx(0.4643688, abs=5e-8)
    assert cdb["gradients"]["analytic"] == pytest.approx(
        [0.2312239, -0.3714683, 0.1402444], abs=5e-8
    )
    for c in cdb["comparisons"]:
        assert set(c) >= {
            "method",
            "reference",
            "max_abs_error",
            "max_rel_error",
            "worst_index",
            "rtol",
            "atol",
            "passed",
        }
    assert {c["name"] for c in cdb["checks"]} >= {"probs_sum_to_one", "expect.loss"}
    extreme = by_name["extreme-logits"]
    assert extreme["gradients"]["jacobian"] is None
    assert "underflows" in extreme["not_computable"]["jacobian"]
    assert extreme["loss"] == [0.0, 1000.0]
    assert extreme["gradients"]["analytic"][1] == [1.0, 0.0, -1.0]
    # Summary line goes to stderr for machine formats.
    assert result.stderr.strip().endswith("passed, 0 failed, 0 errors")


def test_json_nonfinite_values_are_strings() -> None:
    result = runner.invoke(
        app, ["jacobian", "--logits=0,-800,1", "--label", "1", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert doc["dl_dp"] == [0.0, "-inf", 0.0]
    assert doc["chain"] is None and "underflows" in doc["chain_note"]
    assert doc["loss"] == pytest.approx(801.3132616875182, rel=1e-15)


def test_output_file(tmp_path: Path, specs_dir: Path) -> None:
    out = tmp_path / "report.json"
    result = runner.invoke(
        app, ["run", str(specs_dir / "three_class.yaml"), "-f", "json", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert strict_json(out.read_text())["summary"]["passed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_table_output_file(tmp_path: Path, specs_dir: Path) -> None:
    out = tmp_path / "report.txt"
    result = runner.invoke(app, ["run", str(specs_dir / "three_class.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("PASS  three-class") and text.rstrip().endswith(
        "1 passed, 0 failed, 0 errors"
    )


def test_unwritable_output_is_exit_2(tmp_path: Path, specs_dir: Path) -> None:
    out = tmp_path / "missing-dir" / "r.json"
    result = runner.invoke(
        app, ["run", str(specs_dir / "three_class.yaml"), "-f", "json", "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.stderr  # checked before the run
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        target = str(tmp_path / "ro" / "r.json")
        denied = runner.invoke(
            app, ["run", str(specs_dir / "three_class.yaml"), "-f", "json", "-o", target]
        )
    finally:
        (tmp_path / "ro").chmod(0o700)
    if os.geteuid() != 0:  # root writes anywhere
        assert denied.exit_code == 2 and "cannot write --output" in denied.stderr
    assert "Traceback" not in result.output


def test_failing_comparison_exits_1(specs_dir: Path) -> None:
    result = runner.invoke(
        app, ["run", str(specs_dir / "batch_mean.yaml"), "--rtol", "0", "--atol", "0"]
    )
    assert result.exit_code == 1, result.output
    assert "FAIL  batch-mean" in result.stdout
    assert result.stdout.splitlines()[-1] == "0 passed, 1 failed, 0 errors"


def test_method_option_limits_methods(specs_dir: Path) -> None:
    result = runner.invoke(
        app, ["run", str(specs_dir / "cat_dog_bird.yaml"), "-f", "json", "--method", "jacobian"]
    )
    assert result.exit_code == 0, result.output
    (r,) = strict_json(result.stdout)["results"]
    assert list(r["gradients"]) == ["analytic", "jacobian"]


def test_unknown_method_option_is_usage_error(specs_dir: Path) -> None:
    result = runner.invoke(app, ["run", str(specs_dir / "cat_dog_bird.yaml"), "--method", "magic"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_bad_spec_among_good_ones_exit_2_and_others_still_run(
    tmp_path: Path, specs_dir: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("logits: [1, 2]\nlabel: 5\n")
    result = runner.invoke(
        app, ["run", str(specs_dir / "cat_dog_bird.yaml"), str(bad), "-f", "json"]
    )
    assert result.exit_code == 2
    doc = strict_json(result.stdout)
    assert [r["status"] for r in doc["results"]] == ["pass", "error"]
    assert (
        doc["results"][1]["message"]
        == f"{bad}:2:8: label: class index 5 out of range: expected 0 to 1"
    )
    assert f"error: {bad}:2:8: label:" in result.stderr


def test_errors_win_over_failures(tmp_path: Path, specs_dir: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("logits: [1, 2]\n")
    args = ["run", str(specs_dir / "batch_mean.yaml"), str(bad), "--atol", "0", "--rtol", "0"]
    assert runner.invoke(app, args).exit_code == 2


def test_no_paths_runs_bundled_specs() -> None:
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 0, result.output
    assert "No paths given: running the bundled example specs" in result.stderr
    assert "cat-dog-bird" in result.stdout
    # bundled specs are named specs/<file>, never by their site-packages path
    assert "site-packages" not in result.stdout
    assert "specs/z_loss.yaml" in result.stdout
    quiet = runner.invoke(app, ["run", "--quiet"])
    assert quiet.stderr == ""


def test_bundled_specs_dir_has_the_examples() -> None:
    names = {p.name for p in bundled_specs_dir().glob("*.yaml")}
    assert {
        "cat_dog_bird.yaml",
        "three_class.yaml",
        "batch_mean.yaml",
        "probability_target.yaml",
        "extreme_logits.yaml",
    } <= names


def test_jacobian_table() -> None:
    result = runner.invoke(
        app, ["jacobian", "--logits", "1,2,0.5", "--label", "dog", "--classes", "cat,dog,bird"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("dog ") and "0.2334796" in line)
    assert row.split() == ["dog", "-0.14533155", "0.2334796", "-0.088148043"]
    assert "symmetric: pass" in result.stdout and "rows sum to 0: pass" in result.stdout
    chain = [line for line in lines if line.startswith("dog ")][-1]
    assert chain.split() == ["dog", "-1.5910096", "-0.37146828", "-0.37146828", "0"]


def test_jacobian_json() -> None:
    result = runner.invoke(app, ["jacobian", "--logits", "1,2,0.5", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert doc["probs"] == pytest.approx([0.2312239, 0.6285317, 0.1402444], abs=5e-8)
    assert (
        len(doc["jacobian"]) == 3 and doc["symmetric"] is True and doc["rows_sum_to_zero"] is True
    )
    assert "label" not in doc


def test_jacobian_negative_logits_and_index_label() -> None:
    result = runner.invoke(app, ["jacobian", "--logits", "-1,2", "--label", "0", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["label"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--logits", "1,x"],
            "error: --logits: expected comma-separated numbers, found 'x' at position 2",
        ),
        (
            ["--logits", "1,inf"],
            "error: --logits: expected finite numbers, found 'inf' at position 2",
        ),
        (
            ["--logits", "1,2", "--label", "3"],
            "error: --label: class index 3 out of range: expected 0 to 1",
        ),
        (
            ["--logits", "1,2", "--label", "dog"],
            "error: --label: 'dog' is neither a class index nor a class name (no --classes given)",
        ),
        (
            ["--logits", "1,2", "--classes", "a,b,c"],
            "error: --classes: expected 2 names (one per logit), found 3",
        ),
        (["--logits", "1,2", "--classes", "a,a"], "error: --classes: class names must be unique"),
    ],
)
def test_jacobian_bad_input(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["jacobian", *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == message
    assert result.stdout == ""


def test_python_dash_m_entry_point(specs_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradcheck_cli", "run", str(specs_dir / "three_class.yaml"), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 passed, 0 failed, 0 errors"


def test_json_layer_and_options(specs_dir: Path) -> None:
    result = runner.invoke(
        app,
        [
            "run",
            str(specs_dir / "softmax_layer.yaml"),
            str(specs_dir / "z_loss.yaml"),
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    layer, zl = strict_json(result.stdout)["results"]
    weights = layer["parameter_gradients"]["weights"]
    assert set(weights) == {"analytic", "jacobian", "finite_difference"}
    assert len(weights["analytic"]) == 3 and len(weights["analytic"][0]) == 5
    assert {c["quantity"] for c in layer["comparisons"]} == {"logits", "weights", "inputs"}
    assert zl["options"] == {"weight": [0.5, 2.0, 1.0], "ignore_index": -100, "z_loss": 0.01}
    assert zl["loss_kind"] == "softmax_cross_entropy"


def test_json_nan_loss_is_a_string(specs_dir: Path) -> None:
    result = runner.invoke(app, ["run", str(specs_dir / "all_ignored.yaml"), "-f", "json"])
    assert result.exit_code == 0, result.output
    (r,) = strict_json(result.stdout)["results"]
    assert r["loss"] == "nan"
    assert "every sample is ignored" in r["loss_note"]


def test_table_shows_options_and_weights_layout(specs_dir: Path) -> None:
    out = runner.invoke(app, ["run", str(specs_dir / "z_loss.yaml")]).stdout
    assert out.splitlines()[1] == "weight [0.5, 2, 1]  ignore_index -100  z_loss 0.01"
    out = runner.invoke(app, ["run", str(specs_dir / "softmax_layer.yaml")]).stdout
    assert "dL/dW (analytic), shape (D, K) = (3, 5): row d = input d, column k = class k" in out


def test_readme_dtype_example_skips_what_does_not_fit(specs_dir: Path) -> None:
    """`xentcheck run specs/ --dtype float32` (a README example): huge_logits.yaml (1e300)
    cannot be rounded to float32, so it is skipped with the reason, and the run exits 0."""
    result = runner.invoke(app, ["run", str(specs_dir), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "SKIP" in result.stdout
    assert "cannot run in float32: logit 1e+300 at [0, 0] overflows float32" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(", 1 skipped")
    huge = str(specs_dir / "huge_logits.yaml")
    report = runner.invoke(app, ["run", huge, "-f", "json", "--dtype", "float16"])
    assert report.exit_code == 0
    doc = strict_json(report.stdout)
    assert doc["summary"]["skipped"] == 1 and doc["results"][0]["status"] == "skip"


def test_discovery_skips_hidden_dirs_venvs_and_site_packages(tmp_path: Path) -> None:
    good = "logits: [1.0, 2.0]\nlabel: 0\n"
    for rel in (
        ".venv/a.yaml",
        "env/b.yaml",
        "lib/site-packages/c.yaml",
        "ok/d.yaml",
        "tests/data/bad/e.yaml",
        ".hidden/f.yaml",
        "ok/node_modules/g.yaml",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(good if rel != "tests/data/bad/e.yaml" else "logits: [1]\n")
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    result = runner.invoke(app, ["run", str(tmp_path), "-f", "json", "-q"])
    names = [r["file"] for r in strict_json(result.stdout)["results"]]
    assert sorted(Path(n).relative_to(tmp_path).as_posix() for n in names) == [
        "ok/d.yaml",
        "tests/data/bad/e.yaml",
    ]
    assert result.exit_code == 2  # e.yaml is invalid
    excluded = runner.invoke(app, ["run", str(tmp_path), "--exclude", "bad", "-q"])
    assert excluded.exit_code == 0, excluded.output
    also = runner.invoke(app, ["run", str(tmp_path), "--exclude", "*/tests/data/*", "-q"])
    assert also.exit_code == 0, also.output


def test_output_into_a_missing_directory_fails_before_the_run(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "report.json"
    result = runner.invoke(app, ["run", "-f", "json", "--output", str(target)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --output {target}: the directory {tmp_path / 'nope'} does not exist\n"
    )
    assert "No paths given" not in result.stderr  # nothing ran


def test_long_runs_announce_their_cost(monkeypatch: pytest.MonkeyPatch, specs_dir: Path) -> None:
    import gradcheck_cli.cli as cli_module
    import gradcheck_cli.fastmode as fastmode

    monkeypatch.setattr(fastmode, "FAST_BUDGET", 10)  # batch_mean (4 x 5: N K^2 = 100) is "large"
    monkeypatch.setattr(cli_module, "ANNOUNCE_ABOVE", 10)
    result = runner.invoke(app, ["run", str(specs_dir / "batch_mean.yaml"), "--full"])
    assert result.exit_code == 0, result.output
    assert "note: the element-wise check of batch-mean costs about 1e+02 element operations" in (
        result.stderr
    )
    quiet = runner.invoke(app, ["run", str(specs_dir / "batch_mean.yaml"), "--full", "-q"])
    assert "note:" not in quiet.stderr
    swept = runner.invoke(app, ["sweep", str(specs_dir / "batch_mean.yaml"), "--full"])
    assert swept.exit_code == 0 and "note: the element-wise sweep costs about" in swept.stderr


def test_short_help_and_help_points_to_what_ships() -> None:
    short = runner.invoke(app, ["run", "-h"])
    assert short.exit_code == 0 and "--impl" in short.stdout
    assert "docs/impl.md" not in short.stdout  # the wheel ships no docs/
    assert "python -m pydoc gradcheck_cli.impl" in " ".join(short.stdout.split())


def test_an_invalid_spec_is_reported_once_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("logits: [1, 2]\nlabel: 7\n")
    result = runner.invoke(app, ["run", str(bad)])
    message = "label: class index 7 out of range"
    assert result.exit_code == 2
    assert result.stderr.count(message) == 1 and message not in result.stdout
