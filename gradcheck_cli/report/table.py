"""Rich tables for a terminal (or plain text when the output is not one).

Colour follows Rich's rules: none when the output is not a terminal, none when ``NO_COLOR`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradcheck_cli.model import SpecResult
from gradcheck_cli.report._fit import Cell, Column, Fitted
from gradcheck_cli.report.short import counts

#: A single sample gets one row per class up to this many classes.
MAX_CLASS_ROWS = 30

_STATUS_STYLE = {
    "pass": "bold green",
    "fail": "bold red",
    "error": "bold red",
    "skip": "bold yellow",
}


def num(x: float) -> str:
    """A value with 8 significant digits (enough to see agreement to ~1e-8)."""
    return f"{x:.8g}"


def err(x: float) -> str:
    """An error magnitude: 2 significant digits in scientific notation, plain 0 for exact."""
    return "0" if x == 0 else f"{x:.2e}"


def verdict(ok: bool) -> Text:
    return Text("pass", style="green") if ok else Text("FAIL", style="bold red")


def _index(idx: Sequence[int]) -> str:
    return "[" + ", ".join(str(i) for i in idx) + "]"


def _shape(shape: Sequence[int] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def header(r: SpecResult) -> RenderableType:
    """``STATUS  name  file  shape (..)  reduction ..  loss ..``: wraps between its parts only,
    so a label never ends a line without its value."""
    status = Text(r.status.upper(), style=_STATUS_STYLE[r.status])
    parts = [status, Text(r.name, style="bold"), Text(r.file)]
    if r.status not in ("error", "skip"):
        parts += [
            Text(f"shape {_shape(r.shape)}"),
            Text(f"reduction {r.reduction}"),
            Text(f"loss {loss_text(r.loss)}"),
        ]
    return Chunks(parts)


class Chunks:
    """Texts separated by two spaces that wrap between chunks, never inside one (a chunk longer
    than the line wraps on its own)."""

    def __init__(self, parts: Sequence[Text]) -> None:
        self.parts = list(parts)

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        line = Text()
        for part in self.parts:
            if line.cell_len and line.cell_len + 2 + part.cell_len > options.max_width:
                yield line
                line = Text()
            if line.cell_len:
                line.append("  ")
            line.append(part)
        yield line


#: The header shows at most this many per-sample (or per-element) losses.
MAX_HEADER_LOSSES = 8


def loss_text(loss: float | np.ndarray | None) -> str:
    """A reduced loss as a number; per-sample losses (any shape) as a flat list, cut after
    :data:`MAX_HEADER_LOSSES` values with the count."""
    values = np.asarray(loss, dtype=np.float64)
    if values.ndim == 0:
        return num(float(values))
    flat = values.ravel()
    shown = ", ".join(num(float(v)) for v in flat[:MAX_HEADER_LOSSES])
    if flat.size <= MAX_HEADER_LOSSES:
        return f"[{shown}]"
    return f"[{shown}, … ({flat.size} values, shape {_shape(values.shape)})]"


def class_table(r: SpecResult) -> Fitted | None:
    """One row per class for a single sample: logit, p, target, each method's gradient.

    On a narrow terminal the other methods' columns go first (the comparison table still has
    their errors), then target, logit and p; the reference's column and max |Δ| stay."""
    if r.logits is None or r.probs is None or r.targets is None or r.logits.ndim != 1:
        return None
    k = r.logits.shape[0]
    if k > MAX_CLASS_ROWS:
        return None
    methods = [m for m, g in r.gradients.items() if g is not None]
    # the reference and an implementation under test stay; the other methods go first
    others = [m for m in methods if m not in (r.reference, "impl")]
    columns = [
        Column("class", "left"),
        Column("logit", drop=len(others) + 2),
        Column("p", drop=len(others) + 3),
        Column("target", drop=len(others) + 1),
        *(_method_column(m, r.reference, others) for m in methods),
        Column("max |Δ|"),
    ]
    ref = r.gradients.get(r.reference or "")
    rows = []
    for i in range(k):
        name = r.classes[i] if r.classes else str(i)
        grads = [r.gradients[m] for m in methods]
        cells = [num(float(g[i])) for g in grads if g is not None]
        delta = 0.0
        if ref is not None:
            delta = max(
                (abs(float(g[i]) - float(ref[i])) for g in grads if g is not None), default=0.0
            )
        rows.append(
            [
                name,
                num(float(r.logits[i])),
                num(float(r.probs[i])),
                num(float(r.targets[i])),
                *cells,
                err(delta),
            ]
        )
    return Fitted(columns, rows)


