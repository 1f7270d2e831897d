"""Low precision the way kernels run: worst gradient error in ulps of the dtype, per dtype and
regime, for the naive same-dtype baseline, PyTorch's CPU F.cross_entropy, an accurate kernel
(float32 inside, one rounding) and the Liger-Kernel #1268 bug; and the time of the bfloat16
check of 4096 x 32000 logits.

Usage: python benchmarks/lowp.py [--rows N] [--classes K] [--skip-big]

Each cell is ``ulps_worst`` of the implementation's gradient row (``tolerance_models``), with
P/F for pass/fail under the dtype's default model (rounded for float16/bfloat16, fixed for
float32). Regimes: ``random`` (standard normal logits, p_y about 1/K), ``confident p`` (the
label's logit set so that p_y = p exactly in float64), ``gap x10`` (standard normal times 10).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "tests" / "data" / "impl" / "lowp_kernels.py"


def logits_for(
    regime: str, n: int, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(size=(n, k))
    y = rng.integers(0, k, n)
    if regime.startswith("confident"):
        p = float(regime.split()[1])
        rows = np.arange(n)
        others = z.copy()
        others[rows, y] = -np.inf
        top = np.max(others, axis=1)
        lse = top + np.log(np.sum(np.exp(others - top[:, None]), axis=1))
        z[rows, y] = np.log(p / (1 - p)) + lse
    elif regime == "gap x10":
        z *= 10
    return z, y


def main() -> None:
    from gradcheck_cli.engine import RunOptions, run_spec
    from gradcheck_cli.impl import load
    from gradcheck_cli.model import Spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--skip-big", action="store_true")
    opts = parser.parse_args()
    try:
        import torch  # noqa: F401

        targets = {"PyTorch CPU": "torch"}
    except ImportError:
        targets = {}
    targets |= {"accurate": f"{KERNELS}:accurate", "Liger #1268": f"{KERNELS}:liger_1268"}
    regimes = ["random", "confident 0.99", "confident 0.999", "confident 0.9999", "gap x10"]
    print(f"worst gradient error in ulps ({opts.rows} x {opts.classes}, mean); P/F: default model")
    print(f"{'dtype':9} {'regime':17} {'naive':>9} " + " ".join(f"{t:>14}" for t in targets))
    for dtype in ("float32", "float16", "bfloat16"):
        for regime in regimes:
            z, y = logits_for(regime, opts.rows, opts.classes, np.random.default_rng(0))
            spec = Spec(name=regime, file="-", logits=z, single=False, labels=y, dtype=dtype)  # type: ignore[arg-type]
            cells, naive = [], None
            for target in targets.values():
                r = run_spec(spec, RunOptions(impl=load(target), methods=("analytic",)))
                (row,) = [
                    c
                    for c in r.comparisons
                    if c.method.startswith("impl") and c.quantity == "logits"
                ]
                p = row.precision
                assert p is not None
                naive = p.baseline_ulps
                cells.append(
                    f"{p.ulps_worst:11.3g} {'P' if row.passed else 'F'}{'!' if row.loose else ' '}"
                )
            base = "-" if naive is None else f"{naive:.3g}"
            print(f"{dtype:9} {regime:17} {base:>9} " + " ".join(f"{c:>14}" for c in cells))
    print("(! : the allowance would also accept a planted wrong answer: 'loose')")
    if opts.skip_big or "PyTorch CPU" not in targets:
        return
    import ml_dtypes

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        np.save(
            work / "z.npy",
            (rng.standard_normal((4096, 32000), dtype=np.float32) * 3).astype(ml_dtypes.bfloat16),
        )
        np.save(work / "y.npy", rng.integers(0, 32000, 4096))
        (work / "s.yaml").write_text("logits: {file: z.npy}\nlabel: {file: y.npy}\n")
        exe = Path(sys.executable).parent / "xentcheck"
        for extra in ([], ["--impl", "torch"]):
            start = time.perf_counter()
            out = subprocess.run(
                [str(exe), "run", str(work / "s.yaml"), *extra],
                capture_output=True,
                text=True,
                check=False,
            )
            took = time.perf_counter() - start
            what = " ".join(extra) or "(own methods)"
            print(f"4096 x 32000 bfloat16 fast mode {what}: {took:.1f} s, exit {out.returncode}")


if __name__ == "__main__":
    main()
