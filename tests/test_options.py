"""The option table (gradcheck_cli.core.options) against everything it drives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gradcheck_cli.core.options import (
    OPTIONS,
    SIGMOID,
    SOFTMAX,
    OptionValues,
    docs_rows,
    options_of,
    set_options,
)
from gradcheck_cli.model import Spec
from gradcheck_cli.schema import spec_schema
from gradcheck_cli.spec import CASE_KEYS

ROOT = Path(__file__).resolve().parents[1]


def _table_rows(path: Path, header: str) -> dict[str, str]:
    """The rows of the Markdown table under ``header``, by the key in their first cell."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(header) + 2
    rows: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("| `"):
            break
        rows[line.split("`")[1]] = line
    return rows


@pytest.mark.parametrize(
    ("doc", "header", "column"),
    [
        ("README.md", "| key | meaning |", 0),
        ("docs/spec.md", "| key | value | default | rules |", 1),
    ],
)
def test_docs_tables_match_the_option_table(doc: str, header: str, column: int) -> None:
    rows = _table_rows(ROOT / doc, header)
    for option in OPTIONS:
        expected = docs_rows(option)[column]
        assert rows.get(option.name) == expected, (
            f"{doc}: the row of {option.name!r} disagrees with the option table; expected\n"
            f"{expected}"
        )


def test_option_values_have_one_field_per_row() -> None:
    names = [f.name for f in dataclasses.fields(OptionValues)]
    assert names == [o.name for o in OPTIONS]
    spec_fields = {f.name for f in dataclasses.fields(Spec)}
    assert set(names) <= spec_fields


def test_every_option_is_a_documented_key_with_a_schema() -> None:
    props = spec_schema()["properties"]
    for option in OPTIONS:
        assert CASE_KEYS[option.name] == option.expected
        assert props[option.name]["description"] == option.expected


def test_families_and_set_options() -> None:
    assert [o.name for o in options_of(SIGMOID)] == ["weight", "pos_weight"]
    assert "pos_weight" not in {o.name for o in options_of(SOFTMAX)}
    assert set_options(OptionValues()) == {}
    assert set_options(OptionValues(label_smoothing=0.1, softcap=None)) == {"label_smoothing": 0.1}


def test_each_family_problem_has_a_field_per_option() -> None:
    from gradcheck_cli.core import CrossEntropyProblem, SigmoidProblem

    for family, problem in ((SOFTMAX, CrossEntropyProblem), (SIGMOID, SigmoidProblem)):
        problem_fields = {f.name for f in dataclasses.fields(problem)}
        assert {o.name for o in options_of(family)} <= problem_fields
