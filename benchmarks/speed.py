"""xentcheck against its peers and against this machine's limits, in one run.

Usage: python benchmarks/speed.py [--runs N] [--big] [--full-8x50000] [--workdir DIR]

Every figure is a whole process (interpreter start-up, imports, reading the .npy files, the
check, the report) under GNU time: wall seconds, CPU seconds (user + system) and peak resident
memory. Sizes, the same batch for every tool (normal logits times 3, seeded labels):

* element-wise (the default methods, every element or, above the budget, a sample of classes):
  1 x 3, 32 x 1000, 256 x 1000, 32 x 10000, 8 x 50000 (``--full-8x50000`` adds 8 x 50000 with
  ``--full``: minutes);
* fast mode, float32: 4096 x 32000 (and with ``--big`` 8192 x 128000, 4.2 GB memory-mapped).

Peers, when importable, on the same batch in processes of their own, each paired run by run
with xentcheck (the median of the per-pair ratios is printed):

* ``torch.autograd.gradcheck`` of ``F.cross_entropy`` with one thread (default: every element
  by central differences) on the element-wise sizes where it finishes in minutes, and with
  ``fast_mode=True`` on every size;
* ``jax.test_util.check_grads`` (order 1, reverse mode) of optax's cross-entropy.

The machine's limits are measured in the same run: NumPy's exp in float64 and float32 (ns per
element, one thread) and read and copy bandwidth. The bound of a check counts only its
exponentials, spread over every core: element-wise 2 N K m float64 exps for central
differences at m classes (m = K without sampling), fast mode one float64 and six float32 exps
per element; xentcheck's wall time over it is printed.
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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1

TORCH = """
import numpy as np, torch
torch.set_num_threads(1)
z = torch.tensor(np.load({z!r}), dtype=torch.float64, requires_grad=True)
y = torch.tensor(np.load({y!r}))
print(torch.autograd.gradcheck(lambda t: torch.nn.functional.cross_entropy(t, y), (z,),
                               fast_mode={fast}))
"""

JAX = """
import numpy as np, jax, optax
jax.config.update("jax_enable_x64", True)
from jax.test_util import check_grads
z = np.load({z!r}).astype(np.float64)
y = np.load({y!r})
f = lambda t: optax.softmax_cross_entropy_with_integer_labels(t, y).mean()
check_grads(f, (z,), order=1, modes=["rev"])
print(True)
"""


@dataclass
class Timing:
    wall: float
    cpu: float
    peak_mb: float


def run(args: list[str]) -> Timing:
    """One process under GNU time (``%e %U %S %M``)."""
    timer = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        started = time.perf_counter()
        proc = subprocess.run(
            [timer, "-f", "%e %U %S %M", "-o", out.name, *args], capture_output=True, check=False
        )
        wall = time.perf_counter() - started
        out.seek(0)
        fields = out.read().strip().splitlines()[-1].split()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
    return Timing(wall, float(fields[1]) + float(fields[2]), int(fields[3]) / 1024)


def machine() -> dict[str, float]:
    """ns per exp (float64, float32, one thread) and read / copy bandwidth in GB/s."""
    a = np.random.default_rng(0).normal(size=1 << 22)
    out = np.empty_like(a)
    a32, out32 = a.astype(np.float32), np.empty(a.size, np.float32)

    def best(fn, size: int, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) / size

    big = np.ones(1 << 26)  # 512 MiB
    dest = np.empty_like(big)
    return {
        "exp64_ns": best(lambda: np.exp(a, out=out), a.size) * 1e9,
        "exp32_ns": best(lambda: np.exp(a32, out=out32), a.size) * 1e9,
        "read_gbs": 8 / best(lambda: np.sum(big), big.size, 3) / 1e9,
        "copy_gbs": 16 / best(lambda: np.copyto(dest, big), big.size, 3) / 1e9,
    }


def command() -> list[str]:
    exe = Path(sys.executable).parent / "xentcheck"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gradcheck_cli"]


@dataclass
class Case:
    name: str
    n: int
    k: int
    dtype: str
    extra: tuple[str, ...] = ()
    torch_full: bool = False  # torch's element-wise gradcheck finishes here

    @property
    def fast(self) -> bool:
        return self.dtype == "float32"


def cases(big: bool, full_8x50000: bool) -> list[Case]:
    out = [
        Case("1 x 3", 1, 3, "float64", torch_full=True),
        Case("32 x 1000", 32, 1000, "float64", torch_full=True),
        Case("256 x 1000", 256, 1000, "float64"),
        Case("32 x 10000", 32, 10000, "float64"),
        Case("8 x 50000", 8, 50000, "float64"),
    ]
    if full_8x50000:
        out.append(Case("8 x 50000 --full", 8, 50000, "float64", ("--full",)))
    out.append(Case("4096 x 32000 float32 fast", 4096, 32000, "float32"))
    if big:
        big_case = Case("8192 x 128000 float32 fast", 8192, 128000, "float32")
        out.append(replace(big_case, extra=("--max-array-mb", "5000")))  # 4.2 GB of logits
    return out


def write(work: Path, case: Case) -> tuple[Path, Path, Path]:
    tag = f"{case.n}x{case.k}{case.dtype}"
    z, y, spec = work / f"z{tag}.npy", work / f"y{tag}.npy", work / f"s{tag}.yaml"
    if not z.exists():
        rng = np.random.default_rng(case.n * 7 + case.k)
        mm = np.lib.format.open_memmap(z, mode="w+", dtype=case.dtype, shape=(case.n, case.k))
        for start in range(0, case.n, 256):  # in row chunks: the big case is 4.2 GB
            stop = min(case.n, start + 256)
            mm[start:stop] = rng.standard_normal((stop - start, case.k), dtype=np.float32) * 3
        mm.flush()
        del mm
        np.save(y, rng.integers(0, case.k, case.n))
    spec.write_text(
        f"logits: {{file: {z.name}}}\nlabel: {{file: {y.name}}}\n"
        + (f"dtype: {case.dtype}\n" if case.dtype != "float64" else "")
    )
    return spec, z, y


def bound(case: Case, limits: dict[str, float], sampled: int | None) -> float:
    """Seconds the check's exponentials take at least, over every core."""
    if case.fast:
        ns = limits["exp64_ns"] + 6 * limits["exp32_ns"]
        return case.n * case.k * ns * 1e-9 / CORES
    m = case.k if sampled is None else sampled
    return 2 * case.n * case.k * m * limits["exp64_ns"] * 1e-9 / CORES


