"""Rich tables for a terminal (or plain text when the output is not one).

Colour follows Rich's rules: none when the output is not a terminal, none when ``NO_COLOR`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradcheck_cli.model import SpecResult

#: A single sample gets one row per class up to this many classes.
MAX_CLASS_ROWS = 30

_STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold red"}


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


def header(r: SpecResult) -> Text:
    t = Text()
    t.append(r.status.upper(), style=_STATUS_STYLE[r.status])
    t.append("  ")
    t.append(r.name, style="bold")
    t.append(f"  {r.file}")
    if r.status != "error":
        t.append(f"  shape {_shape(r.shape)}  reduction {r.reduction}  loss ")
        t.append(loss_text(r.loss))
    return t


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


def class_table(r: SpecResult) -> Table | None:
    """One row per class for a single sample: logit, p, target, each method's gradient."""
    if r.logits is None or r.probs is None or r.targets is None or r.logits.ndim != 1:
        return None
    k = r.logits.shape[0]
    if k > MAX_CLASS_ROWS:
        return None
    methods = [m for m, g in r.gradients.items() if g is not None]
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("class")
    for col in ("logit", "p", "target", *methods, "max |Δ|"):
        table.add_column(col, justify="right")
    ref = r.gradients.get(r.reference or "")
    for i in range(k):
        name = r.classes[i] if r.classes else str(i)
        grads = [r.gradients[m] for m in methods]
        cells = [num(float(g[i])) for g in grads if g is not None]
        delta = 0.0
        if ref is not None:
            delta = max(
                (abs(float(g[i]) - float(ref[i])) for g in grads if g is not None), default=0.0
            )
        table.add_row(
            name,
            num(float(r.logits[i])),
            num(float(r.probs[i])),
            num(float(r.targets[i])),
            *cells,
            err(delta),
        )
    return table


def comparison_table(r: SpecResult) -> Table | None:
    if not r.comparisons:
        return None
    table = Table(box=None, pad_edge=False, header_style="bold")
    layered = any(c.quantity != "logits" for c in r.comparisons)
    with_dtype = any(c.dtype != "float64" for c in r.comparisons)
    if layered:
        table.add_column("quantity")
    for col, justify in (
        (f"vs {r.reference}", "left"),
        *((("dtype", "left"),) if with_dtype else ()),
        ("max abs err", "right"),
        ("predicted", "right"),
        ("max rel err", "right"),
        ("worst at", "left"),
        ("value", "right"),
        ("reference", "right"),
        ("rtol/atol", "left"),
        ("result", "left"),
    ):
        table.add_column(col, justify=justify)
    for c in r.comparisons:
        result = verdict(c.passed)
        if not c.passed:
            result.append(f" ({c.failed_elements} element{'s' if c.failed_elements != 1 else ''})")
        elif c.inconclusive is not None:
            result = Text("inconclusive", style="yellow")
        table.add_row(
            *([c.quantity] if layered else []),
            c.method,
            *([c.dtype] if with_dtype else []),
            err(c.max_abs_error),
            "" if c.predicted is None else f"≤ {err(c.predicted)}",
            err(c.max_rel_error),
            _index(c.worst_index),
            num(c.value),
            num(c.reference_value),
            f"{c.rtol:g}/{c.atol:g}",
            result,
        )
    return table


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


def weights_table(r: SpecResult) -> Table | None:
    """The reference gradient with respect to a layer's weights, in the weights' (D, K) layout."""
    grads = r.parameter_gradients.get("weights", {})
    g = grads.get("analytic")  # the parameters' reference
    if g is None or g.ndim != 2 or g.shape[1] > MAX_CLASS_ROWS:
        return None
    d, k = g.shape
    names = list(r.classes) if r.classes else [str(j) for j in range(k)]
    table = Table(
        box=None,
        pad_edge=False,
        header_style="bold",
        title=f"dL/dW (analytic), shape (D, K) = ({d}, {k}): row d = input d, column k = class k",
        title_justify="left",
        title_style="bold",
    )
    table.add_column("input \\ class")
    for name in names:
        table.add_column(name, justify="right")
    for row in range(d):
        table.add_row(f"x[{row}]", *(num(float(v)) for v in g[row]))
    return table


def check_table(r: SpecResult) -> Table | None:
    if not r.checks:
        return None
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for c in r.checks:
        table.add_row(c.name, verdict(c.passed), c.detail)
    return table


def spec_block(r: SpecResult) -> RenderableType:
    parts: list[RenderableType] = [header(r)]
    if r.status == "error":
        parts.append(Text(f"  {r.message}", style="red"))
        return Group(*parts)
    options = options_line(r)
    if options is not None:
        parts.append(options)
    if r.loss_note:
        parts.append(Text(f"loss: {r.loss_note}", style="yellow"))
    for part in (class_table(r), weights_table(r), comparison_table(r)):
        if part is not None:
            parts.append(Text(""))
            parts.append(part)
    for c in r.comparisons:
        if c.passed and c.inconclusive is not None:
            line = f"{c.method} ({c.quantity}): inconclusive: {c.inconclusive}"
            parts.append(Text(line, style="yellow"))
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
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "fail" for r in results)
    errors = sum(r.status == "error" for r in results)
    line = f"{passed} passed, {failed} failed, {errors} errors"
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


def render(results: Sequence[SpecResult]) -> RenderableType:
    """Every result, then the summary line."""
    parts: list[RenderableType] = []
    for r in results:
        parts += [spec_block(r), Text("")]
    parts.append(Text(summary_line(results)))
    return Group(*parts)
