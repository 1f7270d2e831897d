"""The corpus of invalid specs in ``tests/data/bad/``, shared by the loader and CLI tests.

Each file's first line is ``# expected:<line>:<column>: <field>: <message>``: the exact message
the loader must give after the file name (``SpecError.__str__`` renders
``file:line:column: field: message``). A second line ``# xfail: <reason>`` marks a known loader
bug; the ``expected`` line then holds the message the loader *should* give. ``empty.yaml`` cannot
carry a comment, so its message is kept here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BAD = Path(__file__).resolve().parent / "data" / "bad"
EMPTY_FILE = "1:1: the file is empty; expected a mapping with at least 'logits'"


def bad_corpus() -> list[tuple[str, str, str | None]]:
    """(file name, expected message after 'file:', xfail reason or None), sorted by name."""
    out: list[tuple[str, str, str | None]] = []
    for path in sorted(BAD.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines:
            out.append((path.name, EMPTY_FILE, None))
            continue
        assert lines[0].startswith("# expected:"), f"{path.name}: first line must be # expected:"
        expected = lines[0][len("# expected:") :]
        reason = None
        if len(lines) > 1 and lines[1].startswith("# xfail: "):
            reason = lines[1][len("# xfail: ") :]
        out.append((path.name, expected, reason))
    return out


def corpus_params() -> list[object]:
    """The corpus as pytest parameters (name, expected), strict xfail where a file says so."""
    return [
        pytest.param(
            name,
            expected,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [],
        )
        for name, expected, reason in bad_corpus()
    ]
