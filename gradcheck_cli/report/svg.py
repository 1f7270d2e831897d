"""Hand-drawn inline SVG for the HTML report: a batch's error heat map and log-log charts.

No plotting library: the core stays light, and the two pictures are simple enough to draw
directly. Everything here turns finished numbers into markup; the only arithmetic is placing
them (logarithms for the axes, a colour per decade). The SVG is meant to sit inside an HTML5
page, so it has no ``xmlns`` (the HTML parser puts it in the SVG namespace) and no reference
to anything outside the page; every text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from gradcheck_cli.compare import HeatMap

#: Decades of the heat map's colour scale are clamped to this range (beyond: the end colours).
HEAT_DECADES = (-12, 12)
#: Colour levels per decade of the heat map.
LEVELS_PER_DECADE = 3
#: The heat map's colours: light to dark blue within tolerance, light to dark red past it.
WITHIN = ("#dbe9f6", "#9ecae1", "#2171b5", "#08306b")
BEYOND = ("#fdd0a2", "#fb6a4a", "#cb181d", "#67000d")
EXACT_COLOUR = "#ffffff"
INVALID_COLOUR = "#000000"
"""nan, or a nonzero error where the allowance is zero."""


def _mix(stops: Sequence[str], t: float) -> str:
    """The colour at ``t`` in [0, 1] along ``stops`` (linear in sRGB)."""
    t = min(1.0, max(0.0, t))
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    f = pos - i
    a, b = stops[i], stops[i + 1]
    rgb = [round(int(a[j : j + 2], 16) * (1 - f) + int(b[j : j + 2], 16) * f) for j in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


@dataclass(frozen=True)
class HeatScale:
    """The heat map's colour scale: levels ``lo * L ... hi * L - 1`` (L levels a decade), each
    covering ratios from ``10^(level / L)`` up to the next level; level < 0 is within
    tolerance."""

    lo: int
    """Lowest decade shown (ratios below it take its colour)."""
    hi: int
    """Highest decade shown (ratios at or above it take the top colour)."""

    @classmethod
    def for_ratios(cls, ratio: np.ndarray) -> HeatScale:
        """The decades the finite, nonzero ratios span, always including 0.1 to 10 (so the
        tolerance sits inside the scale), within :data:`HEAT_DECADES`."""
        shown = ratio[np.isfinite(ratio) & (ratio > 0)]
        lo, hi = -1, 1
        if shown.size:
            lo = min(lo, math.floor(math.log10(float(np.min(shown)))))
            hi = max(hi, math.floor(math.log10(float(np.max(shown)))) + 1)
        return cls(max(lo, HEAT_DECADES[0]), min(hi, HEAT_DECADES[1]))

    def level(self, r: float) -> int | None:
        """A ratio's level (None for 0 and for inf, which have colours of their own)."""
        if r == 0 or not math.isfinite(r):
            return None
        level = math.floor(math.log10(r) * LEVELS_PER_DECADE)
        return min(max(level, self.lo * LEVELS_PER_DECADE), self.hi * LEVELS_PER_DECADE - 1)

    def levels(self) -> range:
        return range(self.lo * LEVELS_PER_DECADE, self.hi * LEVELS_PER_DECADE)

    def colour(self, level: int) -> str:
        if level < 0:
            below = -self.lo * LEVELS_PER_DECADE
            return _mix(WITHIN, (level + below) / max(1, below - 1))
        above = self.hi * LEVELS_PER_DECADE
        return _mix(BEYOND, level / max(1, above - 1))


def _ticks(cells: int, most: int) -> list[int]:
    """Cells to label on an axis of ``cells`` cells: every one when few, else about ``most``
    evenly spaced (always the first)."""
    if cells <= most:
        return list(range(cells))
    step = math.ceil(cells / most)
    return list(range(0, cells, step))