def _method_column(method: str, reference: str | None, others: list[str]) -> Column:
    """A method's gradient column: the reference's (and the implementation's) are never
    dropped, the others right first."""
    if method not in others:
        return Column(method)
    return Column(method, drop=len(others) - others.index(method))


def comparison_table(r: SpecResult) -> Fitted | None:
    """One row per comparison: errors, predicted bound, worst element, tolerance, verdict.

    The first column names what each row is compared against (``vs exact`` when all rows share
    one reference, else a ``reference`` column per row: a layer's parameters are compared with
    the closed form, an implementation with the reference loss). On a narrow terminal
    ``predicted``, then value/reference, worst at, max rel err and rtol/atol are dropped."""
    if not r.comparisons:
        return None
    layered = any(c.quantity != "logits" for c in r.comparisons)
    with_dtype = any(c.dtype != "float64" for c in r.comparisons)
    references = {c.reference for c in r.comparisons}
    shared = references == {r.reference}
    columns = [
        *([Column("quantity", "left")] if layered else []),
        Column(f"vs {r.reference}" if shared else "method", "left"),
        *([] if shared else [Column("against", "left", drop=6)]),
        *([Column("dtype", "left", drop=7)] if with_dtype else []),
        Column("max abs err"),
        Column("predicted", drop=1),
        Column("max rel err", drop=4),
        Column("worst at", "left", drop=3),
        Column("value", drop=2),
        Column("reference", drop=2),
        Column("rtol/atol", "left", drop=5),
        Column("result", "left"),
    ]
    rows: list[list[Cell]] = []
    for c in r.comparisons:
        result = verdict(c.passed)
        if not c.passed:
            result.append(f" ({c.failed_elements} element{'s' if c.failed_elements != 1 else ''})")
        elif c.inconclusive is not None:
            result = Text("inconclusive", style="yellow")
        elif c.loose:
            result = Text("pass (loose)", style="yellow")
        rows.append(
            [
                *([c.quantity] if layered else []),
                _method_label(c.method),
                *([] if shared else [c.reference]),
                *([c.dtype] if with_dtype else []),
                err(c.max_abs_error),
                "" if c.predicted is None else f"≤ {err(c.predicted)}",
                err(c.max_rel_error),
                _index(c.worst_index),
                num(c.value),
                num(c.reference_value),
                f"{c.rtol:g}/{c.atol:g}",
                result,
            ]
        )
    return Fitted(columns, rows)


def _method_label(method: str) -> str:
    """A method's name for the table; an implementation given by file path shows the file's
    name only (``impl kernels.py:ce``; the JSON report keeps the whole target)."""
    if method.startswith("impl ") and ("/" in method or "\\" in method):
        target = method[len("impl ") :]
        return "impl " + target.replace("\\", "/").rsplit("/", 1)[-1]
    return method


def options_line(r: SpecResult) -> Text | None:
    """The loss and its options, when they differ from plain softmax cross-entropy."""
    parts = []
    if r.loss_kind and r.loss_kind != "softmax_cross_entropy":
        parts.append(f"loss {r.loss_kind}")
    for key, value in r.options.items():
        shown = (
            "[" + ", ".join(f"{v:g}" for v in np.ravel(value)) + "]"
            if isinstance(value, np.ndarray)
            else f"{value:g}"
            if isinstance(value, float)
            else str(value)
        )
        parts.append(f"{key} {shown}")
    return Text("  ".join(parts), style="dim") if parts else None


