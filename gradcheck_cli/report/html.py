"""The HTML report (``--format html``): one self-contained HTML5 file.

The page holds what the terminal and JSON reports hold (the summary line, one row per spec,
then every spec in full: its header, options, class and comparison tables, notes, diagnoses and
checks) plus pictures: for a batch, a heat map of where its errors lie against the tolerance;
for ``xentcheck sweep``, the error-against-step chart (log-log) and the Taylor test's.

Self-contained: the CSS is in a ``<style>`` element, the pictures are inline SVG, and nothing
refers to anything outside the file (no script, no font, no image, no link but to anchors of
the page), so it opens the same offline, attached to a CI run or mailed. Every text from a spec
or a result is escaped. The numbers are formatted as the terminal table formats them
(non-finite ones read ``inf``, ``-inf``, ``nan``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

import numpy as np
from rich.text import Text

from gradcheck_cli._version import __version__
from gradcheck_cli.compare import Comparison
from gradcheck_cli.model import SpecResult, SweepResult
from gradcheck_cli.report import svg
from gradcheck_cli.report import table as tables
from gradcheck_cli.report._fit import Cell, Fitted
from gradcheck_cli.report.json import summary as summary_counts

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1a1a1a; background: #f4f5f7; margin: 0; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 6px; display: flex; gap: 10px; align-items: baseline;
  flex-wrap: wrap; }
h3 { font-size: 14px; margin: 16px 0 6px; }
.tool { color: #555; margin: 0 0 12px; }
.summary { font-size: 16px; font-weight: 600; margin: 8px 0 14px; }
.counts { display: flex; gap: 8px; flex-wrap: wrap; margin: 0 0 16px; padding: 0; }
.counts li { list-style: none; padding: 4px 10px; border-radius: 4px; background: #fff;
  border: 1px solid #d0d4da; }
section.spec, section.overview { background: #fff; border: 1px solid #d0d4da;
  border-left: 6px solid #2e7d32; border-radius: 6px; padding: 14px 18px; margin: 0 0 16px; }
section.overview { border-left-color: #5c6bc0; }
section.spec.fail, section.spec.error { border-left-color: #c62828; }
section.spec.skip { border-left-color: #f9a825; }
.badge { font-size: 12px; font-weight: 700; padding: 2px 8px; border-radius: 3px;
  color: #fff; background: #2e7d32; letter-spacing: .04em; }
.badge.fail, .badge.error { background: #c62828; }
.badge.skip { background: #f9a825; color: #1a1a1a; }
.meta { color: #444; margin: 0 0 4px; overflow-wrap: anywhere; }
.meta span + span::before { content: "·"; margin: 0 8px; color: #999; }
.options { color: #555; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-size: 12.5px; margin: 0 0 4px; overflow-wrap: anywhere; }
.wrap { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-size: 12.5px; }
caption { text-align: left; font-weight: 600; padding: 0 0 4px; }
th, td { padding: 3px 6px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { background: #eef0f3; text-align: left; vertical-align: bottom; }
td.num, th.num { text-align: right; }
td.num { font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { white-space: nowrap; }
td.long { white-space: normal; min-width: 9em; }
.w { white-space: nowrap; }
td.detail { white-space: normal; min-width: 24em; }
tbody tr:hover { background: #f7f9fc; }
.good { color: #1b5e20; font-weight: 600; }
.bad { color: #b71c1c; font-weight: 700; }
.warn { color: #8a5a00; }
.dim { color: #666; }
ul.notes { margin: 8px 0; padding-left: 20px; }
ul.notes li { margin: 2px 0; overflow-wrap: anywhere; }
li.diagnosis { color: #8a3b00; font-weight: 600; }
pre.message { background: #fff4f4; border: 1px solid #f0c4c4; padding: 8px 10px;
  white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0; }
figure { margin: 14px 0; }
figcaption { color: #333; font-size: 13px; margin: 4px 0 0; max-width: 900px; }
svg text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #222; }
svg text.axis { font-size: 12px; font-weight: 600; }
svg .grid { stroke: #e4e4e4; stroke-width: 1; }
ul.legend { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap;
  gap: 4px 22px; }
ul.legend li { display: flex; align-items: center; gap: 6px; }
a { color: #1f4fa8; }
footer { color: #777; font-size: 12px; margin-top: 24px; }
"""


def page(title: str, body: Sequence[str]) -> str:
    """A whole HTML5 document around ``body`` (markup already escaped)."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + f"\n<footer>xentcheck {escape(__version__)}: a self-contained report (inline CSS "
        "and SVG, no network).</footer>\n</main>\n</body>\n</html>\n"
    )


def _style_class(cell: Cell) -> str:
    """The CSS class of a Rich cell's style (green: good, red: bad, yellow: warning)."""
    if not isinstance(cell, Text):
        return ""
    style = str(cell.style)
    for word, name in (("red", "bad"), ("green", "good"), ("yellow", "warn"), ("dim", "dim")):
        if word in style:
            return name
    return ""


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


