"""Central finite differences of the per-sample loss, used as a black box.

For each element ``z_nk`` the step is ``h = eps^(1/3) * max(1, |z_nk|)`` (``eps`` = float64's
machine epsilon, so ``h`` is about 6.06e-6 for |z| <= 1). This balances the truncation error of
the central quotient, about ``h^2 |l'''| / 6``, against the rounding error of the two loss values,
about ``eps |l| / h``. The quotient divides by the step the machine actually took,
``(z + h) - (z - h)``, not by ``2h``, since ``z + h`` is itself rounded.

Vectorization: a sample's loss depends only on its own row, so the perturbation of class k can be
applied to every row at once and read back from the per-sample losses. Classes are processed in
blocks (a block of B classes evaluates a (B, N, K) array) under a fixed memory budget; there is no
Python loop per element.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core.loss import CrossEntropyProblem, per_sample_loss, reduction_weights
from gradcheck_cli.methods._base import GradientOutput

EPS = float(np.finfo(np.float64).eps)
#: Central-difference step factor, eps^(1/3).
CENTRAL_STEP = EPS ** (1.0 / 3.0)
#: Upper bound on the float64 values in one block of perturbed logits: 2^21 (16 MiB).
FD_CHUNK_ELEMENTS = 1 << 21


def central_steps(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """The step of every element: ``eps^(1/3) * max(1, |z|)``, same shape as ``z``."""
    out: NDArray[np.float64] = CENTRAL_STEP * np.maximum(1.0, np.abs(z))
    return out


def finite_difference_gradient(problem: CrossEntropyProblem) -> GradientOutput:
    """Central-difference gradient of the reduced loss, shape (N, K)."""
    z = problem.logits
    n, k = z.shape
    h = central_steps(z)
    plus = z + h
    minus = z - h
    taken = plus - minus  # the step the machine actually took, (N, K)
    grad = np.empty_like(z)
    block = max(1, FD_CHUNK_ELEMENTS // (n * k))
    for start in range(0, k, block):
        cols = np.arange(start, min(k, start + block))
        b = cols.size
        batch = np.broadcast_to(z, (2, b, n, k)).copy()  # [0]: +h, [1]: -h
        sel = np.arange(b)
        batch[0, sel, :, cols] = plus[:, cols].T
        batch[1, sel, :, cols] = minus[:, cols].T
        losses = per_sample_loss(problem, batch)  # (2, B, N)
        grad[:, cols] = ((losses[0] - losses[1]) / taken[:, cols].T).T
    grad *= reduction_weights(problem)[:, None]
    return GradientOutput(grad, note="central differences, h = eps^(1/3)·max(1, |z|)")