def weights_table(r: SpecResult) -> Fitted | None:
    """The reference gradient with respect to a layer's weights, in the weights' (D, K) layout
    (every column is a class: on a narrow terminal the rows are stacked rather than cut)."""
    grads = r.parameter_gradients.get("weights", {})
    g = grads.get("analytic")  # the parameters' reference
    if g is None or g.ndim != 2 or g.shape[1] > MAX_CLASS_ROWS:
        return None
    d, k = g.shape
    names = list(r.classes) if r.classes else [str(j) for j in range(k)]
    columns = [Column("input \\ class", "left"), *(Column(name) for name in names)]
    rows = [[f"x[{row}]", *(num(float(v)) for v in g[row])] for row in range(d)]
    title = f"dL/dW (analytic), shape (D, K) = ({d}, {k}): row d = input d, column k = class k"
    return Fitted(columns, rows, title=title)


def parallel_table(r: SpecResult) -> Fitted | None:
    """With ``--tensor-parallel``: one row per process-group size, side by side: its worst
    loss and gradient errors against the reference (with the rank and the global (row, class)),
    how far its results are from the smallest size's (the TP=1 vs TP=k comparison), the ranks'
    disagreement and the launch time."""
    if not r.parallel:
        return None
    base = next((run.baseline for run in r.parallel if run.baseline is not None), None)
    columns = [
        Column("TP", "left"),
        Column("shard", "left", drop=3),
        Column("loss err (rank)"),
        Column("grad err (rank)"),
        Column("worst at", "left", drop=2),
        *(
            [
                Column(f"loss vs TP={base}"),
                Column(f"grad vs TP={base}"),
                Column("differs most at", "left", drop=1),
            ]
            if base is not None
            else []
        ),
        Column("ranks differ", drop=4),
        Column("time", drop=5),
        Column("result", "left"),
    ]
    rows: list[list[Cell]] = []
    for run in r.parallel:
        shard = f"{run.width}" + (f" (+{run.padding} pad)" if run.padding else "")
        vs: list[Cell] = []
        if base is not None:
            vs = (
                ["–", "–", ""]
                if run.baseline is None
                else [
                    err(run.loss_vs_baseline or 0.0),
                    err(run.grad_vs_baseline or 0.0),
                    _index(run.grad_vs_baseline_at),
                ]
            )
        rows.append(
            [
                str(run.parallel),
                shard,
                f"{err(run.loss_error)} ({run.loss_rank})",
                f"{err(run.grad_error)} ({run.grad_rank})",
                _index(run.grad_at),
                *vs,
                err(run.ranks_spread),
                f"{run.seconds:.2f} s",
                verdict(run.passed),
            ]
        )
    title = "tensor parallel: each size against the reference" + (
        f" and against TP={base}" if base is not None else ""
    )
    return Fitted(columns, rows, title=title)


def check_table(r: SpecResult) -> Table | None:
    if not r.checks:
        return None
    table = Table(box=None, pad_edge=False, header_style="bold")
    # names and verdicts keep their width; the prose of the detail wraps between words
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in r.checks:
        table.add_row(c.name, verdict(c.passed), c.detail)
    return table


def output_block(r: SpecResult, named: bool = False) -> RenderableType | None:
    """What the implementation printed under this spec (its first and last lines, the rest
    counted), or None; ``named``: the heading names the spec (in the one-line-per-spec
    report, where the spec's own block is not shown)."""
    if r.output is None:
        return None
    heading = r.output.heading() + (f" under {r.name}" if named else "") + ":"
    body = Text("\n".join("  " + line for line in r.output.text.splitlines()), style="dim")
    return Group(Text(heading, style="yellow"), body)


