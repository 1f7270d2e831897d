"""Renderers of ``xentcheck sweep``: a table, a log-scale terminal chart, and JSON."""

from __future__ import annotations

import math
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from gradcheck_cli.model import SweepResult
from gradcheck_cli.report._lines import Lines
from gradcheck_cli.report.table import err

MARKERS = {"forward": "f", "central": "c", "richardson": "r", "complex_step": "x"}
#: Error decades shown by the chart, 1e0 down to 1e-18.
DECADES = tuple(range(0, -19, -1))


def render_table(r: SweepResult) -> RenderableType:
    """The error table, the chart and the Taylor test."""
    console = Lines()
    console.print(Text(f"{r.name}  {r.file}  errors against {r.reference}", style="bold"))
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("step h")
    for method in r.errors:
        table.add_column(method, justify="right")
    for i, h in enumerate(r.steps):
        cells = []
        for method, errs in r.errors.items():
            e = errs[i]
            cell = Text("—" if e is None else err(e))
            if r.best_step.get(method) == h:
                cell.append(" *", style="bold green")
                cell.stylize("bold green")
            cells.append(cell)
        table.add_row(f"{h:.0e}", *cells)
    console.print(table)
    console.print(Text("* best step per method", style="dim"))
    console.print()
    render_chart(r, console)
    console.print()
    t = r.taylor
    slope = "n/a" if t.slope is None else f"{t.slope:.3f}"
    console.print(
        Text(f"Taylor test along a seeded random direction: fitted slope {slope} — {t.verdict}")
    )
    for method, note in r.notes.items():
        console.print(Text(f"{method}: {note}", style="yellow"))
    return console.group()


def render_chart(r: SweepResult, console: Lines) -> None:
    """Error (rows, log scale) against step (columns): the V of truncation vs rounding."""
    legend = "  ".join(f"{mark} {name}" for name, mark in MARKERS.items())
    console.print(Text(f"max |error| vs step (log-log); upper case marks the best step: {legend}"))
    width = 4
    grid: dict[tuple[int, int], str] = {}
    for method, errs in r.errors.items():
        mark = MARKERS[method]
        for col, (h, e) in enumerate(zip(r.steps, errs, strict=True)):
            if e is None:
                continue
            row = 0 if e <= 0 else max(DECADES[-1], min(0, math.floor(math.log10(e) + 0.5)))
            if e <= 0:
                row = DECADES[-1]
            symbol = mark.upper() if r.best_step.get(method) == h else mark
            grid[(row, col)] = grid.get((row, col), "") + symbol
    for decade in DECADES:
        line = Text(f"1e{decade:+03d} |")
        for col in range(len(r.steps)):
            cell = grid.get((decade, col), "")
            line.append((cell or ("·" if decade % 4 == 0 else " ")).center(width)[:width])
        console.print(line)
    axis = "        " + "".join(f"{e:>{width}}" for e in range(-1, -len(r.steps) - 1, -1))
    console.print(Text(axis))
    console.print(Text("        " + "log10 h".center(width * len(r.steps))))


def to_dict(r: SweepResult) -> dict[str, Any]:
    return {
        "name": r.name,
        "file": r.file,
        "reference": r.reference,
        "steps": list(r.steps),
        "errors": {m: list(e) for m, e in r.errors.items()},
        "best_step": dict(r.best_step),
        "taylor": {
            "direction_seed": r.taylor.seed,
            "steps": list(r.taylor.steps),
            "remainders": list(r.taylor.remainders),
            "slope": r.taylor.slope,
            "verdict": r.taylor.verdict,
        },
        "notes": dict(r.notes),
    }


def render_json(r: SweepResult) -> str:
    """``xentcheck sweep --format json``."""
    from gradcheck_cli.report.json import dumps

    return dumps(to_dict(r))
