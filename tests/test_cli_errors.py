"""``xentcheck run`` on invalid specs: exit 2, the exact located message on stderr, no traceback.

The bad corpus is ``tests/data/bad/`` (see ``tests/test_spec.py``): each file's first line is
``# expected:<line>:<column>: <field>: <message>``, optionally followed by ``# xfail: <reason>``
for a known loader bug.

Typer's ``CliRunner`` (typer 0.27-0.28 vendor Click as ``typer._click``) keeps stdout and
stderr apart: ``result.stdout`` and ``result.stderr`` are separate and ``result.output``
interleaves both, so the tests below can tell where each line went. The runner catches exceptions
instead of printing a traceback, so "no traceback" is checked through ``result.exception`` (only
``SystemExit`` from ``typer.Exit`` is allowed) as well as the text.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app

from badcorpus import BAD, bad_corpus, corpus_params

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
GOOD = REPO / "specs" / "cat_dog_bird.yaml"


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert_no_traceback(result)
    return result


def assert_no_traceback(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


def test_runner_keeps_stderr_apart() -> None:
    path = str(BAD / "label_negative.yaml")
    result = invoke("run", path)
    message = f"error: {path}:3:8: label: class index -1 out of range: expected 0 to 2\n"
    assert result.stderr == message
    assert not any(line.startswith("error:") for line in result.stdout.splitlines())
    assert message in result.output  # the interleaved stream has both


@pytest.mark.parametrize(("name", "expected"), corpus_params())
def test_bad_file_exit_2_and_exact_message_on_stderr(name: str, expected: str) -> None:
    path = str(BAD / name)
    result = invoke("run", path)
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}:{expected}\n"


@pytest.mark.parametrize(("name", "expected"), corpus_params())
def test_bad_file_json_report(name: str, expected: str) -> None:
    path = str(BAD / name)
    result = invoke("run", "--format", "json", "--quiet", path)
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}:{expected}\n"
    report = json.loads(result.stdout)  # stdout holds the report and nothing else
    errors = [r for r in report["results"] if r["status"] == "error"]
    assert [(r["file"], r["message"]) for r in errors] == [(path, f"{path}:{expected}")]


def test_good_spec_still_reported_among_bad_ones() -> None:
    bad = str(BAD / "label_negative.yaml")
    cases = str(BAD / "cases_one_bad.yaml")
    result = invoke("run", "--format", "json", str(GOOD), bad, cases)
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    by_name = {r["name"]: r for r in report["results"]}
    assert [r["name"] for r in report["results"]] == [
        "cat-dog-bird",
        "label_negative",
        "good-case",
        "cases_one_bad[1]",
    ]
    assert by_name["cat-dog-bird"]["status"] == "pass"
    assert by_name["cat-dog-bird"]["file"] == str(GOOD)
    assert by_name["good-case"]["status"] == "pass"
    assert by_name["label_negative"]["status"] == "error"
    assert by_name["label_negative"]["message"] == (
        f"{bad}:3:8: label: class index -1 out of range: expected 0 to 2"
    )
    assert by_name["cases_one_bad[1]"]["status"] == "error"
    assert by_name["cases_one_bad[1]"]["message"] == (
        f"{cases}:8:12: cases[1].label: class index 7 out of range: expected 0 to 2"
    )
    assert report["summary"] == {
        "total": 4,
        "passed": 2,
        "failed": 0,
        "errors": 2,
        "skipped": 0,
        "inconclusive": 0,
    }
    assert result.stderr.splitlines() == [
        f"error: {bad}:3:8: label: class index -1 out of range: expected 0 to 2",
        f"error: {cases}:8:12: cases[1].label: class index 7 out of range: expected 0 to 2",
        "2 passed, 0 failed, 2 errors",
    ]


def test_all_good_corpus_files_in_one_run() -> None:
    """Every error is reported, in order, and one bad file never hides another."""
    corpus = [(n, e) for n, e, reason in bad_corpus() if not reason]
    paths = [str(BAD / n) for n, _ in corpus]
    result = invoke("run", "--format", "json", "--quiet", *paths)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {BAD / n}:{e}" for n, e in corpus]
    report = json.loads(result.stdout)
    assert report["summary"]["errors"] == len(corpus)
    passed = sorted(r["name"] for r in report["results"] if r["status"] == "pass")
    # The good case of each cases file still runs: cases_missing_label, _logits, cases_one_bad.
    assert passed == ["cases_missing_logits[0]", "good-case", "labelled"]


def test_whole_corpus_directory_in_one_run() -> None:
    result = invoke("run", "--format", "json", "--quiet", str(BAD))
    assert result.exit_code == 2


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    result = invoke("run", str(path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {path}: not a text file (contains NUL bytes); expected a YAML spec\n"
    )


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"logits: [1, 2]\nlabel: caf\xe9\n")
    result = invoke("run", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}:2:11: not valid UTF-8 (byte 0xe9)\n"


def test_missing_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    result = invoke("run", "--format", "json", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"error: {path}: no such file or directory"
    (entry,) = json.loads(result.stdout)["results"]
    assert (entry["name"], entry["status"]) == (path, "error")


def test_directory_without_specs(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("not a spec")
    result = invoke("run", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path}: directory contains no *.yaml or *.yml files\n"


def test_glob_without_match(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.yaml")
    result = invoke("run", pattern)
    assert result.exit_code == 2
    assert result.stderr == f"error: {pattern}: pattern matches no spec files\n"


def test_missing_path_does_not_hide_good_spec(tmp_path: Path) -> None:
    result = invoke("run", "-f", "json", "-q", str(tmp_path / "nope.yaml"), str(GOOD))
    assert result.exit_code == 2
    statuses = [r["status"] for r in json.loads(result.stdout)["results"]]
    assert statuses == ["error", "pass"]


def test_deep_nesting_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("logits: " + "[" * 600 + "]" * 600 + "\nlabel: 0\n")
    result = invoke("run", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:1:")


def test_huge_integer_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("logits: [1, " + "9" * 5000 + "]\nlabel: 0\n")
    result = invoke("run", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:1:13: logits[1]: ")


def test_real_process_streams() -> None:
    """The installed entry point, in a real process: report on stdout, message on stderr."""
    bad = str(BAD / "unknown_key.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "gradcheck_cli", "run", "-f", "json", "-q", str(GOOD), bad],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr == f"error: {bad}:2:1: logit: unknown key; did you mean 'logits'?\n"
    statuses = {r["name"]: r["status"] for r in json.loads(proc.stdout)["results"]}
    assert statuses == {"cat-dog-bird": "pass", "unknown_key": "error"}
