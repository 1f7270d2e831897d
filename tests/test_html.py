"""The HTML report: structure, escaping, self-containment, heat maps, the sweep chart, and a
real headless browser (skipped where Chromium is absent)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import gradcheck_cli as xc
from gradcheck_cli.cli import app
from gradcheck_cli.report import html as html_report
from gradcheck_cli.report.table import err

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
IMPLS = ROOT / "tests" / "data" / "impl" / "impls.py"
runner = CliRunner()

VOID = {"meta", "br", "wbr", "hr", "img", "input", "link", "col", "area", "base", "source"}


class Page(HTMLParser):
    """A strict reading of a report: tags must balance; collects the text of each element
    with a class or id, the attributes of every element, and the document's text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.doctype = ""
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all_text(self) -> str:
        return "".join(self.text)


def sections(text: str) -> dict[str, str]:
    """Each spec's section of a run report, by spec name (the name is unescaped)."""
    out = {}
    for m in re.finditer(r'<section class="spec [a-z]+" id="spec-\d+">(.*?)</section>', text, re.S):
        name = re.search(r"<h2>.*?<span>(.*?)</span></h2>", m.group(1), re.S)
        assert name is not None
        out[html.unescape(name.group(1))] = m.group(1)
    return out


def cell_texts(section: str) -> list[list[str]]:
    """The rows of every table in ``section``, each cell as plain text."""
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", section, re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        rows.append([Page(c).all_text() for c in cells])
    return rows


def run_html(tmp_path: Path, *args: str) -> tuple[int, str]:
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["run", *args, "--format", "html", "--output", str(out)])
    assert result.exit_code in (0, 1), result.output
    assert result.stdout == ""  # the report went to the file
    return result.exit_code, out.read_text(encoding="utf-8")


def test_run_report_holds_the_tables_the_terminal_shows(tmp_path: Path) -> None:
    code, text = run_html(
        tmp_path, str(SPECS / "cat_dog_bird.yaml"), str(SPECS / "batch_mean.yaml")
    )
    assert code == 0
    page = Page(text)
    assert page.doctype.lower() == "doctype html"
    assert "2 passed, 0 failed, 0 errors" in page.all_text()
    found = sections(text)
    assert set(found) == {"cat-dog-bird", "batch-mean"}
    worked = xc.check(SPECS / "cat_dog_bird.yaml").results[0]
    rows = cell_texts(found["cat-dog-bird"])
    # the class table: one row per class with logit, p, target and each method's gradient
    dog = next(r for r in rows if r[0] == "dog")
    assert dog[:5] == ["dog", "2", "0.62853172", "1", "-0.37146828"]
    # the comparison table: one row per comparison with its numbers and verdict
    for c in worked.comparisons:
        row = next(r for r in rows if r[0] == c.method)
        assert err(c.max_abs_error) in row and f"{c.rtol:g}/{c.atol:g}" in row
        assert row[-1] == "pass"
    assert "loss 0.46436878" in Page(found["cat-dog-bird"]).all_text()
    # checks, with their detail, and the expectation checks of the spec
    assert any(r[:2] == ["probs_sum_to_one", "pass"] for r in rows)
    assert any(r[0] == "expect.loss" for r in rows)
    # a heat map for the batch, none for the single sample
    assert found["cat-dog-bird"].count('<svg class="heat"') == 0
    assert found["batch-mean"].count('<svg class="heat"') == 1
    # the overview links each spec to its section
    assert '<a href="#spec-1">cat-dog-bird</a>' in text and 'id="spec-2"' in text


def test_report_is_self_contained(tmp_path: Path) -> None:
    _, text = run_html(tmp_path, str(SPECS))
    page = Page(text)
    tags = {tag for tag, _ in page.elements}
    assert not tags & {"script", "img", "link", "iframe", "object", "embed"}
    for _, attrs in page.elements:
        assert "src" not in attrs
        assert attrs.get("href") is None or str(attrs["href"]).startswith("#")
        assert not any(k.startswith("on") for k in attrs)  # no event handlers
    assert "url(" not in text and "@import" not in text
    assert "http:" not in text and "https:" not in text
    assert '<meta charset="utf-8">' in text


