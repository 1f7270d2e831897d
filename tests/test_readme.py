"""README.md's examples work as written: every command of "Usage" exits 0 in a copy of the
repository's specs/ and examples/, and the CI snippets are valid YAML that install from here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
