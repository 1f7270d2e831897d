"""README.md's examples work as written: every command of "Usage" exits 0 in a copy of the
repository's specs/ and examples/, and the CI snippets are valid YAML that install from here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from gradcheck_cli.spec import load_file

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def usage_commands() -> list[str]:
    section = README.split("## Usage", 1)[1]
    block = re.search(r"```sh\n(.+?)```", section, re.S)
    assert block is not None
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_usage_block_is_found() -> None:
    commands = usage_commands()
    assert len(commands) >= 10 and all(c.split()[0] in ("xentcheck", "python") for c in commands)


@pytest.mark.parametrize("command", usage_commands())
def test_usage_command_exits_0(command: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bindir = Path(sys.executable).parent  # the environment's xentcheck and python
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])


def yaml_blocks(marker: str) -> list[object]:
    blocks = re.findall(r"```yaml\n(.+?)```", README, re.S)
    return [yaml.safe_load(b) for b in blocks if marker in b]


def test_ci_snippets_install_from_here_and_parse() -> None:
    (workflow,) = yaml_blocks("runs-on:")
    steps = workflow["jobs"]["gradients"]["steps"]  # type: ignore[index]
    runs = [s["run"] for s in steps if "run" in s]
    assert runs[0].startswith("pip install .")
    assert "pip install xentcheck" not in README  # the package is on no index
    (hooks,) = yaml_blocks("repos:")
    (repo,) = hooks["repos"]  # type: ignore[index]
    assert repo["repo"] == "local" and "rev" not in repo
    assert repo["hooks"][0]["entry"].startswith("xentcheck run")


def test_the_ci_workflow_runs_as_written(tmp_path: Path) -> None:
    """The workflow's xentcheck step, inside a simulated Actions job: with the baseline it
    names (saved first), it passes, prints github annotations only for failures (none), appends
    the job summary and writes the artifact's baseline."""
    (workflow,) = yaml_blocks("runs-on:")
    steps = workflow["jobs"]["gradients"]["steps"]  # type: ignore[index]
    (command,) = [s["run"] for s in steps if "run" in s and s["run"].startswith("xentcheck")]
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)

    def sh(line: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env={**env, **extra}, capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip

    assert sh("xentcheck run specs/ -q --save-baseline xentcheck-baseline.json").returncode == 0
    summary = tmp_path / "summary.md"
    proc = sh(command, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "::error" not in proc.stdout and "failed, 0 errors" in proc.stdout
    assert summary.read_text().startswith("### xentcheck: ")
    assert (tmp_path / "new-baseline.json").read_text() == (
        tmp_path / "xentcheck-baseline.json"
    ).read_text()


def ci_section() -> str:
    return README.split("## Use in CI", 1)[1].split("\n## ", 1)[0]


def fenced(section: str, language: str, marker: str) -> str:
    (block,) = [b for b in re.findall(rf"```{language}\n(.+?)```", section, re.S) if marker in b]
    return str(block)


def test_the_pytest_example_runs_as_written(tmp_path: Path) -> None:
    """The pytest part of "Use in CI" in a copy of specs/ and examples/: its pyproject.toml and
    test file as written; each of its commands passes (the JUnit report has one testcase per
    bundled spec, with properties, and the marked test), and the failing command prints what
    the README shows."""
    section = ci_section()
    toml = fenced(section, "toml", "xentcheck_specs")
    test_file = fenced(section, "python", "pytest.mark.xentcheck")
    commands = [
        line.split("  #", 1)[0].strip() for line in fenced(section, "sh", "pytest").splitlines()
    ]
    failing = re.search(r"`(pytest --xentcheck-impl [^`]+planted_bugs[^`]+)`", section)
    shown = fenced(section, "text", "xentcheck spec").splitlines()
    assert failing is not None and len(commands) == 2 and "-n 2" in commands[0]
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "pyproject.toml").write_text(toml)
    name = test_file.splitlines()[0].removeprefix("# ")
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(test_file)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    env["COLUMNS"] = "80"

    def sh(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", f"{line} -p no:cacheprovider"], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    for command in commands:
        proc = sh(command)
        assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-2000:])
    files = sorted((ROOT / "specs").rglob("*.y*ml"))
    count = sum(len(load_file(f)) for f in files)
    cases = list(ET.parse(tmp_path / "xentcheck.xml").iter("testcase"))
    spec_cases = [c for c in cases if c.get("classname", "").startswith("specs.")]
    assert len(spec_cases) == count and len(cases) == count + 1  # + tests/test_kernel.py's
    dotted = {
        f"{f.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}{f.suffix}"
        for f in files
    }
    assert {c.get("classname") for c in spec_cases} == dotted
    assert all(c.find("properties/property") is not None for c in spec_cases)
    proc = sh(failing.group(1))
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert shown[0].strip("_ ") == "xentcheck spec ignore-index-minus-100"
    assert f" {shown[0].strip('_ ')} " in proc.stdout
    for line in shown[1:]:
        assert line in proc.stdout.splitlines(), (line, proc.stdout[-3000:])
    assert "Traceback" not in proc.stdout
