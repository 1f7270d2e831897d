"""The HTML report's size and render time.

Usage: python benchmarks/html_report.py [--runs N]

Checks each case once, then renders its results to HTML N times (``report.html.render``, the
median of the N), and prints the file size (and gzipped, as a CI artifact would be stored), the
number of heat maps and the time of the check itself for scale. Cases: every bundled spec; a
256 x 1000 batch (logits from .npy) whose planted implementation bug fails one element; the
same batch at rtol 1e-15 / atol 1e-18, so that every method fails and each gets a heat map of
rounding noise (few neighbouring cells alike: near the largest a map can be); the 256 x 1000
sweep page.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import gradcheck_cli as xc
from gradcheck_cli.engine import build_problem
from gradcheck_cli.report import html
from gradcheck_cli.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]

KERNEL = """
import numpy as np
def ce(logits, *, labels, reduction, loss="softmax_cross_entropy"):
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    n = len(labels)
    g = np.exp(logp)
    g[np.arange(n), labels] -= 1.0
    g[201, 733] *= 1 + 1e-6  # the planted bug
    return -logp[np.arange(n), labels].mean(), g / n
"""


def batch(workdir: Path) -> Path:
    """A 256 x 1000 spec with its logits and labels in .npy files."""
    rng = np.random.default_rng(0)
    np.save(workdir / "z.npy", rng.normal(scale=3.0, size=(256, 1000)))
    np.save(workdir / "y.npy", rng.integers(0, 1000, size=256))
    spec = workdir / "batch.yaml"
    spec.write_text("name: batch-256x1000\nlogits: {file: z.npy}\nlabel: {file: y.npy}\n")
    (workdir / "kernel.py").write_text(KERNEL)
    return spec


def measure(name: str, check: Callable[[], Any], render: Callable[[Any], str], runs: int) -> None:
    """Check once, render ``runs`` times; ``{n}`` in ``name`` becomes the number of results."""
    start = time.perf_counter()
    results = check()
    name = name.format(n=len(results) if isinstance(results, tuple) else 1)
    checked = time.perf_counter() - start
    times, text = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        text = render(results)
        times.append(time.perf_counter() - start)
    data = text.encode()
    maps = text.count('<svg class="heat"')
    print(
        f"{name:<46} {maps:>5} {checked:>8.2f} {statistics.median(times) * 1e3:>10.1f} "
        f"{len(data) / 1024:>9.1f} {len(gzip.compress(data)) / 1024:>8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = batch(Path(tmp))
        kernel = f"{Path(tmp) / 'kernel.py'}:ce"
        head = f"{'case':<46} {'maps':>5} {'check s':>8} {'render ms':>10} {'size KiB':>9}"
        print(f"{head} {'gzip KiB':>8}")
        run = html.render
        measure("bundled specs ({n})", lambda: xc.check(ROOT / "specs").results, run, args.runs)
        measure(
            "256 x 1000, --impl with one planted error",
            lambda: xc.check(spec, impl=kernel).results,
            run,
            args.runs,
        )
        measure(
            "256 x 1000, every method failing (rtol 1e-15)",
            lambda: xc.check(spec, impl=kernel, rtol=1e-15, atol=1e-18).results,
            run,
            args.runs,
        )
        (loaded,) = xc.load(spec)
        measure(
            "sweep of 256 x 1000",
            lambda: sweep(build_problem(loaded), loaded.name, loaded.file),
            html.render_sweep,
            args.runs,
        )


if __name__ == "__main__":
    main()
