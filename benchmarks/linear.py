"""Fused linear cross-entropy at LLM scale: wall time and peak memory of whole processes, and
which planted bugs the check catches.

Usage: python benchmarks/linear.py [--runs N] [--skip-bugs]

Times ``xentcheck run benchmarks/specs/llm_linear.yaml --impl torch:examples/fused_linear_ce.py:
chunked_linear_ce --chunks 1,4,7`` on its float32 case (N = 2048, D = 512, V = 32000, a bias,
confident rows): the chunked float64 reference with its error budgets, the naive baseline, and
three calls of the kernel (forward and backward each), every call compared element-wise on dH,
dW and db. Reported: the median wall time of N complete processes and the largest peak RSS, and
the implementation's own peak (a process that builds the same arrays and runs the kernel's
forward and backward once, minus its RSS before), so "beyond the implementation's own" is
their difference. Then each planted bug of examples/fused_linear_ce.py runs once on the same
case (bfloat16 case too), and the failing quantities and diagnoses are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import command, timed

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "benchmarks" / "specs" / "llm_linear.yaml"
KERNEL = ROOT / "examples" / "fused_linear_ce.py"
JSON = ("--format", "json", "--quiet")

OWN_MEMORY = """
import resource, sys, numpy as np, torch
sys.path.insert(0, {examples!r})
from fused_linear_ce import chunked_linear_ce
from gradcheck_cli.api import load
spec = [s for s in load({specs!r}) if s.name == "llm-linear-float32"][0]
h = torch.tensor(spec.layer.inputs.astype(np.float32), requires_grad=True)
w = torch.tensor(spec.layer.weights.T.astype(np.float32), requires_grad=True)
b = torch.tensor(spec.layer.bias.astype(np.float32), requires_grad=True)
y = torch.tensor(spec.labels)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for chunks in (1, 4, 7):
    loss = chunked_linear_ce(h, w, b, labels=y, chunks=chunks)
    torch.autograd.grad(loss * 1.36, [h, w, b])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _json(args: list[str]) -> list[dict]:
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    if out.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} exited {out.returncode}: {out.stderr}")
    return json.loads(out.stdout)["results"]  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-bugs", action="store_true")
    opts = parser.parse_args()
    script = OWN_MEMORY.format(examples=str(KERNEL.parent), specs=str(SPECS))
    own = float(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    target = f"torch:{KERNEL}:chunked_linear_ce"
    run = [*command(), "run", str(SPECS), "--impl", target, "--chunks", "1,4,7"]
    seconds, peak = timed([*run, *JSON], opts.runs)
    results = _json([*run, *JSON])
    print("N = 2048, D = 512, V = 32000 (float32 and bfloat16 cases in one process)")
    print(
        f"  --impl chunked_linear_ce --chunks 1,4,7: median wall {seconds:.1f} s over {opts.runs}"
    )
    print(f"  peak RSS {peak:.0f} MB; the kernel's own (3 calls, float32 case) {own:.0f} MB;")
    print(f"  beyond the implementation's own: {peak - own:.0f} MB (budget 2048 MB)")
    for r in results:
        print(f"  {r['name']}: {r['status']}")
    if opts.skip_bugs:
        return
    none = Path(tempfile.mkdtemp()) / "none.yaml"
    none.write_text(
        "name: llm-linear-float32-none\n"
        "linear: {seed: 2048, rows: 2048, hidden_size: 512, vocab_size: 32000, margin: 12}\n"
        "dtype: float32\nreduction: none\n"
    )
    for bug, spec, extra in (
        ("bug_no_bias", SPECS, []),
        ("bug_bf16_dw", SPECS, []),
        ("bug_drop_last", SPECS, ["--chunks", "7"]),
        ("bug_grad_output0", none, []),
    ):
        target = f"torch:{KERNEL}:{bug}"
        found = _json([*command(), "run", str(spec), "--impl", target, *extra, *JSON])
        for r in found:
            failed = [c for c in r.get("comparisons", []) if not c["passed"]]
            names = sorted({c["quantity"] for c in failed})
            why = next((c.get("diagnosis") for c in failed if c.get("diagnosis")), None)
            print(f"  {bug} on {r['name']}: {r['status']}, failed {names}; {why}")


if __name__ == "__main__":
    main()
