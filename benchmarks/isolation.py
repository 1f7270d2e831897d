"""What ``--isolate`` costs: whole ``xentcheck run --impl`` processes with and without it.

Usage: python benchmarks/isolation.py [--runs N] [--workdir DIR]

The implementation is the plain NumPy softmax cross-entropy of tests/data/impl/impls.py:correct
(so the figures are xentcheck's and the isolation's, not a framework's start-up), and where
torch is installed also ``--impl torch`` (F.cross_entropy; isolated, torch is imported by the
worker instead of the parent). Cases:

* 32 x 1000 float64, element-wise (a small check: the worker's start-up dominates);
* 4096 x 32000 float32, fast mode, logits in a float32 .npy (the worker maps the same file);
* the same logits from a float64 .npy cast to float32 (the cast copy is not file-backed: it
  crosses to the worker through a file in /dev/shm).

Each run pairs one isolated and one in-process run back to back; the table gives the medians,
the median of the paired ratios, and the overhead in seconds. Peak RSS is GNU time's, the
largest of the processes (the parent, or the worker when isolated), not their sum.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import Case, command, run, write

IMPL = Path(__file__).resolve().parents[1] / "tests" / "data" / "impl" / "impls.py"


def cast_copy(work: Path) -> Path:
    """A float32 spec whose logits come from a float64 file (so they are cast in memory)."""
    _, z, y = write(work, Case("4096 x 32000", 4096, 32000, "float32"))
    wide = work / "z4096x32000-as-float64.npy"
    if not wide.exists():
        np.save(wide, np.load(z).astype(np.float64))
    out = work / "s4096x32000-cast.yaml"
    out.write_text(f"logits: {{file: {wide.name}}}\nlabel: {{file: {y.name}}}\ndtype: float32\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    opts = parser.parse_args()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="xentcheck-isolation-"))
    work.mkdir(parents=True, exist_ok=True)
    numpy_impl = f"{IMPL}:correct"
    small = write(work, Case("", 32, 1000, "float64"))[0]
    large = write(work, Case("", 4096, 32000, "float32"))[0]
    cases = {
        "32 x 1000 float64 element-wise": (small, numpy_impl),
        "4096 x 32000 float32 fast (.npy)": (large, numpy_impl),
        "4096 x 32000 float32 fast (cast)": (cast_copy(work), numpy_impl),
    }
    if importlib.util.find_spec("torch") is not None:
        cases["32 x 1000 float64, --impl torch"] = (small, "torch")
        cases["4096 x 32000 float32, --impl torch"] = (large, "torch")
    xc = command()
    print(f"runs per figure: {opts.runs} (medians; ratios paired run by run)")
    print(
        f"{'case':36} {'in-process s':>12} {'isolated s':>10} {'ratio':>6} {'overhead s':>10} "
        f"{'peak MB in/iso':>15}"
    )
    for name, (spec, impl) in cases.items():
        base = [*xc, "run", str(spec), "--quiet", "--impl", impl, "--max-array-mb", "2000"]
        inside, isolated, ratios = [], [], []
        for _ in range(opts.runs):
            a = run([*base, "--no-isolate"])
            b = run([*base, "--isolate"])
            inside.append(a)
            isolated.append(b)
            ratios.append(b.wall / a.wall)
        t_in = statistics.median(t.wall for t in inside)
        t_iso = statistics.median(t.wall for t in isolated)
        peak_in = max(t.peak_mb for t in inside)
        peak_iso = max(t.peak_mb for t in isolated)
        print(
            f"{name:36} {t_in:12.2f} {t_iso:10.2f} {statistics.median(ratios):6.3f} "
            f"{t_iso - t_in:10.2f} {peak_in:7.0f}/{peak_iso:<7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
