"""Wall time and peak memory of whole xentcheck processes, and of torch.autograd.gradcheck.

Usage: python benchmarks/speed.py [--runs N] [--skip-big] [--workdir DIR]

Every figure is a complete process (interpreter start-up, imports, reading the spec and its
.npy files, the check, the report), timed as the median of N runs, with the peak resident memory
of the child (``getrusage``). Sizes: 1 x 3 (the worked example), 32 x 1000 and 256 x 1000 full
element-wise checks (analytic + jacobian + central differences, logits from .npy), a 32 x 1000
spec written inline in YAML (analytic only), and 4096 x 32000 float32 logits from .npy in fast
mode. When torch is importable, torch.autograd.gradcheck runs the same 32 x 1000 full check in a
process of its own (float64, its default fixed-step central differences), and the ratio is shown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

GRADCHECK = """
import numpy as np, torch
z = torch.tensor(np.load({path!r}), requires_grad=True)
y = torch.tensor(np.load({labels!r}))
ok = torch.autograd.gradcheck(lambda t: torch.nn.functional.cross_entropy(t, y), (z,))
print(ok)
"""


def command() -> list[str]:
    exe = Path(sys.executable).parent / "xentcheck"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("xentcheck")
    return [found] if found else [sys.executable, "-m", "gradcheck_cli"]


def timed(args: list[str], runs: int) -> tuple[float, float]:
    """Median wall seconds and the largest peak RSS (MB) over ``runs`` child processes.

    The peak is measured by GNU time (``/usr/bin/time -f %M``) around the command, so it is the
    command's own, not inflated by this script's memory at fork time.
    """
    times, peaks = [], []
    timer = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        for _ in range(runs):
            start = time.perf_counter()
            proc = subprocess.run(
                [timer, "-f", "%M", "-o", rss.name, *args], capture_output=True, check=False
            )
            times.append(time.perf_counter() - start)
            rss.seek(0)
            peaks.append(int(rss.read().strip().splitlines()[-1]))
            if proc.returncode not in (0, 1):
                raise SystemExit(
                    f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}"
                )
    return statistics.median(times), max(peaks) / 1024


def write_cases(work: Path, skip_big: bool) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    cases: dict[str, Path] = {
        "1 x 3 worked example (all methods)": ROOT / "specs" / "cat_dog_bird.yaml"
    }
    for n in (32, 256):
        np.save(work / f"z{n}.npy", rng.normal(size=(n, 1000)) * 3)
        np.save(work / f"y{n}.npy", rng.integers(0, 1000, n))
        spec = work / f"full{n}.yaml"
        spec.write_text(
            f"logits: {{file: z{n}.npy}}\nlabel: {{file: y{n}.npy}}\n"
            "methods: [analytic, jacobian, finite_difference]\n"
        )
        cases[f"{n} x 1000 full (analytic+jacobian+central)"] = spec
    z = np.load(work / "z32.npy")
    y = np.load(work / "y32.npy")
    inline = work / "inline32.yaml"
    with inline.open("w") as fh:
        fh.write("methods: [analytic]\nlabel: [" + ", ".join(map(str, y)) + "]\nlogits:\n")
        for row in z:
            fh.write("  - [" + ", ".join(repr(float(v)) for v in row) + "]\n")
    cases["32 x 1000 inline YAML (analytic)"] = inline
    if not skip_big:
        np.save(work / "big.npy", rng.standard_normal((4096, 32000), dtype=np.float32) * 3)
        np.save(work / "bigy.npy", rng.integers(0, 32000, 4096))
        big = work / "big.yaml"
        big.write_text("logits: {file: big.npy}\nlabel: {file: bigy.npy}\n")
        cases["4096 x 32000 float32 fast mode"] = big
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-big", action="store_true", help="leave out 4096 x 32000")
    parser.add_argument("--workdir", type=Path, default=None)
    opts = parser.parse_args()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="xentcheck-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    xc = command()
    print(f"command: {' '.join(xc)}   runs: {opts.runs}   cores: {os.cpu_count()}")
    print(f"{'case':48} {'median s':>9} {'peak MB':>8}")
    for name, args in {"xentcheck --help": [*xc, "--help"]}.items():
        t, m = timed(args, opts.runs)
        print(f"{name:48} {t:9.3f} {m:8.0f}")
    results = {}
    for name, spec in write_cases(work, opts.skip_big).items():
        runs = min(3, opts.runs) if "4096" in name else opts.runs
        t, m = timed([*xc, "run", str(spec), "--quiet"], runs)
        results[name] = t
        print(f"{name:48} {t:9.3f} {m:8.0f}")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not importable: no torch.autograd.gradcheck comparison")
        return
    script = GRADCHECK.format(path=str(work / "z32.npy"), labels=str(work / "y32.npy"))
    t, m = timed([sys.executable, "-c", script], 1)
    ours = results["32 x 1000 full (analytic+jacobian+central)"]
    print(f"{'torch.autograd.gradcheck, 32 x 1000 (process)':48} {t:9.3f} {m:8.0f}")
    print(f"ratio gradcheck / xentcheck on 32 x 1000: {t / ours:.1f}x")


if __name__ == "__main__":
    main()
