"""Softmax cross-entropy: the problem definition, per-sample losses and reductions.

For one sample with logits ``z`` (K,) the loss is

* index label ``y``:            ``l = logsumexp(z) - z_y``            (= -log p_y)
* probability target ``t`` (K,): ``l = -sum_c t_c log_softmax(z)_c``  (= -sum_c t_c log p_c)

Neither form evaluates ``log p``: they stay exact where ``p_y`` underflows to 0 (logits
(0, -800, 1), label 1 give 801.3132616875...). Both are evaluated in the rearranged form
``-log p_c = (m - z_c) + log1p(sum_{j != j*} exp(z_j - m))`` (``m = z_{j*}`` the row maximum), a
sum of two non-negative terms: ``logsumexp(z) - z_y`` subtracts two numbers of similar size when
the loss is small and loses its relative accuracy (for logits (40, 0, 0), label 0, it rounds to 0
instead of 8.4967e-18); the rearranged form keeps a few ulps everywhere. In the probability form a
class with ``t_c == 0`` contributes exactly 0.

A batch (N, K) gives N per-sample losses; the reduction combines them: ``mean`` divides their sum
by N, ``sum`` adds them, ``none`` keeps the vector. Every reduction here is linear, so it is fully
described by one weight per row (:func:`reduction_weights`): the gradient of the reduced loss with
respect to row n is ``weight_n * dl_n/dz_n`` (for ``none``, row n holds ``dl_n/dz_n``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core.softmax import cross_entropy_terms

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class CrossEntropyProblem:
    """One softmax cross-entropy evaluation: logits, targets and reduction.

    Exactly one of ``labels`` and ``targets`` is set.
    """

    logits: FloatArray
    """Logits, shape (N, K), float64, finite. A single sample is stored as N = 1."""
    labels: IntArray | None = None
    """Class indices, shape (N,), each in [0, K)."""
    targets: FloatArray | None = None
    """Probability targets, shape (N, K), entries in [0, 1]."""
    reduction: Reduction = "mean"
    """How per-sample losses combine: ``mean`` (divide by N), ``sum`` or ``none``."""

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

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        n, k = self.logits.shape
        return n, k


def per_sample_loss(problem: CrossEntropyProblem, logits: FloatArray | None = None) -> FloatArray:
    """Per-sample losses ``l_n`` of ``problem``, optionally at other logits of the same rows.

    Parameters
    ----------
    problem : the targets (labels or probabilities) and shape (N, K).
    logits : array of shape (..., N, K), default ``problem.logits``. Leading axes are independent
        copies of the batch (the finite-difference method evaluates many perturbations at once).

    Returns
    -------
    array of shape (..., N).
    """
    z = problem.logits if logits is None else logits
    gap, log_norm = cross_entropy_terms(z)  # -log p = gap + log_norm, both >= 0
    if problem.labels is not None:
        idx = np.broadcast_to(problem.labels[:, None], (*z.shape[:-1], 1))
        out: FloatArray = (np.take_along_axis(gap, idx, axis=-1) + log_norm)[..., 0]
        return out
    assert problem.targets is not None
    t = problem.targets
    # 0 * log p = 0 for classes the target does not use, even where log p is very negative.
    terms = np.where(t > 0, t * (gap + log_norm), 0.0)
    out = np.sum(terms, axis=-1)
    return out


def reduction_weights(problem: CrossEntropyProblem) -> FloatArray:
    """Weight of each sample in the reduced loss (shape (N,)): 1/N for mean, 1 otherwise."""
    n, _ = problem.shape
    w = 1.0 / n if problem.reduction == "mean" else 1.0
    return np.full(n, w)


def reduce_loss(problem: CrossEntropyProblem, losses: FloatArray) -> float | FloatArray:
    """Combine per-sample losses (N,) by the problem's reduction.

    Returns a float for ``mean`` and ``sum`` (``mean`` is the sum divided by N, as PyTorch does),
    the (N,) array itself for ``none``.
    """
    if problem.reduction == "none":
        return losses
    total = float(np.sum(losses))
    if problem.reduction == "mean":
        return total / problem.shape[0]
    return total


def dense_targets(problem: CrossEntropyProblem) -> FloatArray:
    """The target distribution of every row as a dense (N, K) array (one-hot for labels)."""
    if problem.targets is not None:
        return problem.targets
    assert problem.labels is not None
    n, k = problem.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), problem.labels] = 1.0
    return onehot
