"""docs/impl.md's PyTorch autograd.Function and JAX examples, run as they stand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "impl.md").read_text(encoding="utf-8")


def example(filename: str) -> str:
    found = re.search(r"```python\n# " + re.escape(filename) + r"\n(.+?)```", DOC, re.S)
    assert found is not None, filename
    return found.group(1)


@pytest.mark.parametrize(
    ("framework", "filename", "prefix"),
    [("torch", "my_kernel.py", "torch"), ("jax", "my_jax_loss.py", "jax")],
)
def test_docs_example_passes(framework: str, filename: str, prefix: str, tmp_path: Path) -> None:
    pytest.importorskip(framework)
    path = tmp_path / filename
    path.write_text(example(filename), encoding="utf-8")
    specs = [str(ROOT / "specs" / n) for n in ("three_class.yaml", "reductions.yaml")]
    result = CliRunner().invoke(app, ["run", *specs, "--impl", f"{prefix}:{path}:cross_entropy"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("4 passed, 0 failed, 0 errors")
