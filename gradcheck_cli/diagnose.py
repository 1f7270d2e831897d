"""One-line diagnoses of an implementation's wrong loss or gradient, only on clear evidence.

Each test is a hypothesis about a common bug that the numbers either confirm exactly or not at
all: a constant factor between the implementation and the reference (a normaliser: N, 1/N, K,
2, the label weights' sum), the error confined to one class column or one row, every label
read one position off (the loss or gradient then matches the reference at shifted labels to
1e-9), or values that are all float32 numbers inside a float64 check. Nothing is guessed: a
hypothesis that does not fit to the stated precision says nothing.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import CrossEntropyProblem, Problem, reduce_any
from gradcheck_cli.core.softmax_ce import label_weights
from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS

FloatArray = NDArray[np.float64]

#: Two numbers "agree" for a diagnosis when they differ by at most this, relatively.
AGREE = 1e-9


def _close(a: FloatArray | float, b: FloatArray | float, rtol: float = AGREE) -> bool:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape or not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))):
        return False
    scale = max(float(np.max(np.abs(b64), initial=0.0)), np.finfo(np.float64).tiny)
    return bool(np.max(np.abs(a64 - b64), initial=0.0) <= rtol * scale)


def _factor_names(problem: Problem) -> list[tuple[float, str]]:
    """Constant factors that a wrong normaliser produces, with what each suggests."""
    n, k = problem.shape
    names = [
        (float(n), f"N = {n} times the reference: a mean not divided by N (a sum)?"),
        (1.0 / n, f"1/N = 1/{n} times the reference: divided by N once too often?"),
        (float(k), f"K = {k} times the reference: divided by N·K, or not by K?"),
        (2.0, "twice the reference: a factor 2 from d(z²)/dz, or counted twice?"),
        (0.5, "half the reference: divided by 2 once too often?"),
        (-1.0, "minus the reference: the sign is flipped (gradient ascent?)"),
    ]
    if isinstance(problem, CrossEntropyProblem) and problem.labels is not None:
        w = float(np.sum(label_weights(problem)))
        if w > 0 and problem.reduction == "mean" and not np.isclose(w, n):
            names.append(
                (
                    w / n,
                    "the weighted mean divided by N instead of by the sum of the labels' "
                    f"weights ({w:.6g})?",
                )
            )
    return names


def constant_factor(got: FloatArray, ref: FloatArray, problem: Problem) -> str | None:
    """``got`` is ``ref`` times one constant (to 1e-9): say which, and what it suggests."""
    mask = np.abs(ref) > 1e-9 * float(np.max(np.abs(ref), initial=0.0))
    if np.count_nonzero(mask) < 2 or not np.all(np.isfinite(got)):
        return None
    ratio = float(np.median(got[mask] / ref[mask]))
    if ratio == 1.0 or not _close(got, ratio * ref):
        return None
    for factor, text in _factor_names(problem):
        if np.isclose(ratio, factor, rtol=1e-9, atol=0.0):
            return f"the implementation's values are {text}"
    return f"the implementation's values are {ratio:.10g} times the reference: a normaliser?"


def confined(failed: NDArray[np.bool_], classes: tuple[str, ...] | None) -> str | None:
    """All failing elements sit in one class column, or in one row ((N, K) masks only)."""
    if failed.ndim != 2 or np.count_nonzero(failed) < 2:
        return None
    rows, cols = np.nonzero(failed)
    if np.all(cols == cols[0]) and failed.shape[0] > 1:
        c = int(cols[0])
        name = f" ({classes[c]})" if classes else ""
        return f"only column {c}{name} is off, in {rows.size} rows: that class is special-cased?"
    if np.all(rows == rows[0]) and failed.shape[0] > 1:
        return f"only row {int(rows[0])} is off: a boundary row (first, last, ignored)?"
    return None


def shifted_labels(
    problem: Problem, got_loss: FloatArray | None, got_grad: FloatArray | None
) -> str | None:
    """The implementation matches the reference with its labels one off: every label value
    moved by +-1 (cyclically), or every row given its neighbour's label (an offset view, as
    ``labels[..., 1:]`` read one position early or late)."""
    if not isinstance(problem, CrossEntropyProblem) or problem.labels is None:
        return None
    n, k = problem.shape
    valid = problem.valid
    candidates: list[tuple[np.ndarray, str]] = []
    if k >= 2:
        for shift in (1, -1):
            labels = problem.labels.copy()
            labels[valid] = (labels[valid] + shift) % k
            candidates.append((labels, f"every label value shifted by {shift:+d}"))
    if n >= 2:
        for shift in (1, -1):
            candidates.append(
                (np.roll(problem.labels, shift), f"row n given row n{-shift:+d}'s label")
            )
    for labels, what in candidates:
        try:
            moved = replace(problem, labels=labels, row_scales=None)
        except ValueError:  # a moved ignore_index label out of range
            continue
        matched = _matches(moved, got_loss, got_grad)
        if matched:
            return f"the {matched} matches the reference with {what}: labels read from an offset?"
    return None


def _matches(
    variant: Problem, got_loss: FloatArray | None, got_grad: FloatArray | None
) -> str | None:
    """``"loss"`` or ``"gradient"`` when the implementation's agrees (to 1e-9) with the
    reference of ``variant`` (the problem as a suspected bug would see it), else None."""
    if got_loss is not None and _close(got_loss, np.asarray(reduce_any(variant))):
        return "loss"
    if got_grad is not None and _close(
        got_grad, METHODS["analytic"](variant, DEFAULT_SETTINGS).grad
    ):
        return "gradient"
    return None


def float32_inside(got: FloatArray, ref: FloatArray, dtype: str) -> str | None:
    """In a float64 check, values that are all float32 numbers with float32-sized errors."""
    if dtype != "float64" or not np.all(np.isfinite(got)):
        return None
    with np.errstate(over="ignore"):
        representable = bool(np.all(got.astype(np.float32).astype(np.float64) == got))
    scale = float(np.max(np.abs(ref), initial=0.0))
    error = float(np.max(np.abs(got - ref), initial=0.0))
    if representable and 1e-12 * scale < error <= 1e-5 * scale:
        return (
            "every value is a float32 number and the errors are at float32's rounding level: "
            "float32 arithmetic inside a float64 check?"
        )
    return None


def gradient(
    got: FloatArray,
    ref: FloatArray,
    failed: NDArray[np.bool_],
    problem: Problem,
    dtype: str,
    classes: tuple[str, ...] | None = None,
    whole: Problem | None = None,
) -> str | None:
    """The first diagnosis that fits a failing gradient (shapes (N, K)), or None. ``problem``
    may be a window of rows of the batch ``whole`` (fast mode), which names the factors."""
    return (
        constant_factor(got, ref, whole or problem)
        or dropped_option(problem, None, got)
        or shifted_labels(problem, None, got)
        or float32_inside(got, ref, dtype)
        or confined(failed, classes)
    )


def loss(
    got: FloatArray, ref: FloatArray, problem: Problem, dtype: str, variants: bool = True
) -> str | None:
    """The first diagnosis that fits a failing loss, or None (``variants=False``: only the
    ones that need no recomputation of the whole batch's loss, for fast mode)."""
    if got.ndim:
        factor = constant_factor(got, ref, problem)
    elif ref != 0 and np.isfinite(got) and got != ref:
        ratio = float(got / ref)
        factor = next(
            (
                f"the implementation's loss is {text}"
                for value, text in _factor_names(problem)
                if np.isclose(ratio, value, rtol=1e-9, atol=0.0)
            ),
            None,
        )
    else:
        factor = None
    if not variants:
        return factor or float32_inside(got, ref, dtype)
    return (
        factor
        or dropped_option(problem, got, None)
        or shifted_labels(problem, got, None)
        or float32_inside(got, ref, dtype)
    )


def upstream(
    got: FloatArray, plain: FloatArray, grad_output: FloatArray, first: float | None = None
) -> str | None:
    """How a backward mishandles ``grad_output``: ``plain`` is the reference gradient of the
    plain sum of the losses (N, K), ``grad_output`` what was back-propagated (a scalar, (N,)
    or (N, K)); ``first``: the whole batch's ``grad_output[0]`` when these are a window of its
    rows. A spec may give any ``grad_output``: where it is all ones the plain gradient *is* the
    reference, and where every value equals ``grad_output[0]`` so is the first row's scaling,
    so neither is said there."""
    flat = np.ravel(grad_output)
    if not np.all(flat == 1.0) and _close(got, plain):
        return "the backward ignores grad_output (it returns the gradient of the plain sum)"
    head = flat[0] if first is None else first
    spread = not np.all(flat == head)
    if (flat.size > 1 or first is not None) and spread and _close(got, plain * head):
        return (
            "every row is scaled by grad_output[0] instead of its own grad_output "
            "(Liger-Kernel #1298)"
        )
    return None


#: Options whose absence a diagnosis tries, with the value that switches each off.
_OFF: dict[str, object] = {
    "label_smoothing": 0.0,
    "weight": None,
    "z_loss": 0.0,
    "softcap": None,
    "pos_weight": None,
    "loss_mask": None,
}


def dropped_option(
    problem: Problem, got_loss: FloatArray | None, got_grad: FloatArray | None
) -> str | None:
    """The implementation matches the reference computed *without* one of the spec's options
    (to 1e-9): it ignores that option."""
    for name, off in _OFF.items():
        value = getattr(problem, name, off)
        if value is None or (off is not None and value == off):
            continue  # not set: nothing was dropped
        changes: dict[str, object] = {name: off}
        if isinstance(problem, CrossEntropyProblem):
            changes["row_scales"] = None
        try:
            without = replace(problem, **changes)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        matched = _matches(without, got_loss, got_grad)
        if matched:
            return f"the {matched} matches the reference without {name}: the option was dropped?"
    return None