def spec_block(r: SpecResult) -> RenderableType:
    parts: list[RenderableType] = [header(r)]
    printed = output_block(r)
    if printed is not None:
        parts.append(printed)
    if r.status == "error":  # its message is printed once, on stderr
        return Group(*parts)
    if r.status == "skip":
        return Group(*parts, Text(f"skipped: {r.message}", style="yellow"))
    options = options_line(r)
    if options is not None:
        parts.append(options)
    if r.loss_note:
        parts.append(Text(f"loss: {r.loss_note}", style="yellow"))
    for part in (class_table(r), weights_table(r), comparison_table(r), parallel_table(r)):
        if part is not None:
            parts.append(Text(""))
            parts.append(part)
    for c in r.comparisons:
        if not c.passed and c.diagnosis:
            line = f"{_method_label(c.method)} ({c.quantity}): {c.diagnosis}"
            parts.append(Text(line, style="bold yellow"))
        if c.passed and c.inconclusive is not None:
            line = f"{c.method} ({c.quantity}): inconclusive: {c.inconclusive}"
            parts.append(Text(line, style="yellow"))
        if c.loose:
            line = (
                f"{_method_label(c.method)} ({c.quantity}): tolerance too loose to catch "
                f"{' or '.join(c.loose)} (it would pass)"
            )
            parts.append(Text(line, style="bold yellow"))
        if c.precision is not None and c.method.startswith("impl"):  # (JSON has every row's)
            line = f"{_method_label(c.method)} ({c.quantity}): {c.precision.summary()}"
            parts.append(Text(line, style="dim"))
    for method, reason in r.not_computable.items():
        parts.append(Text(f"{method}: not computable: {reason}", style="yellow"))
    checks = check_table(r)
    if checks is not None:
        parts.append(Text(""))
        parts.append(checks)
    for method, note in r.method_notes.items():
        parts.append(Text(f"{method}: {note}", style="dim"))
    return Group(*parts)


def summary_line(results: Sequence[SpecResult]) -> str:
    """``n passed, n failed, n errors`` and how many passed with an inconclusive comparison."""
    line = counts(results)
    undecided = inconclusive_count(results)
    if undecided:
        line += f" ({undecided} passed with an inconclusive comparison)"
    return line


def inconclusive_count(results: Sequence[SpecResult]) -> int:
    """Passing specs with at least one inconclusive comparison."""
    return sum(
        r.status == "pass" and any(c.inconclusive is not None for c in r.comparisons)
        for r in results
    )


def render(results: Sequence[SpecResult], verbose: bool = False) -> RenderableType:
    """One spec (or ``verbose``): every result in full. Several: one line per spec, then the
    full report of each that failed (an invalid spec's message is on stderr), then the
    summary line."""
    parts: list[RenderableType] = []
    if verbose or len(results) == 1:
        for r in results:
            parts += [spec_block(r), Text("")]
    else:
        parts.append(overview(results))
        for r in results:
            if r.status == "skip":
                parts.append(Text(f"skipped {r.name}: {r.message}", style="yellow"))
            printed = output_block(r, named=True) if r.status != "fail" else None
            if printed is not None:
                parts.append(printed)
        parts.append(Text(""))
        for r in results:
            if r.status == "fail":
                parts += [spec_block(r), Text("")]
    parts.append(Text(summary_line(results)))
    return Group(*parts)


def overview(results: Sequence[SpecResult]) -> Fitted:
    """One row per spec: status, name, file, loss, and its worst error against its tolerance
    with the comparison it comes from (``0.35`` means the element closest to failing used 35%
    of its allowance; above 1 it failed)."""
    columns = [
        Column("status", "left"),
        Column("name", "left"),
        Column("file", "left", drop=2),
        Column("loss", drop=1),
        Column("worst |Δ|/tol", "left", drop=3),
    ]
    rows: list[list[Cell]] = []
    for r in results:
        status = Text(r.status.upper(), style=_STATUS_STYLE[r.status])
        loss = "" if r.status in ("error", "skip") else _short_loss(r.loss)
        rows.append([status, r.name, r.file, loss, _worst(r)])
    return Fitted(columns, rows)


def _short_loss(loss: float | np.ndarray | None) -> str:
    """A reduced loss as a number; per-sample losses as their count and range."""
    values = np.asarray(loss, dtype=np.float64)
    if values.ndim == 0:
        return num(float(values))
    return f"{num(float(np.max(values)))} max of {values.size}"


def _worst(r: SpecResult) -> str:
    """The comparison whose worst element comes closest to (or furthest past) its tolerance."""
    best: tuple[float, str] | None = None
    for c in r.comparisons:
        allowed = c.atol + c.rtol * abs(c.reference_value)
        gap = abs(c.value - c.reference_value)
        ratio = 0.0 if gap == 0 else (gap / allowed if allowed > 0 else float("inf"))
        if best is None or ratio > best[0]:
            best = (ratio, _method_label(c.method))
    if best is None:
        return ""
    shown = "0" if best[0] == 0 else f"{best[0]:.2g}"
    return f"{shown}  {best[1]}"
