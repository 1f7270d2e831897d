"""Project settings: ``[tool.xentcheck]`` in the nearest ``pyproject.toml``.

The nearest file is the first ``pyproject.toml`` found in the working directory or one of its
parents that has a ``[tool.xentcheck]`` table (as ruff and pytest look for theirs). Every key
is optional; the command line overrides each one it gives::

    [tool.xentcheck]
    specs = ["tests/specs"]          # what `xentcheck run` checks without paths
    exclude = ["*_slow.yaml"]        # globs left out of directory searches
    impl = "my_pkg.losses:ce"        # --impl
    dtype = "float32"                # --dtype
    rtol = 1e-6                      # --rtol, for every comparison
    atol = 1e-9                      # --atol
    tolerance-model = "rounded"      # --tolerance-model
    format = "github"                # --format
    baseline = "xentcheck-baseline.json"   # --baseline
    fail-on-growth = "2x"            # --fail-on-growth

Keys may be written with ``-`` or ``_``. Paths (``specs``, ``baseline``) are relative to the
file's directory. An unknown key or a value of the wrong type is a :class:`SettingsError`
naming the file, the line and what was expected.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradcheck_cli.errors import XentcheckError

TABLE = "tool.xentcheck"

#: Key -> (kind, what is expected). Kinds: str, float, paths (list of paths), globs (list of
#: strings), path; ``choices`` below constrain some strings.
KEYS: dict[str, tuple[str, str]] = {
    "specs": ("paths", "a list of spec files, directories or globs"),
    "exclude": ("globs", "a list of globs"),
    "impl": ("str", "an implementation target (package.module:function, file.py:function, torch)"),
    "dtype": ("str", "float64, float32, float16 or bfloat16"),
    "rtol": ("float", "a number >= 0"),
    "atol": ("float", "a number >= 0"),
    "tolerance_model": ("str", "rounded, baseline or fixed"),
    "format": ("str", "a report format of `xentcheck run`"),
    "baseline": ("path", "the path of a baseline file (--save-baseline writes one)"),
    "fail_on_growth": ("str", "an allowance such as 2x, +1ulp or 1e-9"),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("float64", "float32", "float16", "bfloat16"),
    "tolerance_model": ("rounded", "baseline", "fixed"),
    "format": ("table", "json", "junit", "github", "html"),
}


class SettingsError(XentcheckError):
    """``[tool.xentcheck]`` is invalid; the message is ``file:line: tool.xentcheck.key: ...``."""


@dataclass(frozen=True)
class ProjectSettings:
    """The settings one ``pyproject.toml`` gives (keys normalised to ``_``; paths resolved
    against the file's directory and shown relative to the working directory)."""

    file: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    """Where each key is written (1-based)."""

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def source(self, key: str) -> str:
        """``pyproject.toml:12`` for a key the file sets."""
        assert self.file is not None
        return f"{_shown(self.file)}:{self.lines.get(key, 1)}"


def find(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.xentcheck]`` table, from ``start`` (the
    working directory) up; None if there is none."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _has_table(candidate):
            return candidate
    return None


def _has_table(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r"^\s*\[\s*tool\s*\.\s*xentcheck\s*\]", text, re.MULTILINE) is not None


def load(start: Path | None = None) -> ProjectSettings:
    """The settings of the nearest file (empty settings when there is none); SettingsError if
    it is invalid."""
    path = find(start)
    if path is None:
        return ProjectSettings()
    return read(path)


def read(path: Path) -> ProjectSettings:
    """The ``[tool.xentcheck]`` table of ``path``, validated."""
    import tomllib

    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except OSError as exc:
        raise SettingsError(f"{shown}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{shown}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{shown}: invalid TOML: {exc}") from None
    table = document.get("tool", {}).get("xentcheck", {})
    lines = _key_lines(text)
    header = lines.pop("", 1)
    if not isinstance(table, dict):
        raise SettingsError(f"{shown}:{header}: {TABLE}: expected a table")
    values: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        line = lines.get(raw_key, header)
        where = f"{shown}:{line}: {TABLE}.{raw_key}:"
        if key not in KEYS:
            known = ", ".join(k.replace("_", "-") for k in KEYS)
            raise SettingsError(f"{where} unknown key (known: {known})")
        values[key] = _value(key, value, where, path.parent)
    return ProjectSettings(path, values, {k.replace("-", "_"): v for k, v in lines.items() if k})


def _value(key: str, value: Any, where: str, base: Path) -> Any:
    kind, expected = KEYS[key]
    found = f"found {value!r}"
    if kind in ("paths", "globs"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SettingsError(f"{where} expected {expected}, {found}")
        return [_resolved(base, v) for v in value] if kind == "paths" else list(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise SettingsError(f"{where} expected {expected}, {found}")
        return float(value)
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{where} expected {expected}, {found}")
    if key in CHOICES and value not in CHOICES[key]:
        raise SettingsError(f"{where} expected one of {' | '.join(CHOICES[key])}, {found}")
    return _resolved(base, value) if kind == "path" else value


def _resolved(base: Path, given: str) -> str:
    """A path (or glob) from the file, relative to the working directory when it lies under
    it (reports and GitHub annotations name files relative to the repository), else
    absolute."""
    if os.path.isabs(given):
        return given
    return _shown(base / given)


def _shown(path: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return str(absolute)


_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")


def _key_lines(text: str) -> dict[str, int]:
    """Line of each key of ``[tool.xentcheck]`` (and of the header itself, under ``""``)."""
    lines: dict[str, int] = {}
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = re.sub(r"\s+", "", header.group(1))
            inside = name == TABLE
            if inside:
                lines[""] = number
            continue
        if inside and (key := _KEY.match(line)):
            lines.setdefault(next(g for g in key.groups() if g), number)
    return lines


#: What each key is when neither the command line nor the file sets it.
DEFAULTS: dict[str, str] = {
    "specs": "the bundled example specs",
    "exclude": "none (hidden directories and virtual environments are always skipped)",
    "impl": "none: xentcheck's own methods only",
    "dtype": "each spec's own",
    "rtol": "per method and dtype (docs/spec.md)",
    "atol": "per method and dtype (docs/spec.md)",
    "tolerance_model": "rounded for float16/bfloat16, fixed for float32",
    "format": "table; github when GITHUB_ACTIONS=true and stdout is not a terminal",
    "baseline": "none",
    "fail_on_growth": "2x (with a baseline)",
}


@dataclass(frozen=True)
class Effective:
    """One setting's value (None: the default) and where it came from."""

    value: Any
    source: str


def effective(project: ProjectSettings, given: dict[str, Any]) -> dict[str, Effective]:
    """Every key's value: the command line's (``given``, None or empty where not given) over
    the file's over the default."""
    out = {}
    for key in KEYS:
        if given.get(key) not in (None, [], ()):
            out[key] = Effective(given[key], "command line")
        elif key in project.values:
            out[key] = Effective(project.values[key], project.source(key))
        else:
            out[key] = Effective(None, f"default: {DEFAULTS[key]}")
    return out