def sampled_classes(xc: list[str], spec: Path, extra: tuple[str, ...]) -> int | None:
    proc = subprocess.run([*xc, "run", str(spec), *extra], capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if "sampled at" in line:
            return int(line.split("sampled at ")[1].split()[0])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="add 8192 x 128000 float32")
    parser.add_argument("--full-8x50000", action="store_true", help="add 8 x 50000 --full")
    parser.add_argument("--workdir", type=Path, default=None)
    opts = parser.parse_args()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="xentcheck-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    xc = command()
    limits = machine()
    print(
        f"cores {CORES}; exp {limits['exp64_ns']:.2f} ns (float64), {limits['exp32_ns']:.2f} ns "
        f"(float32) per element on one thread; read {limits['read_gbs']:.1f} GB/s, copy "
        f"{limits['copy_gbs']:.1f} GB/s (bytes read + written); runs per figure: {opts.runs} "
        "(medians)"
    )
    have_torch = _importable("torch")
    have_jax = _importable("jax") and _importable("optax")
    header = (
        f"{'case':28} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'bound s':>8} {'/bound':>7}"
        f"  peers (peer / xentcheck, paired)"
    )
    print(header)
    for case in cases(opts.big, opts.full_8x50000):
        spec, z, y = write(work, case)
        args = [*xc, "run", str(spec), "--quiet", *case.extra]
        sampled = None if case.fast else sampled_classes(xc, spec, case.extra)
        peers: dict[str, list[str]] = {}
        if have_torch and (case.torch_full or case.fast):
            if case.torch_full:
                peers["torch gradcheck"] = _python(TORCH.format(z=str(z), y=str(y), fast=False))
            peers["torch fast_mode"] = _python(TORCH.format(z=str(z), y=str(y), fast=True))
        if have_jax and not case.fast:
            peers["jax check_grads"] = _python(JAX.format(z=str(z), y=str(y)))
        ours: list[Timing] = []
        ratios: dict[str, list[float]] = {p: [] for p in peers}
        failed: dict[str, str] = {}
        runs = 1 if "--full" in case.extra or case.n * case.k > 1e8 else opts.runs
        for _ in range(runs):
            mine = run(args)
            ours.append(mine)
            for name, peer in list(peers.items()):
                try:
                    ratios[name].append(run(peer).wall / mine.wall)
                except SystemExit as exc:  # a peer that cannot do this size (out of memory)
                    failed[name] = str(exc).rsplit(" exited ", 1)[-1].split(":")[0]
                    del peers[name]
        wall = statistics.median(t.wall for t in ours)
        cpu = statistics.median(t.cpu for t in ours)
        peak = max(t.peak_mb for t in ours)
        low = bound(case, limits, sampled)
        label = case.name + (f" (sampled {sampled})" if sampled else "")
        peer_text = ", ".join(
            f"{p} exited {failed[p]}" if p in failed else f"{p} {statistics.median(r):.2f}x"
            for p, r in ratios.items()
        )
        over = f"{wall / low:7.1f}" if low >= 1e-3 else f"{'-':>7}"  # start-up only
        print(
            f"{label:28} {wall:7.2f} {cpu:7.2f} {peak:8.0f} {low:8.3f} {over}  {peer_text}",
            flush=True,
        )
        if case.fast:
            logits_mb = case.n * case.k * 4 / 2**20
            print(f"{'':28} peak / (1.5 x logits + 300 MB) = {peak / (1.5 * logits_mb + 300):.2f}")


def _python(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()