#: Text cells longer than this may wrap (so that a long method name does not push the verdict
#: out of sight).
LONG_CELL = 16


def _breakable(text: str) -> str:
    """Escaped ``text`` that may wrap between words and after a slash (``rtol/atol``), never
    inside a word (a number's ``e-12`` stays whole)."""
    words = []
    for word in text.split(" "):
        pieces = [p for p in re.split(r"(?<=/)", word) if p]
        words.append("<wbr>".join(f'<span class="w">{escape(p)}</span>' for p in pieces))
    return " ".join(words)


def fitted_table(t: Fitted | None, links: Sequence[str | None] | None = None) -> str:
    """A terminal table (``report.table``) as an HTML table with every column (a page can
    scroll sideways, so none is dropped); ``links``: an anchor for each row's second cell."""
    if t is None:
        return ""
    head = "".join(
        f'<th class="{"num" if c.justify == "right" else "text"}">{escape(c.header)}</th>'
        for c in t.columns
    )
    body = []
    for r, row in enumerate(t.rows):
        cells = []
        for i, (col, cell) in enumerate(zip(t.columns, row, strict=True)):
            text = escape(_plain(cell))
            if links is not None and i == 1 and links[r] is not None:
                text = f'<a href="#{links[r]}">{text}</a>'
            kind = "num" if col.justify == "right" else "text"
            if kind == "text" and len(_plain(cell)) > LONG_CELL and "<a " not in text:
                kind = "text long"
                text = _breakable(_plain(cell))
            style = _style_class(cell)
            cells.append(f'<td class="{kind}{" " + style if style else ""}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{escape(t.title)}</caption>" if t.title else ""
    return (
        f'<div class="wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def check_table(r: SpecResult) -> str:
    if not r.checks:
        return ""
    rows = "".join(
        f'<tr><td class="text">{escape(c.name)}</td>'
        f'<td class="text {"good" if c.passed else "bad"}">{"pass" if c.passed else "FAIL"}</td>'
        f'<td class="detail">{escape(c.detail)}</td></tr>'
        for c in r.checks
    )
    return (
        '<div class="wrap"><table><thead><tr><th>check</th><th>result</th><th>detail</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></div>"
    )


def _anchor(i: int) -> str:
    return f"spec-{i + 1}"


def header(r: SpecResult) -> str:
    """The spec's title (status and name) and its file, shape, reduction and loss."""
    status = r.status
    title = (
        f'<h2><span class="badge {status}">{status.upper()}</span>'
        f"<span>{escape(r.name)}</span></h2>"
    )
    parts = [escape(r.file)]
    if status not in ("error", "skip"):
        parts += [
            f"shape {escape(tables._shape(r.shape))}",
            f"reduction {escape(str(r.reduction))}",
            f"loss {escape(tables.loss_text(r.loss))}",
        ]
    meta = '<p class="meta">' + "".join(f"<span>{p}</span>" for p in parts) + "</p>"
    return title + meta


def notes(r: SpecResult) -> str:
    """Diagnoses, inconclusive and loose comparisons, precision summaries and methods that
    computed nothing, as the terminal report lists them under its tables."""
    items: list[str] = []
    for c in r.comparisons:
        label = f"{tables._method_label(c.method)} ({c.quantity})"
        if not c.passed and c.diagnosis:
            items.append(
                f'<li class="diagnosis">{escape(label)}: diagnosis: {escape(c.diagnosis)}</li>'
            )
        if c.passed and c.inconclusive is not None:
            items.append(
                f'<li class="warn">{escape(label)}: inconclusive: {escape(c.inconclusive)}</li>'
            )
        if c.loose:
            items.append(
                f'<li class="warn">{escape(label)}: tolerance too loose to catch '
                f"{escape(' or '.join(c.loose))} (it would pass)</li>"
            )
        if c.precision is not None and c.method.startswith("impl"):
            items.append(f'<li class="dim">{escape(label)}: {escape(c.precision.summary())}</li>')
    for method, reason in r.not_computable.items():
        items.append(f'<li class="warn">{escape(method)}: not computable: {escape(reason)}</li>')
    return f'<ul class="notes">{"".join(items)}</ul>' if items else ""


def method_notes(r: SpecResult) -> str:
    if not r.method_notes:
        return ""
    items = "".join(
        f'<li class="dim">{escape(m)}: {escape(note)}</li>' for m, note in r.method_notes.items()
    )
    return f'<ul class="notes">{items}</ul>'


def heat_comparisons(r: SpecResult) -> list[Comparison]:
    """The comparisons of the logits' gradient that get a heat map: every failed one; when
    none failed, the one that comes closest to its tolerance (an implementation's first)."""
    batch = [c for c in r.comparisons if c.heat is not None and c.quantity == "logits"]
    failed = [c for c in batch if not c.passed]
    if failed or not batch:
        return failed
    impl = [c for c in batch if c.method.startswith("impl")]
    return [max(impl or batch, key=lambda c: float(np.max(c.heat.ratio)) if c.heat else 0.0)]


def heat_figure(c: Comparison) -> str:
    heat = c.heat
    assert heat is not None
    n, k = heat.shape
    bn, bk = heat.block
    rows, cols = heat.ratio.shape
    label = tables._method_label(c.method)
    allowance = (
        "the baseline tolerance model's per-element allowance"
        if c.precision is not None and c.precision.model == "baseline"
        else f"atol + rtol·|reference| (rtol {c.rtol:g}, atol {c.atol:g})"
    )
    cells = (
        f"one cell per element ({n} × {k})"
        if (bn, bk) == (1, 1)
        else f"{n} × {k} elements in {rows} × {cols} cells of up to {bn} × {bk} elements, "
        "each cell the largest ratio of its block"
    )
    worst = ", ".join(str(i) for i in c.worst_index)
    title = f"{label} vs {c.reference}: |Δ| / allowance per element"
    caption = (
        f"<b>{escape(label)}</b> vs {escape(c.reference)}: each element's |Δ| divided by "
        f"{escape(allowance)}; {escape(cells)}. Blue: within tolerance, red: failed (ratio ≥ 1). "
        + (
            f"Outlined: the worst element [{escape(worst)}] "
            f"({tables.num(c.value)} against {tables.num(c.reference_value)}; "
            f"{c.failed_elements} element{'s' if c.failed_elements != 1 else ''} failed)."
            if np.any(heat.ratio != 0)
            else "Every element agrees exactly."
        )
    )
    return (
        f'<figure class="heatmap" data-method="{escape(c.method)}">'
        f"{svg.heat_map(heat, c.worst_index, title)}<figcaption>{caption}</figcaption></figure>"
    )


def spec_section(r: SpecResult, i: int) -> str:
    """One spec in full, as the terminal's verbose report shows it, with its heat maps."""
    parts = [f'<section class="spec {r.status}" id="{_anchor(i)}">', header(r)]
    if r.output is not None:
        parts.append(f'<p class="warn">{escape(r.output.heading())}:</p>')
        parts.append(f'<pre class="output">{escape(r.output.text)}</pre>')
    if r.status == "error":
        parts.append(f'<pre class="message">{escape(r.message or "")}</pre>')
    elif r.status == "skip":
        parts.append(f'<p class="warn">skipped: {escape(r.message or "")}</p>')
    else:
        options = tables.options_line(r)
        if options is not None:
            parts.append(f'<p class="options">{escape(options.plain)}</p>')
        if r.loss_note:
            parts.append(f'<p class="warn">loss: {escape(r.loss_note)}</p>')
        for part in (
            tables.class_table(r),
            tables.weights_table(r),
            tables.comparison_table(r),
            tables.parallel_table(r),
        ):
            parts.append(fitted_table(part))
        parts.append(notes(r))
        parts += [heat_figure(c) for c in heat_comparisons(r)]
        parts.append(check_table(r))
        parts.append(method_notes(r))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def render(results: Sequence[SpecResult], verbose: bool = False) -> str:
    """``xentcheck run --format html``: the summary, one line per spec (linked to its
    section), then every spec in full (``verbose`` changes nothing: a page shows it all)."""
    line = tables.summary_line(results)
    counts = summary_counts(results)
    bad = {"failed", "errors"}
    badges = "".join(
        f'<li class="{"bad" if key in bad and value else ""}">{escape(key)} <b>{value}</b></li>'
        for key, value in counts.items()
    )
    body = [
        "<h1>xentcheck report</h1>",
        f'<p class="tool">xentcheck {escape(__version__)}: softmax and sigmoid cross-entropy '
        "losses and their gradients, each method against the reference.</p>",
        f'<p class="summary" id="summary">{escape(line)}</p>',
        f'<ul class="counts">{badges}</ul>',
    ]
    if results:
        links = [_anchor(i) for i in range(len(results))]
        body.append(
            '<section class="overview"><h2>Specs</h2>'
            + fitted_table(tables.overview(results), links)
            + '<p class="dim">worst |Δ|/tol: the error of the element closest to failing as '
            "a share of its allowance (above 1 it failed), and the comparison it comes "
            "from.</p></section>"
        )
    body += [spec_section(r, i) for i, r in enumerate(results)]
    return page(f"xentcheck report: {line}", body)


def render_sweep(r: SweepResult) -> str:
    """``xentcheck sweep --format html``: the error-against-step chart with each method's best
    step ringed, the table of errors, and the Taylor test's remainder chart with slopes 1 and 2
    for reference."""
    series = [
        svg.Series(method, r.steps, errs, best=r.best_step.get(method))
        for method, errs in r.errors.items()
    ]
    chart = svg.log_log_chart(
        series,
        x_label="step h",
        y_label=f"max |error| against {r.reference}",
        title=f"{r.name}: error against step (log-log)",
    )
    legend = []
    for s, style in zip(series, svg.styles(series), strict=True):
        best = r.best_step.get(s.name)
        if best is None:
            text = f"{s.name}: not computable"
        else:
            e = dict(zip(r.steps, r.errors[s.name], strict=True))[best]
            text = f"{s.name}: best step h = {best:.0e} (error {tables.err(e or 0.0)})"
        legend.append(f"<li>{svg.swatch(style)}<span>{escape(text)}</span></li>")
    zero = any(e == 0 for errs in r.errors.values() for e in errs)
    body = [
        f"<h1>xentcheck sweep: {escape(r.name)}</h1>",
        f'<p class="meta"><span>{escape(r.file)}</span>'
        f"<span>errors against {escape(r.reference)}</span></p>",
        '<section class="spec">',
        "<h2>Error against step</h2>",
        f"<figure>{chart}<figcaption>"
        f'<ul class="legend">{"".join(legend)}</ul>'
        "Forward, central and Richardson differences trace a V: truncation error falls with "
        "h (as h, h², h⁴), rounding error grows as ε/h; the complex step has no rounding "
        "term. A ring marks each method's best step; a gap, a step where it computed nothing"
        + (", and a hollow marker on the bottom axis an error of exactly 0" if zero else "")
        + ".</figcaption></figure>",
        _sweep_table(r),
        "</section>",
        _taylor_section(r),
    ]
    if r.notes:
        items = "".join(
            f'<li class="warn">{escape(m)}: {escape(note)}</li>' for m, note in r.notes.items()
        )
        body.append(f'<section class="spec"><h2>Notes</h2><ul class="notes">{items}</ul></section>')
    return page(f"xentcheck sweep: {r.name}", body)


def _sweep_table(r: SweepResult) -> str:
    head = '<th class="num">step h</th>' + "".join(
        f'<th class="num">{escape(m)}</th>' for m in r.errors
    )
    rows = []
    for i, h in enumerate(r.steps):
        cells = [f'<td class="num">{h:.0e}</td>']
        for method, errs in r.errors.items():
            e = errs[i]
            best = r.best_step.get(method) == h
            text = "—" if e is None else tables.err(e) + (" *" if best else "")
            cells.append(f'<td class="num{" good" if best else ""}">{escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="wrap"><table><caption>max |error| at each step (* best step per method)'
        f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _taylor_section(r: SweepResult) -> str:
    t = r.taylor
    slope = "n/a" if t.slope is None else f"{t.slope:.3f}"
    series = [svg.Series("remainder", t.steps, t.remainders)]
    anchor = next(
        ((h, rem) for h, rem in zip(t.steps[::-1], t.remainders[::-1], strict=True) if rem > 0),
        None,
    )
    if anchor is not None:  # slopes 1 and 2 from a decade below the smallest step's remainder
        h0, r0 = anchor[0], anchor[1] / 10
        for power in (2, 1):
            guide = [r0 * (h / h0) ** power for h in t.steps]
            series.append(svg.Series(f"slope {power}", t.steps, guide, guide=True))
    chart = svg.log_log_chart(
        series,
        x_label="step h along the direction",
        y_label="|L(z + h d) − L(z) − h gᵀd|",
        title=f"{r.name}: Taylor remainder (log-log)",
        width=620,
    )
    legend = "".join(
        f"<li>{svg.swatch(style)}<span>{escape(s.name)}</span></li>"
        for s, style in zip(series, svg.styles(series), strict=True)
    )
    verdict_class = "good" if "consistent" in t.verdict else "bad" if "WRONG" in t.verdict else ""
    return (
        '<section class="spec"><h2>Taylor test</h2>'
        f"<p>Along a seeded random unit direction d (seed {t.seed}): fitted slope "
        f'<b>{escape(slope)}</b>: <span class="{verdict_class}">{escape(t.verdict)}</span></p>'
        f'<figure>{chart}<figcaption><ul class="legend">{legend}</ul>A correct gradient '
        "leaves a remainder that shrinks like h² (parallel to the slope-2 guide); a wrong one "
        "shrinks like h.</figcaption></figure></section>"
    )