def test_every_text_is_escaped(tmp_path: Path) -> None:
    spec = tmp_path / "evil <b>.yaml"
    spec.write_text(
        'name: "<script>alert(1)</script> & co"\n'
        'classes: ["<i>cat</i>", "dog"]\n'
        "logits: [[1, 2], [0, 3]]\nlabel: [0, 1]\n"
    )
    _, text = run_html(tmp_path, str(spec))
    assert "<script" not in text and "<i>cat" not in text and "evil <b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
    assert "evil &lt;b&gt;.yaml" in text
    page = Page(text)
    assert "<script>alert(1)</script> & co" in page.all_text()


def test_a_failing_implementation_shows_fail_its_diagnosis_and_where(tmp_path: Path) -> None:
    code, text = run_html(
        tmp_path, str(SPECS / "batch_mean.yaml"), "--impl", f"{IMPLS}:one_column_off"
    )
    assert code == 1
    (section,) = sections(text).values()
    assert '<span class="badge fail">FAIL</span>' in section
    rows = cell_texts(section)
    impl_row = next(r for r in rows if r[0] == "logits" and r[1].startswith("impl"))
    assert impl_row[-1] == "FAIL (4 elements)"
    diagnosis = re.search(r'<li class="diagnosis">(.*?)</li>', section, re.S)
    assert diagnosis is not None
    assert "only column 2 (ship) is off, in 4 rows" in Page(diagnosis.group(1)).all_text()
    # one heat map, for the failed gradient; its hottest cells are the worst element's column
    result = xc.check(SPECS / "batch_mean.yaml", impl=f"{IMPLS}:one_column_off").results[0]
    (failed,) = [c for c in result.comparisons if c.quantity == "logits" and not c.passed]
    assert failed.heat is not None and failed.worst_index[1] == 2
    (figure,) = re.findall(r'<figure class="heatmap".*?</figure>', section, re.S)
    hot = hottest_cells(figure)
    assert failed.heat.cell(failed.worst_index) in hot
    assert {col for _, col in hot} == {2}
    assert f'data-cell="{failed.worst_index[0]},2"' in figure  # the outline


def hottest_cells(figure: str) -> set[tuple[int, int]]:
    """The (row, column) cells of a heat map's highest colour level."""
    levels = {}
    for level, d in re.findall(
        r'<path data-level="(-?\d+|exact|invalid)" fill="[^"]+" d="([^"]+)"', figure
    ):
        cells = set()
        for x, y, w in re.findall(r"M(\d+) (\d+)h(\d+)", d):
            cells |= {(int(y), int(x) + j) for j in range(int(w))}
        levels["inf" if level == "invalid" else level] = cells
    numeric = [k for k in levels if k not in ("exact", "inf")]
    top = "inf" if "inf" in levels else max(numeric, key=int)
    return levels[top]


def test_heat_map_of_a_large_batch_is_aggregated_and_bounded(tmp_path: Path) -> None:
    """256 x 1000 with a planted error: 64 x 63 cells of 4 x 16 elements, the worst element's
    cell the hottest, the report a few tens of kilobytes."""
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=(256, 1000))
    labels = rng.integers(0, 1000, size=256)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", labels)
    (tmp_path / "big.yaml").write_text("name: big\nlogits: {file: z.npy}\nlabel: {file: y.npy}\n")
    (tmp_path / "kernel.py").write_text(
        "import numpy as np\n"
        "def ce(logits, *, labels, reduction, loss='softmax_cross_entropy'):\n"
        "    m = logits.max(axis=1, keepdims=True)\n"
        "    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))\n"
        "    n = len(labels)\n"
        "    g = np.exp(logp)\n"
        "    g[np.arange(n), labels] -= 1.0\n"
        "    g[201, 733] *= 1 + 1e-6\n"
        "    return -logp[np.arange(n), labels].mean(), g / n\n"
    )
    report = xc.check(
        tmp_path / "big.yaml", impl=f"{tmp_path / 'kernel.py'}:ce", methods=["analytic"]
    )
    (r,) = report.results
    (failed,) = [c for c in r.comparisons if not c.passed]
    assert failed.worst_index == (201, 733)
    assert failed.heat is not None and failed.heat.ratio.shape == (64, 63)
    assert failed.heat.block == (4, 16)
    text = html_report.render(report.results)
    Page(text)
    assert len(text.encode()) < 150_000
    (figure,) = re.findall(r'<figure class="heatmap".*?</figure>', text, re.S)
    assert hottest_cells(figure) == {(50, 45)}
    assert "256 × 1000 elements in 64 × 63 cells of up to 4 × 16 elements" in figure


