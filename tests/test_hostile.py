"""Hostile and broken input: bounded time and memory, exit codes 0/1/2 only, nothing lost.

Includes a Hypothesis fuzz test that mutates the bundled specs at the text level (deleting,
duplicating and swapping characters and lines) and at the structure level (values of the wrong
type, shape or sign) and runs the CLI on them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gradcheck_cli import cli
from gradcheck_cli.cli import app
from gradcheck_cli.spec import to_plain

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
runner = CliRunner()


def run_json(path: Path) -> Any:
    result = runner.invoke(app, ["run", str(path), "--format", "json", "--quiet"])
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    assert doc["summary"]["total"] >= 1  # the file is listed, whatever it holds
    return doc


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    source=st.sampled_from(SPECS),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["del", "dup", "swap", "dline", "dupline", "swapline"]),
            st.integers(0, 10**6),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_text_mutations_never_crash(
    tmp_path_factory: pytest.TempPathFactory, source: Path, edits: list[tuple[str, int]]
) -> None:
    text = source.read_text()
    for op, at in edits:
        if op.endswith("line"):
            lines = text.splitlines(keepends=True)
            if not lines:
                continue
            i = at % len(lines)
            if op == "dline":
                del lines[i]
            elif op == "dupline":
                lines.insert(i, lines[i])
            else:
                j = (at // 7) % len(lines)
                lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif text:
            i = at % len(text)
            if op == "del":
                text = text[:i] + text[i + 1 :]
            elif op == "dup":
                text = text[:i] + text[i] + text[i:]
            else:
                j = (at // 7) % len(text)
                chars = list(text)
                chars[i], chars[j] = chars[j], chars[i]
                text = "".join(chars)
    path = tmp_path_factory.mktemp("fuzz") / "mutated.yaml"
    path.write_text(text)
    run_json(path)


WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(-5, 5), max_size=4),
    st.lists(st.lists(st.integers(-3, 3), max_size=3), max_size=3),
    st.dictionaries(st.sampled_from(["file", "key", "rtol", "x"]), st.integers(), max_size=2),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(source=st.sampled_from(SPECS), pick=st.integers(0, 10**6), value=WRONG)
def test_structure_mutations_never_crash(
    tmp_path_factory: pytest.TempPathFactory, source: Path, pick: int, value: Any
) -> None:
    doc = to_plain(source)
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k in node:
                paths.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                paths.append((node, i))
                walk(node[i])

    walk(doc)
    parent, key = paths[pick % len(paths)]
    parent[key] = value
    path = tmp_path_factory.mktemp("fuzz") / "mutated.yaml"
    path.write_text(yaml.safe_dump(doc))
    run_json(path)


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    lines = ["a: &a [" + ", ".join(["1.0"] * 1000) + "]"]
    lines.append("rows: &b [" + ", ".join(["*a"] * 1000) + "]")
    lines.append("logits: [" + ", ".join(["*b"] * 100) + "]")  # 1e8 elements if expanded
    lines.append("label: 0")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    result = runner.invoke(app, ["run", str(path), "-q"])
    assert time.perf_counter() - start < 15
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_deep_alias_rows_are_bounded(tmp_path: Path) -> None:
    row = "[" + ", ".join(["0.5"] * 5000) + "]"
    text = (
        f"logits: [&r {row}, "
        + ", ".join(["*r"] * 3999)
        + "]\nlabel: ["
        + ", ".join(["0"] * 4000)
        + "]\n"
    )
    path = tmp_path / "rows.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == 2
    assert "more than 10000000 elements" in result.stderr


def test_oversized_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradcheck_cli.spec as spec_module

    monkeypatch.setattr(spec_module, "MAX_SPEC_BYTES", 100)
    path = tmp_path / "big.yaml"
    path.write_text("logits: [" + ", ".join(["1.0"] * 100) + "]\nlabel: 0\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "a spec may have; put large arrays in .npy files" in result.stderr


def test_internal_error_is_one_line_and_debug_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradcheck_cli.api as api

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(api, "run_spec", boom)
    result = runner.invoke(app, ["run", str(ROOT / "specs" / "three_class.yaml")])
    assert result.exit_code == 2
    assert "internal error (RuntimeError: unexpected); please report this" in result.stderr
    debug = runner.invoke(app, ["--debug", "run", str(ROOT / "specs" / "three_class.yaml")])
    assert isinstance(debug.exception, RuntimeError)
    # --debug is no global state: the next run without it is one line again
    again = runner.invoke(app, ["run", str(ROOT / "specs" / "three_class.yaml")])
    assert again.exit_code == 2 and "internal error (RuntimeError" in again.stderr


def test_main_turns_stray_exceptions_into_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.sys, "argv", ["xentcheck", "run"])

    def broken() -> None:
        raise ValueError("bad state")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "xentcheck: internal error (ValueError: bad state); please report it "
        "(run with --debug for the traceback)\n"
    )


def test_ctrl_c_exits_130_without_partial_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "z.npy", rng.normal(size=(512, 1000)))
    np.save(tmp_path / "y.npy", rng.integers(0, 1000, 512))
    cases = "\n".join(f"  - name: c{i}" for i in range(400))  # tens of seconds of work
    (tmp_path / "slow.yaml").write_text(
        "logits: {file: z.npy}\nlabel: {file: y.npy}\nmethods: [finite_difference, complex_step]\n"
        f"cases:\n{cases}\n"
    )
    out = tmp_path / "report.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradcheck_cli",
            "run",
            str(tmp_path / "slow.yaml"),
            "-f",
            "json",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2.5)  # well past start-up (about 0.3 s), well before the end (over 30 s)
    proc.send_signal(signal.SIGINT)
    start = time.perf_counter()
    _, err = proc.communicate(timeout=30)
    assert time.perf_counter() - start < 10
    assert proc.returncode == 130, err
    assert err.decode().endswith("xentcheck: interrupted\n")
    assert b"Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_size_limits_are_configurable(tmp_path: Path) -> None:
    inline = tmp_path / "inline.yaml"
    inline.write_text("logits: [1, 2, 3, 4, 5, 6]\nlabel: 0\n")
    result = runner.invoke(app, ["run", str(inline), "--max-elements", "5"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {inline}:1:9: logits: more than 5 elements\n"
    np.save(tmp_path / "z.npy", np.zeros((300, 1000)))  # 2.3 MiB
    big = tmp_path / "big.yaml"
    big.write_text("logits: {file: z.npy}\nlabel: {file: y.npy}\n")
    np.save(tmp_path / "y.npy", np.zeros(300, dtype=np.int64))
    result = runner.invoke(app, ["run", str(big), "--max-array-mb", "2", "-q"])
    assert result.exit_code == 2
    assert "more than the limit of 2 MiB (--max-array-mb)" in result.stderr
    assert runner.invoke(app, ["run", str(big), "-q"]).exit_code == 0
