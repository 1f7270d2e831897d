"""``--impl torch`` at LLM scale: wall time and peak memory of a whole fast-mode process.

Usage: python benchmarks/impl_scale.py [--runs N] [--workdir DIR]

Writes 4096 x 32000 float32 logits (standard normal times 3) and labels as .npy, then times
``xentcheck run big.yaml --impl torch`` (PyTorch's F.cross_entropy behind the framework-native
protocol: one forward and backward on the whole batch, the side-effect and determinism call, the
streamed comparison with the float64 reference and the self-consistency check's eight forward
passes) as the median of N complete processes, with the largest peak RSS.

The issue's memory budget is 3 x logits + the implementation's own memory + 300 MB. The
implementation's own memory is measured here too: the peak RSS of a process that loads the same
logits, imports xentcheck and torch, and runs one F.cross_entropy forward and backward, minus
that process's RSS before the call.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import command, timed

N, K = 4096, 32000

#: The implementation's own memory, two ways: one forward and backward of F.cross_entropy as
#: xentcheck's adapter runs it (fresh tensors, grad_output 1.36: the budget's figure), and the
#: same written by hand in a bare script (for comparison; glibc makes both vary by ~300 MB).
OWN_MEMORY = """
import resource, numpy as np, torch
from gradcheck_cli.torch_native import TorchNative
from gradcheck_cli.torch_adapter import torch_loss
z = np.load({logits!r}); y = np.load({labels!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if {adapter}:
    TorchNative(torch_loss)(z, grad_output=np.asarray(1.36), labels=y, reduction="mean")
else:
    t = torch.tensor(z, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(t, torch.tensor(y))
    (g,) = torch.autograd.grad(loss * 1.36, t)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = opts.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        np.save(work / "big.npy", rng.standard_normal((N, K), dtype=np.float32) * 3)
        np.save(work / "bigy.npy", rng.integers(0, K, N))
        spec = work / "big.yaml"
        spec.write_text("logits: {file: big.npy}\nlabel: {file: bigy.npy}\n")
        logits_mb = N * K * 4 / 2**20

        def own(adapter: bool) -> float:
            script = OWN_MEMORY.format(
                logits=str(work / "big.npy"), labels=str(work / "bigy.npy"), adapter=adapter
            )
            return statistics.median(
                float(
                    subprocess.run(
                        [sys.executable, "-c", script], capture_output=True, text=True, check=True
                    ).stdout.strip()
                )
                for _ in range(opts.runs)
            )

        own_mb, bare_mb = own(True), own(False)
        seconds, peak = timed([*command(), "run", str(spec), "--impl", "torch"], opts.runs)
        budget = 3 * logits_mb + own_mb + 300
        print(f"{N} x {K} float32, --impl torch (F.cross_entropy), fast mode")
        print(f"  median wall time over {opts.runs} runs: {seconds:.2f} s (target <= 15 s)")
        print(f"  peak RSS: {peak:.0f} MB")
        print(
            f"  budget: 3 x logits ({3 * logits_mb:.0f} MB) + the implementation's own memory "
            f"({own_mb:.0f} MB through xentcheck's adapter; {bare_mb:.0f} MB in a bare script) "
            f"+ 300 MB = {budget:.0f} MB -> " + ("within" if peak <= budget else "OVER")
        )


if __name__ == "__main__":
    main()