def test_non_finite_numbers_read_as_text(tmp_path: Path) -> None:
    _, text = run_html(
        tmp_path, str(SPECS / "all_ignored.yaml"), str(SPECS / "minus_inf_logits.yaml")
    )
    found = sections(text)
    assert "loss nan" in Page(found["all-ignored-mean-is-nan"]).all_text()
    assert "loss inf" in Page(found["masked-target-is-infinite"]).all_text()


def test_invalid_and_skipped_specs_say_why(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("logits: [1, 2]\nlabel: 7\n")
    out = tmp_path / "report.html"
    args = ["run", str(bad), str(SPECS / "huge_logits.yaml"), "--dtype", "float16"]
    result = runner.invoke(app, [*args, "-f", "html", "-o", str(out)])
    assert result.exit_code == 2, result.output
    text = out.read_text(encoding="utf-8")
    Page(text)
    found = sections(text)
    assert (
        '<section class="spec error"' in text and '<span class="badge error">ERROR</span>' in text
    )
    message = re.search(r'<pre class="message">(.*?)</pre>', found["bad"], re.S)
    assert message is not None
    assert html.unescape(message.group(1)) == (
        f"{bad}:2:8: label: class index 7 out of range: expected 0 to 1"
    )
    assert "skipped: cannot run in float16: logit 1e+300" in found["huge-logits"]
    assert "0 passed, 0 failed, 1 error, 1 skipped" in text


def test_html_without_output_goes_to_stdout() -> None:
    result = runner.invoke(app, ["run", str(SPECS / "three_class.yaml"), "-f", "html", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<!DOCTYPE html>") and result.stdout.endswith("</html>\n")


def test_every_bundled_spec_renders_as_balanced_html() -> None:
    results = xc.check(SPECS).results
    text = html_report.render(results)
    Page(text)
    assert len(sections(text)) == len(results)
    assert text.count('<svg class="heat"') == sum(
        1 for r in results if html_report.heat_comparisons(r)
    )


def test_sweep_chart(tmp_path: Path) -> None:
    out = tmp_path / "sweep.html"
    result = runner.invoke(
        app, ["sweep", str(SPECS / "batch_mean.yaml"), "--format", "html", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    Page(text)
    chart = re.search(r'<svg class="chart".*?</svg>', text, re.S)
    assert chart is not None
    series = re.findall(r'<g class="series" data-name="([^"]+)">', chart.group(0))
    assert series == ["forward", "central", "richardson", "complex_step"]
    assert chart.group(0).count('class="best"') == 4  # each method's best step ringed
    # decade ticks on both axes: 10^-16 ... 10^-1 along the steps
    assert chart.group(0).count('text-anchor="middle">10<tspan') >= 16
    assert "central: best step h = " in Page(text).all_text()
    assert "Taylor test" in text and "fitted slope" in text
    assert "http:" not in text and "<script" not in text


def test_sweep_chart_leaves_gaps_and_puts_zeros_on_the_axis() -> None:
    from gradcheck_cli.report import svg

    drawn = svg.log_log_chart(
        [svg.Series("m", [1e-3, 1e-2, 1e-1, 1.0], [1e-8, None, 0.0, 1e-2], best=1e-3)],
        x_label="h",
        y_label="e",
        title="t",
    )
    assert drawn.count("<polyline") == 2  # split at the gap
    assert 'fill="#fff"' in drawn  # the zero's hollow marker
    assert 'text-anchor="end">0</text>' in drawn  # the bottom axis reads 0


# ---------------------------------------------------------------------------------------------
# a real browser


def chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


BROWSER = chromium()
needs_chromium = pytest.mark.skipif(
    BROWSER is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); the HTML report's "
    "browser test needs it",
)

#: Measures the laid-out page: tables that do not fit their box (a scroll bar would hide
#: columns), pictures with no size, and overlapping texts inside any SVG.
LAYOUT_PROBE = """
<script>
const out = {overflow: [], empty: [], overlaps: [], svgs: 0, shapes: 0};
for (const w of document.querySelectorAll('.wrap')) {
  if (w.scrollWidth > w.clientWidth + 1) out.overflow.push(w.textContent.slice(0, 80));
}
for (const s of document.querySelectorAll('svg')) {
  out.svgs += 1;
  const b = s.getBoundingClientRect();
  if (b.width < 1 || b.height < 1) out.empty.push(s.getAttribute('class'));
  out.shapes += s.querySelectorAll('path, rect, polyline, circle').length;
  const boxes = [...s.querySelectorAll('text')]
    .map(t => [t.textContent, t.getBoundingClientRect()]);
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [ta, a] = boxes[i], [tb, c] = boxes[j];
    const dx = Math.min(a.right, c.right) - Math.max(a.left, c.left);
    const dy = Math.min(a.bottom, c.bottom) - Math.max(a.top, c.top);
    if (dx > 1 && dy > 1) out.overlaps.push(ta + ' / ' + tb);
  }
}
const pre = document.createElement('pre');
pre.id = 'layout';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>
"""


def browser(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None
    return subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the decompressed (still filtered) scanlines of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def failing_report(tmp_path: Path) -> Path:
    out = tmp_path / "report.html"
    _, text = run_html(
        tmp_path,
        str(SPECS / "cat_dog_bird.yaml"),
        str(SPECS / "batch_mean.yaml"),
        "--impl",
        f"{IMPLS}:one_column_off",
    )
    out.write_text(text, encoding="utf-8")
    return out


@needs_chromium
def test_chromium_lays_out_the_report_without_overflow_or_overlap(tmp_path: Path) -> None:
    """The failing report, every bundled spec's (narrow heat maps of 2 or 3 classes, layers,
    low precision) and the sweep's, each with a probe script appended to a copy."""
    sweep = tmp_path / "sweep.html"
    runner.invoke(app, ["sweep", str(SPECS / "batch_mean.yaml"), "-f", "html", "-o", str(sweep)])
    bundled = tmp_path / "bundled.html"
    bundled.write_text(html_report.render(xc.check(SPECS).results))
    pages = []
    for source in (failing_report(tmp_path), bundled, sweep):
        probe = tmp_path / f"probe_{source.name}"
        probe.write_text(source.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
        pages.append(probe)
    for page in pages:
        proc = browser(
            "--window-size=1280,2000", "--dump-dom", page.as_uri(), profile=tmp_path / "profile"
        )
        found = re.search(r'<pre id="layout">(.*?)</pre>', proc.stdout, re.S)
        assert found is not None, proc.stderr[-2000:]
        layout: dict[str, Any] = json.loads(html.unescape(found.group(1)))
        assert layout["svgs"] >= 1 and layout["shapes"] > 20, layout
        assert layout["empty"] == [], layout
        assert layout["overflow"] == [], layout
        assert layout["overlaps"] == [], layout


@needs_chromium
def test_chromium_screenshot_of_the_report(tmp_path: Path) -> None:
    report = failing_report(tmp_path)
    shot = tmp_path / "shot.png"
    proc = browser(
        f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri(), profile=tmp_path / "p"
    )
    assert shot.exists(), proc.stderr[-2000:]
    width, height, raw = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    assert len(raw) >= height * (1 + width * 3)  # every scanline, RGB or RGBA
    assert len(set(raw)) > 64  # not a blank page: text, tables and colours
    assert shot.stat().st_size > 20_000
