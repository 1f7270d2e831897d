"""``xentcheck explain``: the derivation of d(loss)/d(logits) with one sample's own numbers.

Pure computation into a :class:`Walkthrough`; ``report/explain.py`` renders it as Markdown (and
Rich renders that Markdown on a terminal). Every number comes from the same core functions the
checks use, so the explanation and the verification cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import CrossEntropyProblem
from gradcheck_cli.core.options import OPTIONS, set_options
from gradcheck_cli.core.softmax import softmax, softmax_jacobian
from gradcheck_cli.core.softmax_ce import (
    contributions,
    per_sample_loss,
    reduction_scales,
    weighted_targets,
)
from gradcheck_cli.engine import build_problem
from gradcheck_cli.errors import XentcheckError
from gradcheck_cli.methods import DEFAULT_SETTINGS, METHODS
from gradcheck_cli.methods.differences import (
    coordinate_quotient,
    points,
    relative_steps,
    step_factor,
)
from gradcheck_cli.model import Spec, Walkthrough

FloatArray = NDArray[np.float64]


def walkthrough(spec: Spec, sample: int | None = None) -> Walkthrough:
    """The derivation for row ``sample`` of a softmax cross-entropy spec (None: the first row
    that counts; a row whose label is ``ignore_index`` contributes nothing to derive)."""
    if spec.loss != "softmax_cross_entropy":
        raise XentcheckError("explain covers softmax cross-entropy (not sigmoid) for now")
    _require_explained(spec)
    n, k = spec.logits.shape
    batch = build_problem(spec)
    assert isinstance(batch, CrossEntropyProblem)
    counted = np.flatnonzero(batch.valid)
    if sample is None:
        if counted.size == 0:
            raise XentcheckError(
                f"every row's label is ignore_index ({batch.ignore_index}): no sample "
                "contributes to the loss, so there is no derivation to show"
            )
        sample = int(counted[0])
    if not 0 <= sample < n:
        raise XentcheckError(f"--sample {sample}: expected 0 to {n - 1} (the batch has {n} rows)")
    if not batch.valid[sample]:
        rows = ", ".join(str(int(i)) for i in counted[:10]) or "none"
        raise XentcheckError(
            f"--sample {sample}: that row's label is ignore_index ({batch.ignore_index}), so it "
            f"contributes nothing to the loss; rows that count: {rows}"
        )
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
    rounded = _rounded_figure(spec, label, sample, loss)
    scale, scale_text = _scale(batch, float(alpha[sample]), n)
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
        options=set_options(spec),
        plain_label=label is not None and one.one_hot and one.weight is None,
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


def _require_explained(spec: Spec) -> None:
    """Refuse a spec that sets an option the walkthrough does not derive (option table)."""
    missing = [o for o in OPTIONS if not o.explained]
    if any(o.name in set_options(spec) for o in missing):
        names = " or ".join(o.name.replace("_", "-") for o in missing)
        raise XentcheckError(f"explain does not cover {names} yet (see docs/losses.md)")


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


def _rounded_figure(
    spec: Spec, label: int | None, sample: int, loss: float
) -> tuple[float, float] | None:
    """The spec's expected (rounded) ``p_y`` and ``-log`` of it, when its expected loss is that
    figure (to its three digits) and differs from the exact loss by more than rounding can."""
    expect = spec.expect
    if label is None or expect is None or expect.probs is None or expect.loss is None:
        return None
    probs = np.atleast_2d(np.asarray(expect.probs, dtype=np.float64))
    expected = np.atleast_1d(np.asarray(expect.loss, dtype=np.float64))
    if sample >= probs.shape[0] or probs[sample, label] <= 0.0:
        return None
    py = float(probs[sample, label])
    figure = -math.log(py)
    claimed = float(expected[min(sample, expected.size - 1)])
    if abs(figure - claimed) > 5e-4 * max(1.0, claimed) or abs(claimed - loss) <= 1e-6 * loss:
        return None
    return py, figure
