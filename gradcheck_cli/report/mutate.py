"""``xentcheck mutate``'s report: a Rich table (mutant, result, killed by, why) with the mutation
score under it, and the same as JSON. Renders a finished :class:`MutationReport`; computes
nothing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradcheck_cli._version import __version__
from gradcheck_cli.report.json import jsonable

if TYPE_CHECKING:  # a renderer reads the results; it never imports the computation
    from gradcheck_cli.mutate import MutationReport

_STYLE = {
    "killed": "green",
    "survived": "bold red",
    "not exercised": "yellow",
    "not applicable": "dim",
    "not liftable": "dim",
}


def score_line(report: MutationReport) -> str:
    """``mutation score 10/10 = 100% (target ...)``, or why there is none; the bar if set."""
    if report.score is None:
        line = "mutation score: none (no mutant applies to these specs)"
    else:
        line = f"mutation score {report.killed}/{report.applicable} = {report.score:.0%}"
    line += f" against {report.target}, {len(report.specs)} specs, {report.seconds:.1f} s"
    if report.min_score is not None:
        verdict = "below" if report.below_bar else "meets"
        line += f"; {verdict} --min-score {report.min_score:g}"
    return line


def render(report: MutationReport) -> RenderableType:
    """The table, one row per mutant, then the survivors' reasons and the score."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("mutant", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("killed by")
    table.add_column("detail")
    for m in report.mutants:
        killers = ", ".join(m.killed_by[:3]) + (
            f" (+{len(m.killed_by) - 3})" if len(m.killed_by) > 3 else ""
        )
        table.add_row(
            m.name, Text(m.status, style=_STYLE[m.status]), killers or "—", Text(m.reason)
        )
    parts: list[RenderableType] = [table, Text("")]
    for spec, why in report.unusable:
        parts.append(Text(f"spec {spec} judges nothing: the unmutated target fails it ({why})"))
    for m in report.survivors:
        claim = "" if m.claimed else " (no spec option claims it: it lowers the score only)"
        parts.append(Text(f"survived: {m.name} ({m.title}){claim}: {m.reason}", style="red"))
    parts.append(Text(score_line(report), style="bold"))
    return Group(*parts)


def render_json(report: MutationReport) -> str:
    """Strict JSON: ``tool``, the score, and every mutant with its per-spec outcomes."""
    doc = {"tool": {"name": "xentcheck", "version": __version__}, **report.to_dict()}
    return json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"
