"""Wall time of ``--tensor-parallel`` on an LLM-sized batch, process start-up included.

    python benchmarks/parallel.py [--rows 1024] [--vocab 32000] [--parallel 1,2,4]

Runs examples/vocab_parallel_ce.py (the Megatron-LM algorithm) on 1024 x 32000 float32 logits
(a confident regime: p_y = 0.99) through ``engine.run_spec``, once per process-group size, and
prints the verdict, the whole check's time and the launch's own time (from the result's
``parallel`` row: start-up and the rank checks' three calls per rank included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--parallel", default="1,2,4")
    args = parser.parse_args()

    from gradcheck_cli.api import load
    from gradcheck_cli.engine import RunOptions, run_spec
    from gradcheck_cli.impl import load as load_impl

    spec = load(
        {
            "regime": {
                "kind": "confident",
                "rows": args.rows,
                "num_classes": args.vocab,
                "seed": 1,
                "p": 0.99,
            },
            "dtype": "float32",
            "label_smoothing": 0.1,
        }
    )[0]
    impl = load_impl(f"torch:{ROOT / 'examples' / 'vocab_parallel_ce.py'}:vocab_parallel_ce")
    print(f"{args.rows} x {args.vocab} float32, label smoothing 0.1")
    for p in (int(x) for x in args.parallel.split(",")):
        started = time.perf_counter()
        result = run_spec(spec, RunOptions(impl=impl, tensor_parallel=(p,), timeout=600))
        seconds = time.perf_counter() - started
        if not result.parallel:
            print(f"  P = {p}: {result.status}: {result.message}", flush=True)
            continue
        (row,) = result.parallel
        print(f"  P = {p}: {result.status}, check {seconds:.1f} s, launch {row.seconds:.1f} s "
              f"(shard {row.width}, padding {row.padding}); worst loss |Δ| {row.loss_error:.3g}, "
              f"gradient |Δ| {row.grad_error:.3g} at {list(row.grad_at)}", flush=True)  # fmt: skip
    left = subprocess.run(["pgrep", "-f", "gradcheck_cli.tensor_parallel"], capture_output=True)
    print("worker processes left:", "none" if left.returncode == 1 else left.stdout.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
