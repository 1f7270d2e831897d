"""JUnit XML, the JSON Schema of specs, and atomic --output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app
from gradcheck_cli.schema import spec_schema
from gradcheck_cli.spec import CASE_KEYS, to_plain

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
runner = CliRunner()


def test_junit_report(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("logits: [1, 2]\nlabel: 7\n")
    result = runner.invoke(
        app,
        [
            "run",
            str(SPECS / "three_class.yaml"),
            str(SPECS / "batch_mean.yaml"),
            str(bad),
            "--format",
            "junit",
            "--rtol",
            "1e-13",
            "--atol",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 2, result.output
    root = ET.fromstring(result.stdout)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("errors")) == ("3", "1")
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["three-class", "batch-mean", "bad"]
    error = cases[2].find("error")
    assert (
        error is not None
        and error.get("message") == f"{bad}:2:8: label: class index 7 out of range: expected 0 to 1"
    )
    failures = [c.find("failure") for c in cases[:2]]
    failed = [f for f in failures if f is not None]
    assert failed, "finite differences cannot meet rtol 1e-13"
    msg = failed[0].get("message") or ""
    assert (
        "finite_difference vs exact: FAIL" in msg
        and "worst [" in msg
        and "(rtol 1e-13, atol 0)" in msg
    )


def test_schema_is_valid_and_accepts_every_bundled_spec() -> None:
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(SPECS.glob("*.yaml")):
        errors = list(validator.iter_errors(to_plain(path)))
        assert not errors, (path.name, errors[0].message)


@pytest.mark.parametrize(
    "doc",
    [
        {"logit": [1, 2]},
        {"logits": [1, 2], "label": 0, "reduction": "avg"},
        {"logits": [1, 2], "label": 0, "tolerance": {"rtl": 1}},
        {"cases": [{"logits": [1, 2], "label": 0, "bogus": 1}]},
        {"logits": [1, 2], "label": 0, "methods": ["numeric"]},
        {"logits": {"file": "z.npy", "path": "x"}, "label": 0},
    ],
)
def test_schema_rejects_unknown_keys_and_values(doc: object) -> None:
    assert list(jsonschema.Draft202012Validator(spec_schema()).iter_errors(doc))


def test_schema_covers_every_loader_key() -> None:
    assert set(spec_schema()["properties"]) == {*CASE_KEYS, "cases"}


def test_schema_command() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_output_is_atomic_when_rendering_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report.json"
    out.write_text("previous report\n")
    from gradcheck_cli import cli

    def broken_replace(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.os, "replace", broken_replace)
    result = runner.invoke(
        app, ["run", str(SPECS / "three_class.yaml"), "-f", "json", "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "cannot write --output" in result.stderr
    assert out.read_text() == "previous report\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_output_file_has_the_ordinary_mode(tmp_path: Path) -> None:
    """The temporary file behind the atomic write is 0600; the report is not (it is shared as
    a CI artifact or served as a page): 0666 less the umask, as open() makes it."""
    out = tmp_path / "report.html"
    old = os.umask(0o022)
    try:
        result = runner.invoke(
            app, ["run", str(SPECS / "three_class.yaml"), "-f", "html", "-o", str(out)]
        )
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def _bundled_results() -> list[object]:
    """Every case of every bundled spec, run once per reduction (the spec's own first)."""
    from dataclasses import replace

    from gradcheck_cli.engine import run_spec
    from gradcheck_cli.model import Spec
    from gradcheck_cli.spec import load_file

    results = []
    for path in sorted(SPECS.glob("*.yaml")):
        for loaded in load_file(path):
            assert isinstance(loaded, Spec), loaded
            for reduction in ("mean", "sum", "none"):
                variant = replace(loaded, reduction=reduction, expect=None)
                results.append(run_spec(variant))
    return results


def test_every_renderer_renders_every_bundled_spec_and_reduction() -> None:
    """The table crashed on a batched sigmoid spec with reduction none; JSON did not."""
    import io

    from rich.console import Console

    from gradcheck_cli.report import html, junit, table
    from gradcheck_cli.report import json as json_report

    results = _bundled_results()
    assert len(results) >= 3 * 21
    for r in results:
        console = Console(file=io.StringIO(), width=200, color_system=None)
        console.print(table.render([r]))  # type: ignore[list-item]
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert r.name in text and r.reduction in text  # type: ignore[attr-defined]
        doc = json.loads(json_report.render([r]))  # type: ignore[list-item]
        assert doc["results"][0]["reduction"] == r.reduction  # type: ignore[attr-defined]
        ET.fromstring(junit.render([r]))  # type: ignore[list-item]
        page = html.render([r])  # type: ignore[list-item]
        assert page.endswith("</html>\n") and f"reduction {r.reduction}" in page  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_no_number_is_cut_at_any_width(width: int) -> None:
    """At every width the table drops or stacks columns (and says so), never digits."""
    import io

    from rich.console import Console

    import gradcheck_cli as xc
    from gradcheck_cli.report import table

    layer = xc.check(SPECS / "softmax_layer.yaml").results
    worked = xc.check(SPECS / "cat_dog_bird.yaml").results
    several = xc.check(SPECS).results
    for results, numbers in (
        (worked, ["0.46436878", "-0.37146828", "0.14024438", "3.47e-12"]),
        (layer, ["-0.78301667"]),
        (several, ["0.83483588"] if width >= 200 else []),
    ):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        console.print(table.render(results))
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert "…" not in text
        assert max(len(line) for line in text.splitlines()) <= width
        for number in numbers:
            assert number in text, (width, number)
        if width < 120:
            assert "narrow terminal" in text


def test_several_specs_one_line_each_and_failures_in_full() -> None:
    import io

    from rich.console import Console

    import gradcheck_cli as xc
    from gradcheck_cli.report import table

    results = list(xc.check(SPECS).results)
    failing = xc.check(SPECS / "three_class.yaml", rtol=0.0, atol=0.0).results
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table.render([*results, *failing]))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert sum(line.startswith("PASS ") for line in lines) == len(results)
    assert sum(line.startswith("FAIL ") for line in lines) == 2  # its line, then its report
    assert "check " in "\n".join(lines)  # the failed spec's check table
    assert lines[-1] == f"{len(results)} passed, 1 failed, 0 errors"
    verbose = Console(file=io.StringIO(), width=200, color_system=None)
    verbose.print(table.render(results, verbose=True))
    assert verbose.file.getvalue().count("probs_sum_to_one") >= 20  # type: ignore[attr-defined]
