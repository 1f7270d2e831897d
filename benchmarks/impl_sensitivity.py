"""The smallest planted error the --impl defaults catch, and what a correct float64 code shows.

Usage: python benchmarks/impl_sensitivity.py

For seeded random problems (N = 8, K = 50, logit scale 3) an implementation that is exactly
right except for a relative error ``e`` planted in one gradient element (the largest one, a
1e-2-sized one and a 1e-4-sized one relative to the largest) or in the loss is run through the
same checks as ``xentcheck run --impl``; the smallest ``e`` (powers of 10^(1/4)) that fails every
problem is printed. Then a *correct* float64 implementation written the usual way (log-softmax,
``p - onehot``: PyTorch's formulation) is checked for false alarms, and torch.autograd.gradcheck's
defaults (atol 1e-5, rtol 1e-3) are shown for comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradcheck_cli.engine import RunOptions, run_spec
from gradcheck_cli.impl import Implementation
from gradcheck_cli.model import Spec

PROBLEMS = 20
LEVELS = 10.0 ** (-np.arange(4, 49) / 4)  # 1e-1 ... 1e-12


def usual(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    n = len(labels)
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1.0
    return -logp[np.arange(n), labels].mean(), grad / n


def planted(where: tuple[int, int] | None, e: float):  # type: ignore[no-untyped-def]
    def fn(logits, *, labels, reduction, loss="softmax_cross_entropy"):  # type: ignore[no-untyped-def]
        value, grad = usual(logits, labels=labels, reduction=reduction)
        if where is None:
            return value * (1 + e), grad
        grad[where] *= 1 + e
        return value, grad

    return fn


def problems() -> list[Spec]:
    rng = np.random.default_rng(7)
    return [
        Spec(
            name=f"p{i}",
            file="-",
            logits=rng.normal(size=(8, 50)) * 3,
            single=False,
            labels=rng.integers(0, 50, 8),
            methods=("analytic",),
        )
        for i in range(PROBLEMS)
    ]


def caught(spec: Spec, fn: object, quantity: str) -> bool:
    r = run_spec(spec, RunOptions(impl=Implementation("planted", fn, None), methods=("exact",)))  # type: ignore[arg-type]
    return not all(
        c.passed for c in r.comparisons if c.method.startswith("impl") and c.quantity == quantity
    )


def element_near(grad: np.ndarray, size: float) -> tuple[int, int]:
    target = size * np.max(np.abs(grad))
    flat = int(np.argmin(np.abs(np.abs(grad) - target)))
    return tuple(int(i) for i in np.unravel_index(flat, grad.shape))  # type: ignore[return-value]


def main() -> None:
    specs = problems()
    print(f"{PROBLEMS} problems of 8 x 50, logit scale 3; xentcheck --impl defaults (float64)")
    print(f"{'planted in':36} {'smallest relative error caught in every problem':>48}")
    for label, size in (
        ("largest gradient element", 1.0),
        ("element ~1e-2 of the largest", 1e-2),
        ("element ~1e-4 of the largest", 1e-4),
        ("the loss", None),
    ):
        smallest = None
        for e in LEVELS:
            ok = True
            for spec in specs:
                where = None
                if size is not None:
                    grad = usual(spec.logits, labels=spec.labels, reduction="mean")[1]
                    where = element_near(grad, size)
                quantity = "loss" if size is None else "logits"
                if not caught(spec, planted(where, e), quantity):
                    ok = False
                    break
            if not ok:
                break
            smallest = e
        print(f"{label:36} {smallest:>48.2e}")
    worst_loss = worst_grad = 0.0
    false_alarms = 0
    for spec in specs:
        r = run_spec(
            spec, RunOptions(impl=Implementation("usual", usual, None), methods=("exact",))
        )
        rows = [c for c in r.comparisons if c.method.startswith("impl")]
        false_alarms += sum(not c.passed for c in rows)
        for c in rows:
            if c.quantity == "loss":
                worst_loss = max(worst_loss, c.max_rel_error)
            elif c.quantity == "logits":
                worst_grad = max(worst_grad, c.max_abs_error)
    print(
        f"correct float64 implementation: {false_alarms} false alarms; worst loss rel err "
        f"{worst_loss:.2e}, worst gradient abs err {worst_grad:.2e}"
    )
    print(
        "torch.autograd.gradcheck defaults (atol 1e-5, rtol 1e-3) pass any element error below "
        "atol + rtol|g|: a relative error below ~1e-3 in a largest element goes unseen."
    )


if __name__ == "__main__":
    main()
