"""``--format github``: GitHub Actions workflow commands and a job-summary table.

:func:`render` prints one ``::error file=…,line=…,col=…,title=…::…`` line per failing place of
each failed or invalid spec, at the line of the spec file that defines the failing quantity:

* a failed expectation (``expect.loss``, ``expect.grad``, ...) at its key in ``expect``;
* a failed comparison of the logits' gradient or of the loss at the row of the worst element
  (``logits[i]`` of an inline batch), else at ``logits`` (or whatever generated them:
  ``regime``, ``linear``, ``layer``); a layer's parameters at ``layer``;
* any other failed check at the logits too;
* an invalid spec at the location of its (first) error; a spec that raised at its case.

Failures at the same line of the same spec share one annotation. GitHub shows at most 10 error
annotations per step, so past :data:`MAX_ANNOTATIONS` − 1 the rest are summarised in the last
one (counts and the first few places). After the annotations come the plain per-spec lines
(``report.short``) and the counts, which the job log shows as text.

:func:`step_summary` is the Markdown the command appends to ``$GITHUB_STEP_SUMMARY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.compare import Comparison
from gradcheck_cli.model import SpecResult
from gradcheck_cli.report.short import comparison_failure, comparison_name, counts, spec_failures

#: Error annotations GitHub shows per step; the last one summarises the rest.
MAX_ANNOTATIONS = 10
#: Places named in the summarising annotation.
SUMMARY_PLACES = 5


@dataclass(frozen=True)
class Annotation:
    """One ``::error`` line: where (file, 1-based line and column; None: the run as a whole)
    and what."""

    file: str | None
    line: int | None
    column: int | None
    title: str
    message: str

    def command(self) -> str:
        props = []
        if self.file is not None:
            props.append(f"file={_property(self.file)}")
            if self.line is not None:
                props.append(f"line={self.line}")
                if self.column is not None:
                    props.append(f"col={self.column}")
        props.append(f"title={_property(self.title)}")
        return f"::error {','.join(props)}::{_data(self.message)}"


def _data(text: str) -> str:
    """A workflow command's message, escaped as the runner expects."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    """A workflow command's property value (``:`` and ``,`` are separators there)."""
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def _logits_key(r: SpecResult, c: Comparison | None) -> str:
    """The key that defines the logits of ``r`` (the worst element's row when it is written
    on a line of its own)."""
    if c is not None and c.quantity in ("logits", "loss") and c.worst_index:
        row = c.worst_index[0] if len(c.worst_index) == 2 else None
        if row is not None and f"logits[{row}]" in r.locations:
            return f"logits[{row}]"
    for key in ("logits", "regime", "linear", "layer"):
        if key in r.locations:
            return key
    return "case"


def _key(r: SpecResult, c: Comparison) -> str:
    if c.quantity in ("weights", "bias", "inputs") and "layer" in r.locations:
        return "layer"
    return _logits_key(r, c)


def spec_annotations(r: SpecResult) -> list[Annotation]:
    """The annotations of one spec: none when it passed or was skipped."""
    if r.status == "error":
        line, column = r.locations.get("error") or r.locations.get("case") or (None, None)
        message = r.message or "invalid spec"
        for prefix in (f"{r.file}:{line}:{column}: ", f"{r.file}:{line}: ", f"{r.file}: "):
            message = message.removeprefix(prefix)  # the annotation says where already
        title = f"xentcheck: {'invalid spec' if 'error' in r.locations else 'error in'} {r.name}"
        return [Annotation(r.file, line, column, title, message)]
    if r.status != "fail":
        return []
    places: dict[str, list[str]] = {}
    for c in r.comparisons:
        if not c.passed:
            text = comparison_failure(c) + (f"\ndiagnosis: {c.diagnosis}" if c.diagnosis else "")
            places.setdefault(_key(r, c), []).append(text)
    for check in r.checks:
        if not check.passed:
            key = check.name if check.name in r.locations else _logits_key(r, None)
            places.setdefault(key, []).append(f"{check.name}: {check.detail}")
    out = []
    for key, lines in places.items():
        line, column = r.locations.get(key) or (None, None)
        out.append(
            Annotation(r.file, line, column, f"xentcheck: {r.name} failed", "\n".join(lines))
        )
    return out


def run_annotations(results: Sequence[SpecResult]) -> list[Annotation]:
    """Every failing place of the run, at most :data:`MAX_ANNOTATIONS`: past the limit the last
    one counts the rest and names the first :data:`SUMMARY_PLACES` of them."""
    found = [a for r in results for a in spec_annotations(r)]
    if len(found) <= MAX_ANNOTATIONS:
        return found
    shown, rest = found[: MAX_ANNOTATIONS - 1], found[MAX_ANNOTATIONS - 1 :]
    places = [f"{a.file}:{a.line}" for a in rest]
    more = f", and {len(places) - SUMMARY_PLACES} more" if len(places) > SUMMARY_PLACES else ""
    summary = Annotation(
        None,
        None,
        None,
        f"xentcheck: {len(rest)} more failures",
        f"{len(rest)} more failing places (GitHub shows {MAX_ANNOTATIONS} annotations per "
        f"step): {'; '.join(places[:SUMMARY_PLACES])}{more}. The job log and summary list "
        "every one.",
    )
    return [*shown, summary]


def render(results: Sequence[SpecResult], verbose: bool = False) -> str:
    """The annotations, then a plain line per spec (and why it failed), then the counts."""
    lines = [a.command() for a in run_annotations(results)]
    for r in results:
        failures = spec_failures(r)
        if failures:
            lines += failures
        elif verbose or r.status == "skip":
            lines.append(f"{r.status.upper()} {r.name} ({r.file})")
    lines.append(counts(results))
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _worst(r: SpecResult) -> tuple[str, str, str]:
    """The comparison closest to (or furthest past) its tolerance: its name, its max |Δ| and
    its tolerance."""
    if not r.comparisons:
        return "", "", ""
    worst = max(r.comparisons, key=lambda c: (not c.passed, c.max_abs_error / _allowed(c)))
    return comparison_name(worst), f"{worst.max_abs_error:.3g}", f"{worst.rtol:g} / {worst.atol:g}"


def _allowed(c: Comparison) -> float:
    return c.atol + c.rtol * abs(c.reference_value) or 1e-300


def step_summary(results: Sequence[SpecResult]) -> str:
    """A Markdown job summary: the counts, a table of every spec with its closest comparison,
    and each failure's lines."""
    marks = {"pass": "✅ pass", "fail": "❌ fail", "error": "⛔ error", "skip": "➖ skip"}
    lines = [
        f"### xentcheck: {counts(results)}",
        "",
        "| | spec | file | failed | closest comparison | max abs err | rtol / atol |",
        "|---|---|---|---|---|---:|---|",
    ]
    for r in results:
        what, error, tol = _worst(r)
        where = r.file
        at = r.locations.get("error") or r.locations.get("case")
        if at is not None:
            where += f":{at[0]}"
        failed = [comparison_name(c) for c in r.comparisons if not c.passed]
        failed = list(dict.fromkeys(failed + [c.name for c in r.checks if not c.passed]))
        if r.status == "error":
            failed = ["invalid" if "error" in r.locations else "error"]
        lines.append(
            f"| {marks[r.status]} | {_cell(r.name)} | `{_cell(where)}` | "
            f"{_cell(', '.join(failed)) or '–'} | {_cell(what)} | {error} | {tol} |"
        )
    failing = [r for r in results if r.status in ("fail", "error")]
    if failing:
        lines += ["", "<details><summary>why they failed</summary>", "", "```text"]
        lines += [line for r in failing for line in spec_failures(r)]
        lines += ["```", "", "</details>"]
    return "\n".join(lines) + "\n"
