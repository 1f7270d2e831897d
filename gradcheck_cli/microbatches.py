"""``microbatches: k``: gradient accumulation must reproduce the whole batch's gradient.

A trainer that accumulates gradients over k micro-batches back-propagates each micro-batch's
loss and adds the gradients. Each logit belongs to exactly one micro-batch, so the accumulated
gradient is the micro-batches' gradients stacked in row order, and it must equal the gradient of
the whole batch's loss. ``sum`` and ``mean`` with ``num_items_in_batch: M`` (the same divisor
for every micro-batch: HuggingFace's fix, transformers #34191) accumulate exactly. A plain
``mean`` does not: each micro-batch divides by its own count, so micro-batch j's gradient is
``N / N_j`` times its share of the batch's. The check says so with the measured ratios.

The rows are split with ``numpy.array_split`` into k contiguous parts. Per-row inputs (labels,
targets and per-row option arrays) are split with them. Per-class arrays and scalar options
(class weights, ``num_items_in_batch``, ...) are passed to every part unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem
from gradcheck_cli.core.options import BY_NAME, set_options
from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS
from gradcheck_cli.model import Check, Spec

FloatArray = NDArray[np.float64]

#: The accumulated reference gradient may differ from the batch's by this much relative to the
#: gradient's largest element (summation order only).
REFERENCE_RTOL = 1e-12


def parts(n: int, k: int) -> list[slice]:
    """The k contiguous row slices of a batch of n rows (sizes differ by at most one)."""
    bounds = np.cumsum([0, *(len(p) for p in np.array_split(np.arange(n), k))])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def rows_of_spec(spec: Spec, rows: slice, logits: np.ndarray) -> Spec:
    """The spec restricted to ``rows`` of ``logits`` (N, K), with its per-row inputs."""
    n = logits.shape[0]
    changes: dict[str, Any] = {"logits": logits[rows]}
    if spec.labels is not None:
        changes["labels"] = spec.labels[rows]
    if spec.targets is not None:
        changes["targets"] = spec.targets[rows]
    if spec.grad_output is not None and spec.grad_output.ndim:  # (a reduced loss's: unchanged)
        changes["grad_output"] = spec.grad_output[rows]
    for name, value in set_options(spec).items():
        kind = BY_NAME[name].kinds.get(spec.loss)
        per_row = isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n
        if per_row and kind != "class_array":
            changes[name] = value[rows]
    return replace(spec, **changes)


def reference_check(
    spec: Spec, logits: np.ndarray, reference: FloatArray, build: Callable[[Spec], Problem]
) -> tuple[Check, list[slice]]:
    """Whether the float64 reference gradients of the micro-batches, stacked, equal
    ``reference`` (N, K), the whole batch's; ``logits`` (N, K) float64."""
    assert spec.microbatches is not None
    n = logits.shape[0]
    split = parts(n, spec.microbatches)
    grads = [
        METHODS["analytic"](build(rows_of_spec(spec, rows, logits)), DEFAULT_SETTINGS).grad
        for rows in split
    ]
    stacked = np.concatenate(grads)
    scale = float(np.max(np.abs(reference), initial=0.0))
    gap = float(np.max(np.abs(stacked - reference), initial=0.0))
    sizes = ", ".join(str(r.stop - r.start) for r in split)
    if gap <= REFERENCE_RTOL * scale:
        return Check(
            "microbatches",
            True,
            f"{len(split)} micro-batches of {sizes} rows: the accumulated gradient equals the "
            f"batch's (max |Δ| = {gap:.3g})",
        ), split
    ratios = [_ratio(g, reference[rows]) for g, rows in zip(grads, split, strict=True)]
    shown = ", ".join("?" if r is None else f"{r:.6g}" for r in ratios)
    hint = ""
    if spec.reduction == "mean" and getattr(spec, "num_items_in_batch", None) is None:
        hint = (
            ": each micro-batch's mean divides by its own count, not the batch's; set "
            "num_items_in_batch to the batch's count (transformers #34191)"
        )
    return Check(
        "microbatches",
        False,
        f"{len(split)} micro-batches of {sizes} rows: the accumulated gradient differs from the "
        f"batch's by up to {gap:.3g}; micro-batch gradients are {shown} times their share of "
        f"the batch's{hint}",
    ), split


def _ratio(got: FloatArray, ref: FloatArray) -> float | None:
    """``got / ref`` when that is one constant (to 1e-9), else None."""
    mask = np.abs(ref) > 1e-9 * float(np.max(np.abs(ref), initial=0.0))
    if not np.any(mask):
        return None
    ratio = float(np.median(got[mask] / ref[mask]))
    return ratio if np.allclose(got, ratio * ref, rtol=1e-9, atol=0.0) else None
