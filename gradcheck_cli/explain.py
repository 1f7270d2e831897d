"""``xentcheck explain``: the derivation of d(loss)/d(logits) with one sample's own numbers.

Pure computation into a :class:`Walkthrough`; ``report/explain.py`` renders it as Markdown (and
Rich renders that Markdown on a terminal). Every number comes from the same core functions the
checks use, so the explanation and the verification cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import CrossEntropyProblem
from gradcheck_cli.core.loss import (
    class_weights,
    contributions,
    per_sample_loss,
    reduction_scales,
    weighted_targets,
)
from gradcheck_cli.core.softmax import softmax, softmax_jacobian
from gradcheck_cli.engine import build_problem
from gradcheck_cli.errors import XentcheckError
from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS
from gradcheck_cli.methods.differences import (
    coordinate_quotient,
    points,
    relative_steps,
    step_factor,
)
from gradcheck_cli.model import Spec

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Walkthrough:
    """Every number of the derivation for one sample (arrays of shape (K,), J of (K, K))."""

    name: str
    classes: tuple[str, ...]
    sample: int
    n: int
    reduction: str
    logits: FloatArray
    shift: float
    shifted: FloatArray
    exps: FloatArray
    total: float
    probs: FloatArray
    label: int | None
    targets: FloatArray
    """The plain target distribution (one-hot for a label)."""
    q: FloatArray
    """The weighted target the loss uses (= targets without weights or smoothing)."""
    options: dict[str, object]
    loss: float
    loss_via_lse: float
    jacobian: FloatArray
    dl_dp: FloatArray
    chain: FloatArray
    closed_form: FloatArray
    scale: float
    """The reduction's factor for this sample in the batch gradient."""
    scale_text: str
    fd_class: int
    fd_step: float
    fd_plus: float
    fd_minus: float
    fd_quotient: float
    rounded_figure: tuple[float, float] | None
    """For the cat/dog/bird example: the article's rounded p_y and its -log."""


def walkthrough(spec: Spec, sample: int = 0) -> Walkthrough:
    """The derivation for row ``sample`` of a softmax cross-entropy spec."""
    if spec.loss != "softmax_cross_entropy":
        raise XentcheckError("explain covers softmax cross-entropy (not sigmoid) for now")
    if spec.softcap is not None or spec.z_loss:
        raise XentcheckError("explain does not cover softcap or z-loss yet (see docs/losses.md)")
    n, k = spec.logits.shape
    if not 0 <= sample < n:
        raise XentcheckError(f"--sample {sample}: expected 0 to {n - 1} (the batch has {n} rows)")
    batch = build_problem(spec)
    assert isinstance(batch, CrossEntropyProblem)
    batch = replace(batch, logits=batch.logits.astype(np.float64))
    row = slice(sample, sample + 1)
    alpha, _ = reduction_scales(batch)
    one = replace(
        batch,
        logits=batch.logits[row],
        labels=None if batch.labels is None else batch.labels[row],
        targets=None if batch.targets is None else batch.targets[row],
        reduction="sum",
    )
    z = one.logits[0]
    finite = np.isfinite(z)
    m = float(np.max(z))
    shifted = z - m
    exps = np.exp(shifted)
    total = float(np.sum(exps))
    p = softmax(one.logits)[0]
    q = weighted_targets(one)[0]
    plain = np.zeros(k)
    label = None
    if one.labels is not None:
        label = int(one.labels[0])
        if 0 <= label < k:
            plain[label] = 1.0
    else:
        assert one.targets is not None
        plain = one.targets[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        dl_dp = np.where(q > 0, -q / p, 0.0)
    jac = softmax_jacobian(p)
    chain = jac.T @ np.where(np.isfinite(dl_dp), dl_dp, 0.0)
    closed = METHODS["analytic"](one, DEFAULT_SETTINGS).grad[0]
    loss = float(per_sample_loss(one)[0])
    lse = m + math.log(total)
    loss_via_lse = float(np.sum(q[finite] * (lse - z[finite]))) if np.all(np.isfinite(q)) else loss
    fd_class = int(np.argmax(np.abs(closed)))
    fd_step, plus, minus, quotient = _confirmation(one, fd_class)
    classes = spec.classes or tuple(str(i) for i in range(k))
    rounded = None
    if label is not None and spec.name == "cat-dog-bird":
        py = round(float(p[label]), 2)
        rounded = (py, -math.log(py))
    scale, scale_text = _scale(batch, float(alpha[sample]), n)
    options: dict[str, object] = {}
    if spec.weight is not None:
        options["weight"] = class_weights(batch)
    if spec.label_smoothing:
        options["label_smoothing"] = spec.label_smoothing
    if spec.ignore_index is not None:
        options["ignore_index"] = spec.ignore_index
    return Walkthrough(
        name=spec.name,
        classes=classes,
        sample=sample,
        n=n,
        reduction=spec.reduction,
        logits=z,
        shift=m,
        shifted=shifted,
        exps=exps,
        total=total,
        probs=p,
        label=label,
        targets=plain,
        q=q,
        options=options,
        loss=loss,
        loss_via_lse=loss_via_lse,
        jacobian=jac,
        dl_dp=dl_dp,
        chain=chain,
        closed_form=closed,
        scale=scale,
        scale_text=scale_text,
        fd_class=fd_class,
        fd_step=fd_step,
        fd_plus=plus,
        fd_minus=minus,
        fd_quotient=quotient,
        rounded_figure=rounded,
    )


def _confirmation(one: CrossEntropyProblem, c: int) -> tuple[float, float, float, float]:
    """Central differences of the one-row problem's loss in logit ``c``, the largest-magnitude
    gradient component: the step taken ``fl(z + h) - z`` with ``h = eps^(1/3) max(1, |z_c|)``,
    the losses at ``z +- h``, and their quotient over the step actually taken."""
    column = one.logits[:, c]  # shape (1,)
    moved = points("central", column, relative_steps(column, step_factor("central")))
    values = []
    for m in moved:
        logits = one.logits.copy()
        logits[0, c] = m[0]
        values.append(float(contributions(one, logits)[0]))
    quotient = coordinate_quotient("central", values, [m[0] for m in moved])
    return float(moved[0][0] - column[0]), values[0], values[1], float(quotient)


def _scale(batch: CrossEntropyProblem, alpha: float, n: int) -> tuple[float, str]:
    if batch.reduction == "none":
        return 1.0, "reduction none: each sample's gradient is reported as it is"
    if batch.reduction == "sum":
        return 1.0, "reduction sum: the batch gradient of this row is this gradient"
    if batch.labels is not None and (batch.weight is not None or batch.ignore_index is not None):
        return alpha, (
            "reduction mean: divided by the sum of the non-ignored labels' class weights "
            f"(factor {alpha:.6g})"
        )
    if n == 1:
        return alpha, "one sample: its mean is itself"
    return alpha, f"reduction mean: the batch gradient of this row is divided by N = {n}"
