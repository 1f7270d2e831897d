"""The public API: load, check, assert_passes, Report (docs/api.md), and its pytest example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import gradcheck_cli as xc
from gradcheck_cli.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def test_public_names() -> None:
    assert {"load", "check", "assert_passes", "Report"} <= set(xc.__all__)
    assert (Path(xc.__file__).parent / "py.typed").is_file()


def test_load_path_text_and_mapping_agree() -> None:
    (from_file,) = xc.load(SPECS / "cat_dog_bird.yaml")
    (from_text,) = xc.load("logits: [1, 2, 0.5]\nlabel: 1\n")
    (from_map,) = xc.load({"logits": np.array([1.0, 2.0, 0.5]), "label": 1})
    for spec in (from_text, from_map):
        np.testing.assert_array_equal(spec.logits, from_file.logits)
        np.testing.assert_array_equal(spec.labels, from_file.labels)


def test_load_raises_the_located_error() -> None:
    with pytest.raises(SpecError) as info:
        xc.load("logits: [1, 2]\nlabel: 7\n")
    assert str(info.value) == "<text>:2:8: label: class index 7 out of range: expected 0 to 1"


def test_check_report() -> None:
    report = xc.check(SPECS)
    assert report.passed and report.exit_code == 0
    assert report.summary["total"] == len(report.results) >= 21
    assert json.loads(report.to_json())["summary"] == report.summary
    bad = xc.check("logits: [1, 2]\nlabel: 7\n")
    assert not bad.passed and bad.exit_code == 2 and bad.results[0].status == "error"


def _zero_gradient(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    return 1.4076059644443804, np.zeros_like(logits)


def test_assert_passes_message_is_a_short_summary() -> None:
    with pytest.raises(AssertionError) as info:
        xc.assert_passes(SPECS / "three_class.yaml", impl=_zero_gradient)
    message = str(info.value)
    assert "SpecResult(" not in message and "Comparison(" not in message
    lines = message.splitlines()
    assert lines[0] == f"FAIL three-class ({SPECS / 'three_class.yaml'})"
    assert re.fullmatch(
        r"  impl .*_zero_gradient vs reference: 3 elements outside rtol 1e-09 / atol 1e-13; "
        r"worst \[1\]: 0 vs -0\.7552715289 \(\|Δ\| 0\.755, rel 1\)",
        lines[1],
    ), lines
    assert lines[-1] == "0 passed, 1 failed, 0 errors"


def test_docs_pytest_example_runs(tmp_path: Path) -> None:
    """The example of docs/api.md, as it stands, passes under pytest."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(# test_my_kernel\.py\n.+?)```", text, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "test_my_kernel.py", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()  # type: ignore[operator]
