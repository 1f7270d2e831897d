"""Softmax cross-entropy with PyTorch's options: the problem, per-sample losses, reductions.

One formula covers every variant. For a sample with logits ``z`` (K,), let ``z' = c tanh(z / c)``
with a ``softcap`` c (``z' = z`` without), ``p = softmax(z')``, and let ``q`` (K,) be the sample's
*weighted target*:

* index label ``y``, class weights ``w``, label smoothing ``a``:
  ``q = (1 - a) w_y onehot(y) + (a / K) w``  (zero for a sample whose label is ``ignore_index``)
* probability target ``t``: ``q = w * ((1 - a) t + a / K)``

Then the sample's cross-entropy is ``ce = -sum_c q_c log p_c`` (PyTorch's
``(1 - a) * nll + (a / K) * smooth`` rearranged), and an optional z-loss adds
``s * logsumexp(z')^2`` for every sample that is not ignored (Liger-Kernel's definition).

Reductions follow ``torch.nn.functional.cross_entropy``: ``sum`` adds everything; ``none`` keeps
one loss per sample; ``mean`` divides the cross-entropy sum by ``sum_n w_{y_n}`` over non-ignored
samples for index labels (by N for probability targets) and the z-loss sum by the number of
non-ignored samples. A ``loss_mask`` m multiplies sample n's cross-entropy and z-loss by m_n,
and each normalizer's terms by m_n too (``sum_n m_n w_{y_n}``, ``sum_n m_n``). A ``mean`` whose
normalizer is 0 (nothing to average) is nan (PyTorch) or, with ``empty_mean: zero``, 0 (Keras).
Because every reduction is linear, each sample's share of the reduced loss is
``alpha_n ce_n + beta_n zloss_n`` (:func:`reduction_scales`), which is what the gradient methods
differentiate; for ``none`` both scales are 1 (``m_n`` with a mask) and row n of a gradient
holds ``dl_n/dz_n``.

``-log p_c`` is never computed as ``log`` of a probability: it is
``(m - z'_c) + log1p(sum_{j != j*} exp(z'_j - m))`` (``m = z'_{j*}`` the row maximum), a sum of two
non-negative terms that stays exact where ``p_c`` underflows (logits (0, -800, 1), label 1 give
801.3132616875...) and keeps its relative accuracy where the loss is tiny (logits (40, 0, 0),
label 0 give 8.4967e-18, where ``logsumexp(z) - z_y`` rounds to 0). A class with ``q_c == 0``
contributes exactly 0, even at a logit of -inf (PyTorch's probability-target path returns nan
there, from 0 * -inf).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core.softmax import softmax_terms

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")
#: What ``mean`` is when there is nothing to average (a zero normalizer).
EMPTY_MEANS = ("nan", "zero")

FloatArray = NDArray[np.float64]
#: Real or complex (the complex-step method passes complex logits through the forward pass).
AnyArray = NDArray[Any]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class CrossEntropyProblem:
    """One softmax cross-entropy evaluation: logits, targets, options and reduction.

    Exactly one of ``labels`` and ``targets`` is set.
    """

    logits: FloatArray
    """Logits, shape (N, K), float64 (or float32/float16: every function keeps the logits'
    dtype, so a computation in lower precision stays in it). Entries may be -inf (probability
    0); no nan or +inf, and every row has a finite entry. A single sample is stored as N = 1."""
    labels: IntArray | None = None
    """Class indices, shape (N,), each in [0, K) or equal to ``ignore_index``."""
    targets: FloatArray | None = None
    """Probability targets, shape (N, K), entries in [0, 1]."""
    reduction: Reduction = "mean"
    """How per-sample losses combine: ``mean``, ``sum`` or ``none`` (see the module docstring)."""
    weight: FloatArray | None = None
    """Class weights, shape (K,), finite and >= 0 (None: all 1)."""
    ignore_index: int | None = None
    """Samples whose label equals this contribute nothing (index labels only)."""
    label_smoothing: float = 0.0
    """Smoothing ``a`` in [0, 1]."""
    softcap: float | None = None
    """Logits pass through ``c tanh(z / c)`` before the softmax (c > 0)."""
    z_loss: float = 0.0
    """Scale ``s >= 0`` of the z-loss ``s * logsumexp(z')^2``."""
    num_items_in_batch: float | None = None
    """``M > 0``: ``mean`` divides the cross-entropy and z-loss sums by M (HuggingFace's
    ``num_items_in_batch``: the same divisor for every micro-batch of an accumulated step)."""
    loss_mask: FloatArray | None = None
    """Per-row weights m, shape (N,), finite and >= 0 (None: all 1): sample n's loss is
    ``m_n l_n`` and ``mean`` divides by ``sum_n m_n w_{y_n}`` (SFT prompt masking)."""
    empty_mean: str = "nan"
    """``mean`` with a zero normalizer: ``"nan"`` (PyTorch's 0/0) or ``"zero"`` (Keras's 0)."""
    row_scales: tuple[FloatArray, FloatArray] | None = None
    """The rows' (alpha, beta) when this problem is a slice of a larger batch (their mean
    normalizers come from the whole batch); None: computed from this problem."""

    def __post_init__(self) -> None:
        if self.logits.ndim != 2:
            raise ValueError(f"logits must have shape (N, K), got {self.logits.shape}")
        if (self.labels is None) == (self.targets is None):
            raise ValueError("exactly one of labels and targets must be given")
        n, k = self.logits.shape
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
        if self.targets is not None and self.targets.shape != (n, k):
            raise ValueError(f"targets must have shape ({n}, {k}), got {self.targets.shape}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}")
        if self.weight is not None and self.weight.shape != (k,):
            raise ValueError(f"weight must have shape ({k},), got {self.weight.shape}")
        if self.loss_mask is not None and self.loss_mask.shape != (n,):
            raise ValueError(f"loss_mask must have shape ({n},), got {self.loss_mask.shape}")
        if self.empty_mean not in EMPTY_MEANS:
            raise ValueError(f"empty_mean must be one of {EMPTY_MEANS}, got {self.empty_mean!r}")
        if self.ignore_index is not None and self.labels is None:
            raise ValueError("ignore_index needs index labels")
        if self.labels is not None:
            live = self.labels[self.valid]
            if np.any((live < 0) | (live >= k)):
                raise ValueError("labels out of range")

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        n, k = self.logits.shape
        return n, k

    @property
    def valid(self) -> BoolArray:
        """Samples that are not ignored, shape (N,)."""
        n, _ = self.shape
        if self.labels is None or self.ignore_index is None:
            return np.ones(n, dtype=bool)
        out: BoolArray = self.labels != self.ignore_index
        return out

    @property
    def row_weights(self) -> FloatArray:
        """Each row's factor in the reduction: ``m_n`` for a row that is not ignored, 0 for an
        ignored one, shape (N,), float64 (1 and 0 without a ``loss_mask``)."""
        valid = self.valid.astype(np.float64)
        if self.loss_mask is None:
            return valid
        out: FloatArray = np.where(self.valid, self.loss_mask.astype(np.float64), 0.0)
        return out

    @property
    def plain(self) -> bool:
        """True when no option changes the textbook loss (weights and smoothing aside)."""
        return self.softcap is None and self.z_loss == 0.0

    @property
    def one_hot(self) -> bool:
        """True when every weighted target is ``w_y onehot(y)`` (index labels, no smoothing), so
        methods may gather at the label instead of forming ``q``."""
        return self.labels is not None and self.label_smoothing == 0.0


def build(
    logits: FloatArray,
    labels: IntArray | None,
    targets: FloatArray | None,
    reduction: Reduction,
    options: Mapping[str, Any],
) -> CrossEntropyProblem:
    """The problem of a spec's arrays and its options (by the option table's names: this
    family's rows of ``core.options.OPTIONS`` are the problem's option fields)."""
    return CrossEntropyProblem(
        logits, labels=labels, targets=targets, reduction=reduction, **options
    )


def _cast(a: FloatArray | None, dtype: str) -> FloatArray | None:
    return None if a is None else a.astype(dtype)


def cast(problem: CrossEntropyProblem, dtype: str) -> CrossEntropyProblem:
    """The same problem with its floating-point arrays (logits, targets, class weights, loss
    mask) rounded to ``dtype``; labels stay int64."""
    return replace(
        problem,
        logits=problem.logits.astype(dtype, copy=False),
        targets=_cast(problem.targets, dtype),
        weight=_cast(problem.weight, dtype),
        loss_mask=_cast(problem.loss_mask, dtype),
    )


def rows_of(
    problem: CrossEntropyProblem,
    rows: slice,
    scales: tuple[FloatArray, FloatArray],
    dtype: str,
    logits: FloatArray | None = None,
) -> CrossEntropyProblem:
    """Rows ``rows`` as a problem of their own in ``dtype``, carrying the whole batch's
    reduction ``scales`` (:func:`float64_scales` of the batch). ``logits``: those rows' logits
    when the problem does not hold them (a ``linear:`` spec computes them chunk by chunk)."""
    alpha, beta = scales
    return replace(
        problem,
        logits=(problem.logits[rows] if logits is None else logits).astype(dtype),
        labels=None if problem.labels is None else problem.labels[rows],
        targets=_cast(None if problem.targets is None else problem.targets[rows], dtype),
        weight=_cast(problem.weight, dtype),
        loss_mask=_cast(None if problem.loss_mask is None else problem.loss_mask[rows], dtype),
        row_scales=(alpha[rows].astype(dtype), beta[rows].astype(dtype)),
    )


def class_weights(problem: CrossEntropyProblem) -> FloatArray:
    """The class weights, shape (K,) (all 1 when the problem has none)."""
    _, k = problem.shape
    return np.ones(k, dtype=problem.logits.dtype) if problem.weight is None else problem.weight


def weighted_targets(problem: CrossEntropyProblem) -> FloatArray:
    """Each sample's weighted target ``q`` (see the module docstring), shape (N, K), all >= 0."""
    n, k = problem.shape
    w = class_weights(problem)
    a = problem.label_smoothing
    if problem.targets is not None:
        t = problem.targets if a == 0.0 else (1.0 - a) * problem.targets + a / k
        return t * w
    assert problem.labels is not None
    valid = problem.valid
    rows = np.flatnonzero(valid)
    q = np.zeros((n, k), dtype=problem.logits.dtype)
    if a != 0.0:
        q[rows] = (a / k) * w
    q[rows, problem.labels[rows]] += (1.0 - a) * w[problem.labels[rows]]
    return q


def exact_weighted_target(
    problem: CrossEntropyProblem, i: int, w: list[Any], number: Callable[[float], Any]
) -> list[Any]:
    """Row ``i``'s weighted target ``q`` (K,) without rounding: the formula of
    :func:`weighted_targets` in the arithmetic of ``number`` (the ``exact`` method passes
    mpmath's ``mpf``), with the class weights ``w`` already converted."""
    _, k = problem.shape
    a = number(problem.label_smoothing)
    if problem.labels is not None:
        y = int(problem.labels[i])
        q = [a / k * w[c] for c in range(k)]
        q[y] += (1 - a) * w[y]
        return q
    assert problem.targets is not None
    return [w[c] * ((1 - a) * number(float(t)) + a / k) for c, t in enumerate(problem.targets[i])]


def dense_targets(problem: CrossEntropyProblem) -> FloatArray:
    """The target distribution of every row as a dense (N, K) array (one-hot for labels; rows
    of ignored samples are 0). Smoothing and weights are not applied (see
    :func:`weighted_targets`)."""
    if problem.targets is not None:
        return problem.targets
    assert problem.labels is not None
    n, k = problem.shape
    onehot = np.zeros((n, k), dtype=problem.logits.dtype)
    rows = np.flatnonzero(problem.valid)
    onehot[rows, problem.labels[rows]] = 1.0
    return onehot


def mean_normalizers(problem: CrossEntropyProblem) -> tuple[float, float]:
    """The divisors of ``mean``: (cross-entropy normalizer, z-loss normalizer).

    Index labels: ``sum_n w_{y_n}`` over non-ignored samples (PyTorch); probability targets: N.
    The z-loss: the number of non-ignored samples. With a ``loss_mask`` m each sample counts
    ``m_n`` times: ``sum_n m_n w_{y_n}``, ``sum_n m_n`` (and ``sum_n m_n`` for probability
    targets). Either may be 0 (every sample ignored or masked). With ``num_items_in_batch`` M,
    both are M.
    """
    if problem.num_items_in_batch is not None:
        return float(problem.num_items_in_batch), float(problem.num_items_in_batch)
    n, _ = problem.shape
    valid = problem.valid
    if problem.loss_mask is None:
        count = float(np.count_nonzero(valid))
        if problem.labels is None:
            return float(n), count
        w = class_weights(problem).astype(np.float64)
        return float(np.sum(w[problem.labels[valid]])), count
    m = problem.row_weights  # m_n, 0 for ignored rows
    count = float(np.sum(m))
    if problem.labels is None:
        return count, count
    w = class_weights(problem).astype(np.float64)
    return float(np.sum(m * w[label_columns(problem)])), count


def reduction_scales(problem: CrossEntropyProblem) -> tuple[FloatArray, FloatArray]:
    """Each sample's factor in the reduced loss: (alpha for the cross-entropy, beta for the
    z-loss), shapes (N,) and (N,); 0 for ignored samples.

    A ``loss_mask`` multiplies both by ``m_n``. For ``mean`` with a zero normalizer (every
    sample ignored or masked) the scales are 0: no sample contributes, and :func:`reduce_loss`
    reports the 0/0 mean as nan, as PyTorch does (or as 0 with ``empty_mean: zero``).
    """
    if problem.row_scales is not None:
        return problem.row_scales
    dtype = problem.logits.dtype
    alpha, beta = float64_scales(problem)  # normalized in float64, then cast once
    return alpha.astype(dtype), beta.astype(dtype)


def float64_scales(problem: CrossEntropyProblem) -> tuple[FloatArray, FloatArray]:
    """:func:`reduction_scales` in float64 whatever the logits' dtype (they depend only on the
    labels, the class weights, the loss mask and the reduction, never on the logits' values)."""
    valid = problem.row_weights
    if problem.reduction != "mean":
        return valid, valid.copy()
    ce_norm, z_norm = mean_normalizers(problem)
    if ce_norm == 0.0:
        # The mean is 0/0 (nan, as in PyTorch, or 0 with empty_mean zero): no sample
        # contributes, z-loss included, so the gradient (0) does not describe a different loss
        # than the one reported.
        return np.zeros_like(valid), np.zeros_like(valid)
    alpha = valid / ce_norm
    beta = valid / z_norm if z_norm != 0.0 else np.zeros_like(valid)
    return alpha, beta


def capped(problem: CrossEntropyProblem, logits: AnyArray, inplace: bool = False) -> AnyArray:
    """``c tanh(z / c)`` with the problem's softcap c, or the logits themselves without one
    (``inplace``: computed in ``logits``' own memory)."""
    if problem.softcap is None:
        return logits
    c = problem.softcap
    if inplace:
        np.divide(logits, c, out=logits)
        np.tanh(logits, out=logits)
        return np.multiply(logits, c, out=logits)
    out: FloatArray = c * np.tanh(logits / c)
    return out


def sample_terms(
    problem: CrossEntropyProblem, logits: AnyArray | None = None, scratch: AnyArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """Each sample's cross-entropy ``ce_n`` and z-loss ``s lse_n^2`` (0 for ignored samples).

    Parameters
    ----------
    problem : targets, options and shape (N, K).
    logits : array of shape (..., N, K), default ``problem.logits``; leading axes are independent
        copies of the batch (the finite-difference method evaluates many perturbations at once).
    scratch : optional array shaped and typed like ``logits``: then nothing of the logits' size
        is allocated, and ``logits`` is overwritten (the finite differences' workspace).

    Returns
    -------
    ce, zl : arrays of shape (..., N). ``ce`` is +inf where a class with positive weighted target
        has logit -inf (without a softcap).
    """
    if logits is None:
        logits, scratch = problem.logits, None  # never overwrite the problem's own logits
    z = capped(problem, logits, inplace=scratch is not None)
    shifted, m, log_norm = softmax_terms(z, scratch)  # -log p = log_norm - shifted, both >= 0
    if problem.one_hot:
        # q is w_y at the label and 0 elsewhere: gather instead of a dot product.
        ce = _label_terms(problem, shifted, log_norm[..., 0])
        if problem.z_loss == 0.0:
            return ce, np.zeros_like(ce)
        return ce, _z_loss_terms(problem, m, log_norm)
    q = weighted_targets(problem)
    # ce = sum_c q_c (log_norm - shifted_c) = sum(q) log_norm + sum_c q_c (-shifted_c): two
    # non-negative terms, one pass over the logits for the dot product.
    if shifted.dtype.kind != "f":  # bfloat16 (ml_dtypes): einsum has no loop for it
        with np.errstate(invalid="ignore"):  # 0 * -inf at a masked lane, dropped by the where
            dot = np.sum(np.where(q > 0, q * shifted, 0.0).astype(shifted.dtype), axis=-1)
    elif np.all(np.isfinite(problem.logits)) or problem.softcap is not None:
        dot = np.einsum("...k,...k->...", shifted, q)
    else:  # q = 0 at a -inf logit: its 0 * inf term is dropped, not nan
        with np.errstate(invalid="ignore"):
            dot = np.sum(np.where(q > 0, q * shifted, 0.0), axis=-1)
    ce = np.sum(q, axis=-1) * log_norm[..., 0] - dot
    if problem.z_loss == 0.0:
        return ce, np.zeros_like(ce)
    return ce, _z_loss_terms(problem, m, log_norm)


def _z_loss_terms(problem: CrossEntropyProblem, m: AnyArray, log_norm: AnyArray) -> AnyArray:
    """``s lse_n^2`` for every sample that is not ignored, exactly 0 for an ignored one (even
    where ``lse^2`` overflows: ``where``, not a multiplication by 0, which would give nan)."""
    with np.errstate(over="ignore"):
        zl = problem.z_loss * (m + log_norm)[..., 0] ** 2
    out: AnyArray = np.where(problem.valid, zl, 0.0)
    return out


def label_weights(problem: CrossEntropyProblem) -> FloatArray:
    """``w_{y_n}`` for every sample, 0 for ignored ones, shape (N,) (index labels only)."""
    assert problem.labels is not None
    valid = problem.valid
    if problem.weight is None:  # every weight 1: no (K,) array of ones (called once per block)
        return valid.astype(problem.logits.dtype)
    out = np.zeros(problem.shape[0], dtype=problem.logits.dtype)
    out[valid] = problem.weight[problem.labels[valid]]
    return out


def label_columns(problem: CrossEntropyProblem) -> IntArray:
    """Each row's label, shape (N,), with 0 for ignored rows (their weight is 0): the columns
    one-hot methods gather at (index labels only)."""
    assert problem.labels is not None
    out: IntArray = np.where(problem.valid, problem.labels, 0)
    return out


def _label_terms(problem: CrossEntropyProblem, shifted: AnyArray, log_norm: AnyArray) -> AnyArray:
    """``w_y (log_norm - shifted_y)`` per sample without forming the one-hot targets."""
    labels = label_columns(problem)
    idx = np.broadcast_to(labels[:, None], (*shifted.shape[:-1], 1))
    picked = np.take_along_axis(shifted, idx, axis=-1)[..., 0]
    w = label_weights(problem)
    with np.errstate(invalid="ignore"):  # an ignored row's -inf pick times weight 0
        out = np.where(w > 0, w * (log_norm - picked), 0.0)
    return out


def contributions(
    problem: CrossEntropyProblem, logits: AnyArray | None = None, scratch: AnyArray | None = None
) -> FloatArray:
    """Each sample's share of the reduced loss, ``alpha_n ce_n + beta_n zloss_n``, shape (..., N).

    For ``sum`` and ``mean`` the reduced loss is their sum; for ``none`` they are the per-sample
    losses themselves. This is the black box the finite-difference method differentiates
    (``scratch``: see :func:`sample_terms`; ``logits`` is then overwritten).
    """
    ce, zl = sample_terms(problem, logits, scratch)
    alpha, beta = reduction_scales(problem)
    with np.errstate(invalid="ignore"):  # alpha = 0 on a sample with infinite ce: nan -> 0 below
        out: FloatArray = np.where(alpha > 0, alpha * ce, 0.0) + np.where(beta > 0, beta * zl, 0.0)
    return out


def per_sample_loss(problem: CrossEntropyProblem, logits: AnyArray | None = None) -> FloatArray:
    """Each sample's unreduced loss ``ce_n + zloss_n`` (PyTorch's ``reduction='none'``), before
    any ``loss_mask`` (:func:`reduce_loss` applies it).

    Shape (..., N) for logits of shape (..., N, K).
    """
    ce, zl = sample_terms(problem, logits)
    out: FloatArray = ce + zl
    return out


def reduce_loss(problem: CrossEntropyProblem) -> float | FloatArray:
    """The reduced loss: a float for ``mean`` and ``sum``, shape (N,) for ``none``
    (``m_n l_n`` with a ``loss_mask``: 0 on a masked row, even where ``l_n`` is infinite).

    ``mean`` with every sample ignored or masked (or a zero weight sum) is 0/0: nan, as in
    PyTorch, or 0 with ``empty_mean: zero``; see :func:`loss_note` for the reason in words.
    """
    if problem.reduction == "none":
        if problem.loss_mask is not None:
            return contributions(problem)  # alpha = beta = m_n (0 if ignored)
        return per_sample_loss(problem)
    if problem.reduction == "mean" and mean_normalizers(problem)[0] == 0.0:
        return 0.0 if problem.empty_mean == "zero" else float("nan")
    return float(np.sum(contributions(problem)))


def loss_note(problem: CrossEntropyProblem, loss: float | FloatArray) -> str | None:
    """Why the loss is not finite, in words, or None when it is finite."""
    values = np.asarray(loss)
    if np.all(np.isfinite(values)):
        return None
    if problem.reduction == "mean" and mean_normalizers(problem)[0] == 0.0:
        if not np.any(problem.valid):
            return (
                "every sample is ignored (ignore_index), so the mean is 0/0 = nan (as in "
                "PyTorch; empty_mean: zero makes it 0)"
            )
        if not np.any(problem.row_weights):
            return (
                "every loss_mask entry of the non-ignored samples is 0, so the mean is 0/0 = nan "
                "(empty_mean: zero makes it 0)"
            )
        return "the class weights of the non-ignored labels sum to 0, so the mean is 0/0 = nan"
    ce, _ = sample_terms(problem)
    bad = np.flatnonzero(~np.isfinite(ce))
    if bad.size:
        n, _ = problem.shape
        where = f"sample {int(bad[0])}" if n > 1 else "the sample"
        return (
            f"the loss is infinite: in {where} a class with a positive (weighted) target has "
            "logit -inf, so its probability is exactly 0 and -log p = inf"
        )
    return "the loss is not finite"
