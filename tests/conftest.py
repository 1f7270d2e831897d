"""Shared fixtures and Hypothesis settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Rich: no colours or terminal escape codes in anything the tests capture.
os.environ.setdefault("TERM", "dumb")
os.environ["NO_COLOR"] = "1"
# Inside GitHub Actions `xentcheck run` defaults to --format github and writes a job summary:
# the tests ask for what they check, and never write to the real summary file.
for _name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
    os.environ.pop(_name, None)

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


@pytest.fixture
def specs_dir() -> Path:
    return SPECS
