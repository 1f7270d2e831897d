"""Packaging: the installed wheel ships the bundled specs; README and CI run the same command."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import gradcheck_cli

ROOT = Path(__file__).resolve().parents[1]


def test_tests_run_against_the_installed_wheel() -> None:
    """The suite tests what users install: gradcheck_cli must come from site-packages, never from
    this checkout (run the `pytest` console script; pyproject.toml sets --import-mode=importlib)."""
    package_dir = Path(gradcheck_cli.__file__).resolve().parent
    assert package_dir != ROOT / "gradcheck_cli", (
        f"gradcheck_cli was imported from the checkout ({package_dir}), not the installed wheel"
    )
    assert "site-packages" in package_dir.parts


def test_wheel_ships_bundled_specs() -> None:
    shipped = Path(str(files("gradcheck_cli"))) / "specs"
    repo = sorted(
        p.relative_to(ROOT / "specs").as_posix() for p in (ROOT / "specs").rglob("*.yaml")
    )
    assert sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*.yaml")) == repo
    assert "lowp/bfloat16.yaml" in repo
    for name in repo:
        assert (shipped / name).read_bytes() == (ROOT / "specs" / name).read_bytes()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- test-command -->\n```sh\n(.+?)\n```\n<!-- /test-command -->", readme, re.S
    )
    assert block is not None
    assert "pytest" in block.group(1) and "pip install '.[test]'" in block.group(1)
    assert "python -m pytest" not in block.group(1)  # it would put the checkout on sys.path
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_version_matches_pyproject() -> None:
    text = (ROOT / "gradcheck_cli" / "_version.py").read_text(encoding="utf-8")
    assert f'__version__ = "{gradcheck_cli.__version__}"' in text
