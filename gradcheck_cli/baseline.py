"""Error baselines: fail when an error grew, before it crosses its tolerance.

``run --save-baseline FILE`` records every comparison's largest absolute error as JSON (keys
sorted, one entry per ``file::spec::quantity::method``). ``run --baseline FILE
--fail-on-growth ALLOWANCE`` compares a later run with it: a comparison whose error is now
above the allowance fails its spec with a ``baseline`` check naming the comparison, even when
it is still inside its tolerance. The allowance names the growth that fails (several,
comma-separated: the most lenient wins):

* ``2x``: an error at least twice the recorded one (from a recorded 0: any error above 0);
* ``+1ulp`` (``+Nulp``): an error at least N units in the last place larger, in the
  comparison's dtype, at the magnitude of the reference value at its worst element;
* ``1e-9`` (``+1e-9``): an error at least that much larger, absolutely.

An error that did not grow never fails.

A comparison that is new (not in the file) or gone (in the file, not run) is listed, not
failed; an error that was finite and is now nan or inf always fails.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from gradcheck_cli.compare import Comparison, ulp
from gradcheck_cli.errors import UsageError, XentcheckError
from gradcheck_cli.model import Check, SpecResult
from gradcheck_cli.report.json import jsonable
from gradcheck_cli.report.short import comparison_name

#: Version of the file's layout.
BASELINE_VERSION = 1


class BaselineError(XentcheckError):
    """A baseline file that does not read, or an allowance that does not parse."""


@dataclass(frozen=True)
class Growth:
    """An allowance: the growth that fails, the most lenient of a factor, ulps and an
    absolute amount (None: not given)."""

    text: str
    factor: float | None = None
    ulps: float | None = None
    absolute: float | None = None

    def limit(self, before: float, c: Comparison) -> float:
        """The error at which a comparison that had ``before`` fails (if it grew)."""
        limits = []
        if self.factor is not None:
            limits.append(before * self.factor)
        if self.ulps is not None:
            limits.append(before + self.ulps * ulp(abs(c.reference_value), c.dtype))
        if self.absolute is not None:
            limits.append(before + self.absolute)
        return max(limits)


_FACTOR = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)x$")
_ULPS = re.compile(r"^\+(\d+(?:\.\d*)?)ulps?$")


def parse_growth(text: str) -> Growth:
    """``2x``, ``+1ulp``, ``1e-9`` or several of them joined by commas; UsageError else."""
    factor = ulps = absolute = None
    for part in (p.strip().lower() for p in text.split(",")):
        if m := _FACTOR.match(part):
            factor = float(m.group(1))
            ok = factor >= 1
        elif m := _ULPS.match(part):
            ulps = float(m.group(1))
            ok = True
        else:
            try:
                absolute = float(part.removeprefix("+"))
                ok = math.isfinite(absolute) and absolute >= 0
            except ValueError:
                ok = False
        if not ok:
            raise UsageError(
                f"--fail-on-growth {text}: expected a factor >= 1 (2x), ulps (+1ulp) or an "
                f"absolute amount (1e-9), comma-separated; found {part!r}"
            )
    return Growth(text, factor, ulps, absolute)


#: ``impl <target>`` at the start of a method: the implementation under test, whichever target
#: names it (an absolute path in one checkout, a module in another).
_IMPL = re.compile(r"^impl (?!self-consistency\b|rank \d)\S+")


def comparison_key(r: SpecResult, c: Comparison) -> str:
    """``file::spec::quantity::method``, the implementation's target written as ``impl`` (a
    baseline outlives a renamed module or a moved checkout)."""
    return f"{r.file}::{r.name}::{c.quantity}::{_IMPL.sub('impl', c.method)}"


def _entries(results: Sequence[SpecResult]) -> dict[str, tuple[SpecResult, Comparison]]:
    """Every comparison of the run by key (a repeated key gets ``#2``, ``#3``, ...)."""
    out: dict[str, tuple[SpecResult, Comparison]] = {}
    for r in results:
        for c in r.comparisons:
            key = comparison_key(r, c)
            n = 1
            while key in out:
                n += 1
                key = f"{comparison_key(r, c)}#{n}"
            out[key] = (r, c)
    return out


def document(results: Sequence[SpecResult]) -> str:
    """The baseline file's text: every comparison's largest error, keys sorted."""
    from gradcheck_cli._version import __version__

    comparisons = {
        key: {
            "max_abs_error": jsonable(c.max_abs_error),
            "max_rel_error": jsonable(c.max_rel_error),
            "dtype": c.dtype,
            "rtol": c.rtol,
            "atol": c.atol,
        }
        for key, (_, c) in sorted(_entries(results).items())
    }
    doc: dict[str, Any] = {"xentcheck_baseline": BASELINE_VERSION, "version": __version__}
    doc["comparisons"] = comparisons
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def load(path: Path) -> dict[str, float]:
    """The recorded errors by key; BaselineError for a file that does not read."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"--baseline {path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(
            f"--baseline {path}: not a baseline file (invalid JSON: {exc})"
        ) from None
    entries = doc.get("comparisons") if isinstance(doc, dict) else None
    if (
        not isinstance(doc, dict)
        or "xentcheck_baseline" not in doc
        or not isinstance(entries, dict)
    ):
        raise BaselineError(
            f"--baseline {path}: not a baseline file (expected the JSON that --save-baseline "
            "writes)"
        )
    out = {}
    for key, entry in entries.items():
        value = entry.get("max_abs_error") if isinstance(entry, dict) else None
        try:
            out[key] = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BaselineError(
                f"--baseline {path}: comparison {key!r}: expected a max_abs_error number, found "
                f"{value!r}"
            ) from None
    return out


Status = Literal["ok", "grew", "new", "gone"]


@dataclass(frozen=True)
class Row:
    """One comparison of the before/after table."""

    key: str
    before: float | None
    after: float | None
    limit: float | None
    """The error at which it fails (None: new or gone)."""
    status: Status

    @property
    def ratio(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        if self.before == 0:
            return 1.0 if self.after == 0 else math.inf
        return self.after / self.before


def compare(
    results: Sequence[SpecResult], recorded: dict[str, float], growth: Growth
) -> tuple[list[SpecResult], list[Row]]:
    """The results with a failed ``baseline`` check on each spec one of whose comparisons
    grew past ``growth``, and the before/after rows (run order, then the gone ones)."""
    rows: list[Row] = []
    grown: dict[int, list[str]] = {}
    for key, (r, c) in _entries(results).items():
        if key not in recorded:
            rows.append(Row(key, None, c.max_abs_error, None, "new"))
            continue
        before, after = recorded[key], c.max_abs_error
        limit = growth.limit(before, c) if math.isfinite(before) else math.inf
        worse = after > before and after >= limit
        worse = worse or (math.isfinite(before) and not math.isfinite(after))
        rows.append(Row(key, before, after, limit, "grew" if worse else "ok"))
        if worse:
            grown.setdefault(id(r), []).append(
                f"{comparison_name(c)} vs {c.reference}: max abs error {before:.3g} -> {after:.3g} "
                f"({_times(before, after)}; --fail-on-growth {growth.text} fails it from "
                f"{limit:.3g})"
            )
    seen = {row.key for row in rows}
    rows += [Row(k, v, None, None, "gone") for k, v in recorded.items() if k not in seen]
    out = []
    for r in results:
        if id(r) in grown:
            check = Check("baseline", False, "; ".join(grown[id(r)]))
            status = "fail" if r.status == "pass" else r.status
            r = replace(r, checks=(*r.checks, check), status=status)
        elif r.comparisons and r.status in ("pass", "fail"):
            matched = sum(comparison_key(r, c) in recorded for c in r.comparisons)
            detail = (
                f"{matched} of {len(r.comparisons)} comparisons recorded, none grown to "
                f"--fail-on-growth {growth.text}"
            )
            r = replace(r, checks=(*r.checks, Check("baseline", True, detail)))
        out.append(r)
    return out, rows


def _times(before: float, after: float) -> str:
    if before == 0:
        return "from 0"
    return f"{after / before:.2f}x"


def table_rows(rows: Sequence[Row], everything: bool = False) -> list[list[str]]:
    """The before/after table's cells: the grown, new and gone rows (``everything``: all);
    each comparison as ``spec: quantity method`` (the file is in the key of the JSON)."""
    out = []
    for row in rows:
        if row.status == "ok" and not everything:
            continue
        _, spec, quantity, method = row.key.split("::", 3)
        out.append(
            [
                row.status,
                f"{spec}: {quantity} {method}",
                "" if row.before is None else f"{row.before:.3g}",
                "" if row.after is None else f"{row.after:.3g}",
                "" if row.ratio is None else f"{row.ratio:.2f}x",
                "" if row.limit is None else f"{row.limit:.3g}",
            ]
        )
    return out


def as_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "key": r.key,
            "before": jsonable(r.before),
            "after": jsonable(r.after),
            "fails_at": jsonable(r.limit),
            "status": r.status,
        }
        for r in rows
    ]