def heat_map(heat: HeatMap, worst: tuple[int, ...], title: str) -> str:
    """An SVG grid of ``heat``'s cells (rows are samples, columns classes), coloured by the
    tolerance ratio on a log scale, the worst element's cell outlined, with axes and a legend.

    Each colour level is one ``<path data-level="L">`` whose subpaths are runs of cells
    (``M col row h width v1 ...``, in cell units), so the file stays small (a 64 x 64 map is a
    few tens of kilobytes at most).
    """
    ratio = heat.ratio
    rows, cols = ratio.shape
    bn, bk = heat.block
    cw = min(40, max(8, 640 // cols))
    ch = min(28, max(6, 448 // rows))
    left, top = 64, 40
    width, height = cols * cw, rows * ch
    scale = HeatScale.for_ratios(ratio)
    runs: dict[int | str, list[str]] = {}
    for i in range(rows):
        j = 0
        while j < cols:
            key = _cell_key(scale, float(ratio[i, j]))
            start = j
            while j + 1 < cols and _cell_key(scale, float(ratio[i, j + 1])) == key:
                j += 1
            runs.setdefault(key, []).append(f"M{start} {i}h{j - start + 1}v1h-{j - start + 1}z")
            j += 1
    legend_top = top + height + 36
    total_height = legend_top + 58
    total_width = max(left + width + 16, 560)
    out = [
        f'<svg class="heat" width="{total_width}" '
        f'height="{total_height}" viewBox="0 0 {total_width} {total_height}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<g transform="translate({left} {top}) scale({cw} {ch})" shape-rendering="crispEdges">',
    ]
    for key, parts in runs.items():
        fill = (
            EXACT_COLOUR
            if key == "exact"
            else INVALID_COLOUR
            if key == "invalid"
            else scale.colour(int(key))
        )
        out.append(f'<path data-level="{key}" fill="{fill}" d="{"".join(parts)}"/>')
    out.append("</g>")
    out.append(
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" '
        'stroke="#888" stroke-width="1"/>'
    )
    wi, wj = heat.cell(worst) if len(worst) == 2 else (-1, -1)
    if 0 <= wi < rows and 0 <= wj < cols and np.any(ratio != 0):
        out.append(
            f'<rect class="worst" data-cell="{wi},{wj}" x="{left + wj * cw - 1}" '
            f'y="{top + wi * ch - 1}" width="{cw + 2}" height="{ch + 2}" fill="none" '
            f'stroke="#ffbf00" stroke-width="3"><title>worst element [{worst[0]}, {worst[1]}]'
            "</title></rect>"
        )
    # axes: the first element of each labelled cell
    for j in _ticks(cols, 16 if cw >= 24 else 8):
        x = left + j * cw + cw / 2
        out.append(
            f'<text class="tick" x="{x:g}" y="{top - 6}" text-anchor="middle">{j * bk}</text>'
        )
    for i in _ticks(rows, 16):
        y = top + i * ch + ch / 2 + 4
        out.append(f'<text class="tick" x="{left - 6}" y="{y:g}" text-anchor="end">{i * bn}</text>')
    # centred over a wide grid, else from its left edge (clear of "row n")
    anchor = f'x="{left + width / 2:g}" text-anchor="middle"' if width >= 240 else f'x="{left}"'
    out.append(f'<text class="axis" {anchor} y="{top - 24}">class k →</text>')
    out.append(  # horizontal, above the row labels (a rotated arrow would point up)
        f'<text class="axis" x="{left - 6}" y="{top - 24}" text-anchor="end">row n ↓</text>'
    )
    out += _heat_legend(scale, left, legend_top, any(k == "invalid" for k in runs))
    out.append("</svg>")
    return "".join(out)


def _cell_key(scale: HeatScale, r: float) -> int | str:
    if r == 0:
        return "exact"
    if not math.isfinite(r):
        return "invalid"
    level = scale.level(r)
    assert level is not None
    return level


def _heat_legend(scale: HeatScale, x0: int, y0: int, invalid: bool) -> list[str]:
    """The colour bar with a label every decade or few, the tolerance (ratio 1) marked, and the
    swatches for exact and nan."""
    levels = scale.levels()
    bar = 360
    w = bar / len(levels)
    out = [f'<text class="axis" x="{x0}" y="{y0 - 8}">|Δ| / allowance (log scale)</text>']
    for idx, level in enumerate(levels):
        out.append(
            f'<rect x="{x0 + idx * w:.2f}" y="{y0}" width="{w + 0.5:.2f}" height="12" '
            f'fill="{scale.colour(level)}"/>'
        )
    decades = scale.hi - scale.lo
    every = 1 if decades <= 8 else 2 if decades <= 16 else 4  # labels: multiples of it
    for d in range(scale.lo, scale.hi + 1):
        x = x0 + (d - scale.lo) * LEVELS_PER_DECADE * w
        labelled = d % every == 0
        tick = y0 + (16 if labelled else 14)
        out.append(f'<line x1="{x:.2f}" y1="{y0}" x2="{x:.2f}" y2="{tick}" stroke="#333"/>')
        if labelled:
            out.append(
                f'<text class="tick" x="{x:.2f}" y="{y0 + 28}" text-anchor="middle">'
                f"{_power(d)}</text>"
            )
    one = x0 + (0 - scale.lo) * LEVELS_PER_DECADE * w
    out.append(
        f'<line x1="{one:.2f}" y1="{y0 - 3}" x2="{one:.2f}" y2="{y0 + 15}" stroke="#000" '
        'stroke-width="2.5"/>'
    )
    out.append(
        f'<text class="tick" x="{one:.2f}" y="{y0 + 42}" text-anchor="middle">'
        "tolerance: ≥ 1 fails</text>"
    )
    sx = x0 + bar + 24
    out.append(
        f'<rect x="{sx}" y="{y0}" width="12" height="12" fill="{EXACT_COLOUR}" stroke="#888"/>'
        f'<text class="tick" x="{sx + 16}" y="{y0 + 10}">0 (exact)</text>'
    )
    if invalid:
        out.append(
            f'<rect x="{sx}" y="{y0 + 18}" width="12" height="12" fill="{INVALID_COLOUR}"/>'
            f'<text class="tick" x="{sx + 16}" y="{y0 + 28}">nan / no allowance</text>'
        )
    return out


def _power(decade: int) -> str:
    """``10`` with the exponent raised (as SVG text)."""
    if decade == 0:
        return "1"
    sign = "−" if decade < 0 else ""
    return f'10<tspan dy="-5" font-size="9">{sign}{abs(decade)}</tspan>'


# ---------------------------------------------------------------------------------------------
# log-log charts


#: Series styles, in order: colour (Tableau 10), dash pattern, marker shape.
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
DASHES = ("", "6 3", "2 2", "8 3 2 3", "4 4", "1 3")
MARKERS = ("circle", "square", "triangle", "diamond", "circle", "square")


@dataclass(frozen=True)
class Series:
    """One line of a log-log chart: points (x, y), y None where there is no value (a gap), 0
    where it is exactly zero (drawn on the bottom axis, hollow)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    best: float | None = None
    """The x of the point to ring (a method's best step)."""
    guide: bool = False
    """A grey dashed reference line without markers (a slope)."""


@dataclass(frozen=True)
class Style:
    colour: str
    dash: str
    marker: str


def styles(series: Sequence[Series]) -> list[Style]:
    """Each series' colour, dash and marker (guides: grey, each with its own dashes)."""
    out, i, g = [], 0, 0
    for s in series:
        if s.guide:
            out.append(Style("#8a8a8a", ("6 4", "2 3", "9 3 2 3")[g % 3], ""))
            g += 1
        else:
            out.append(Style(COLOURS[i % 6], DASHES[i % 6], MARKERS[i % 6]))
            i += 1
    return out


def _decade_range(values: Sequence[float]) -> tuple[int, int]:
    lo = math.floor(math.log10(min(values)) + 1e-9)
    hi = math.ceil(math.log10(max(values)) - 1e-9)
    return lo, max(hi, lo + 1)


def log_log_chart(
    series: Sequence[Series], *, x_label: str, y_label: str, title: str, width: int = 760
) -> str:
    """A log-log line chart: decade grid and labels on both axes, one polyline per series
    (split at missing values), a marker at each point and a ring at each series' best point.
    The legend is left to the page (HTML, beside the chart), so it never covers a line."""
    height = round(width * 0.55)
    left, right, top, bottom = 70, 16, 14, 50
    pw, ph = width - left - right, height - top - bottom
    xs = [x for s in series for x in s.xs if x > 0]
    ys = [y for s in series for y in s.ys if y is not None and y > 0 and math.isfinite(y)]
    has_zero = any(y == 0 for s in series for y in s.ys)
    x_lo, x_hi = _decade_range(xs) if xs else (0, 1)
    y_lo, y_hi = _decade_range(ys) if ys else (-16, 0)
    if has_zero:
        y_lo -= 1  # zeros sit on the bottom axis, a decade below the smallest error

    pad = 10  # points on the extreme decades stay off the frame

    def px(x: float) -> float:
        return left + pad + (math.log10(x) - x_lo) / (x_hi - x_lo) * (pw - 2 * pad)

    def py(y: float) -> float:
        if y <= 0:
            return top + ph - pad
        return top + pad + (y_hi - math.log10(y)) / (y_hi - y_lo) * (ph - 2 * pad)

    out = [
        f'<svg class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#888"/>',
    ]
    x_every = 1 if x_hi - x_lo <= 16 else 2
    for d in range(x_lo, x_hi + 1):
        x = px(10.0**d)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}"/>')
        if (d - x_lo) % x_every == 0:
            out.append(
                f'<text class="tick" x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">'
                f"{_power(d)}</text>"
            )
    span = y_hi - y_lo
    y_every = 1 if span <= 12 else 2 if span <= 24 else 4
    for d in range(y_lo, y_hi + 1):
        y = py(10.0**d) if not (has_zero and d == y_lo) else py(0.0)
        out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}"/>')
        if (y_hi - d) % y_every == 0:
            label = "0" if has_zero and d == y_lo else _power(d)
            out.append(
                f'<text class="tick" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{label}'
                "</text>"
            )
    out.append(
        f'<text class="axis" x="{left + pw / 2:.1f}" y="{height - 10}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text class="axis" transform="translate(16 {top + ph / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for s, st in zip(series, styles(series), strict=True):
        out.append(f'<g class="series" data-name="{escape(s.name)}">')
        segment: list[str] = []
        segments: list[list[str]] = []
        for x, value in zip(s.xs, s.ys, strict=True):
            if value is None or not math.isfinite(value) or x <= 0:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{px(x):.1f},{py(value):.1f}")
        if segment:
            segments.append(segment)
        dash = f' stroke-dasharray="{st.dash}"' if st.dash else ""
        for seg in segments:
            out.append(
                f'<polyline points="{" ".join(seg)}" fill="none" stroke="{st.colour}" '
                f'stroke-width="{1.5 if s.guide else 2}"{dash}/>'
            )
        if st.marker:
            for x, value in zip(s.xs, s.ys, strict=True):
                if value is None or not math.isfinite(value) or x <= 0:
                    continue
                out.append(marker(st.marker, px(x), py(value), st.colour, hollow=value == 0))
                if s.best is not None and x == s.best:
                    out.append(
                        f'<circle class="best" cx="{px(x):.1f}" cy="{py(value):.1f}" r="8" '
                        f'fill="none" stroke="{st.colour}" stroke-width="2"/>'
                    )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def marker(
    shape: str, x: float, y: float, colour: str, hollow: bool = False, r: float = 3.5
) -> str:
    """A point marker: circle, square, triangle or diamond."""
    fill = "#fff" if hollow else colour
    paint = f'fill="{fill}" stroke="{colour}" stroke-width="1.2"'
    if shape == "square":
        side = f'width="{2 * r:.1f}" height="{2 * r:.1f}"'
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" {side} {paint}/>'
    if shape == "triangle":
        pts = f"{x:.1f},{y - r - 1:.1f} {x - r - 0.5:.1f},{y + r:.1f} {x + r + 0.5:.1f},{y + r:.1f}"
        return f'<polygon points="{pts}" {paint}/>'
    if shape == "diamond":
        q = r + 1
        pts = f"{x:.1f},{y - q:.1f} {x + q:.1f},{y:.1f} {x:.1f},{y + q:.1f} {x - q:.1f},{y:.1f}"
        return f'<polygon points="{pts}" {paint}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" {paint}/>'


def swatch(style: Style) -> str:
    """A small legend sample of a series' line and marker."""
    dash = f' stroke-dasharray="{style.dash}"' if style.dash else ""
    mark = marker(style.marker, 15, 7, style.colour) if style.marker else ""
    return (
        '<svg class="swatch" width="30" height="14" '
        f'viewBox="0 0 30 14" aria-hidden="true"><line x1="1" y1="7" x2="29" y2="7" '
        f'stroke="{style.colour}" stroke-width="2"{dash}/>{mark}</svg>'
    )
