"""Central finite differences of the loss, used as a black box.

For each element ``z_nk`` the step is ``h = eps^(1/3) * max(1, |z_nk|)`` (``eps`` = float64's
machine epsilon, so ``h`` is about 6.06e-6 for |z| <= 1). This balances the truncation error of
the central quotient, about ``h^2 |l'''| / 6``, against the rounding error of the two loss values,
about ``eps |l| / h``. The quotient divides by the step the machine actually took,
``(z + h) - (z - h)``, not by ``2h``, since ``z + h`` is itself rounded.

The black box is each row's share of the reduced loss (``core.contributions``: options, softcap,
z-loss and reduction included). A row's share depends only on its own logits, so the perturbation
of class k can be applied to every row at once and read back from the rows' shares. Classes are
processed in blocks (a block of B classes evaluates a (2, B, N, K) array) under a fixed memory
budget; there is no Python loop per element. A logit of -inf cannot be perturbed; its gradient is
exactly 0 (its probability is 0) and is reported as such.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem, contributions
from gradcheck_cli.methods._base import GradientOutput, NotComputable

EPS = float(np.finfo(np.float64).eps)
#: Central-difference step factor, eps^(1/3).
CENTRAL_STEP = EPS ** (1.0 / 3.0)
#: Upper bound on the float64 values in one block of perturbed logits: 2^21 (16 MiB).
FD_CHUNK_ELEMENTS = 1 << 21


def central_steps(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """The step of every element: ``eps^(1/3) * max(1, |z|)``, same shape as ``z``."""
    out: NDArray[np.float64] = CENTRAL_STEP * np.maximum(1.0, np.abs(z))
    return out


def finite_difference_gradient(problem: Problem) -> GradientOutput:
    """Central-difference gradient of the reduced loss, shape (N, K).

    Raises
    ------
    NotComputable
        Where the loss itself is not finite at the given logits.
    """
    base = contributions(problem)
    if not np.all(np.isfinite(base)):
        row = int(np.flatnonzero(~np.isfinite(base))[0])
        raise NotComputable(
            f"the loss of sample {row} is not finite, so differences of it are undefined"
        )
    z = problem.logits
    n, k = z.shape
    finite = np.isfinite(z)
    zf = np.where(finite, z, 0.0)
    h = central_steps(zf)
    plus = np.where(finite, zf + h, z)
    minus = np.where(finite, zf - h, z)
    taken = (zf + h) - (zf - h)  # the step the machine actually took, (N, K)
    grad = np.empty_like(zf)
    block = max(1, FD_CHUNK_ELEMENTS // (2 * n * k))
    for start in range(0, k, block):
        cols = np.arange(start, min(k, start + block))
        b = cols.size
        batch = np.broadcast_to(z, (2, b, n, k)).copy()  # [0]: +h, [1]: -h
        sel = np.arange(b)
        batch[0, sel, :, cols] = plus[:, cols].T
        batch[1, sel, :, cols] = minus[:, cols].T
        shares = contributions(problem, batch)  # (2, B, N)
        grad[:, cols] = ((shares[0] - shares[1]) / taken[:, cols].T).T
    grad[~finite] = 0.0
    return GradientOutput(grad, note="central differences, h = eps^(1/3)·max(1, |z|)")
