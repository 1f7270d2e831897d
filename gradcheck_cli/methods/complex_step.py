"""The complex-step derivative: ``dL/dz_k = Im L(z + i h e_k) / h``.

No difference of two nearly equal numbers is ever formed, so there is no subtractive
cancellation: ``h`` can be tiny, which makes the truncation error ``O(h^2)`` vanish below
float64's resolution, and the result is accurate to a few ulps. The step is an absolute
``h = 1e-20``, not one scaled by ``|z|``: ``z + i h`` is exact whatever ``|z|`` (real and
imaginary parts are stored apart), and the loss's curvature does not grow with ``|z|``
(softmax is shift-invariant), so a step of ``1e-20 |z|`` would only hurt: at ``|z| = 1e300`` it
would be 1e280. Gradient components below about 1e-288 lose relative precision (``h`` times
them is subnormal).

It needs a forward pass that is an analytic function of the logits and that carries complex
values through: the core's loss functions are written that way (max-shift by the real part, the
maximum's term through ``expm1``, softplus by branches without ``abs``). Like the finite
differences it perturbs class k in every row at once and reads the rows' shares of the loss.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem, contributions
from gradcheck_cli.methods._base import (
    DEFAULT_SETTINGS,
    GradientOutput,
    MethodSettings,
    NotComputable,
)
from gradcheck_cli.methods.differences import FD_CHUNK_ELEMENTS, parallel_blocks

FloatArray = NDArray[np.float64]
#: Imaginary step (absolute).
COMPLEX_STEP = 1e-20


def complex_step_gradient(
    problem: Problem, settings: MethodSettings = DEFAULT_SETTINGS
) -> GradientOutput:
    """``Im L(z + i h e_k) / h`` for every element with ``h = 1e-20``, shape (N, K).

    Raises
    ------
    NotComputable
        Where the loss is not finite at the given logits, or the dtype has no complex type.
    """
    del settings  # the step is fixed: any tiny step gives the same digits
    grad = complex_step(problem, COMPLEX_STEP)
    return GradientOutput(grad, note=f"complex step, h = {COMPLEX_STEP:g}")


def complex_step(problem: Problem, h: float) -> FloatArray:
    """The complex-step gradient with imaginary step ``h`` (absolute), shape (N, K)."""
    base = contributions(problem)
    if not np.all(np.isfinite(base)):
        row = int(np.flatnonzero(~np.isfinite(base))[0])
        raise NotComputable(f"the loss of sample {row} is not finite")
    z = problem.logits
    if z.dtype == np.float16:
        raise NotComputable("NumPy has no float16 complex type, so no float16 complex step")
    n, k = z.shape
    finite = np.isfinite(z)
    steps = np.full(z.shape, h, dtype=z.dtype)
    grad = np.zeros_like(z)
    block = max(1, FD_CHUNK_ELEMENTS // (2 * n * k))  # complex values count twice
    zc = z.astype(np.result_type(z.dtype, np.complex64))

    def one_block(start: int) -> None:
        cols = np.arange(start, min(k, start + block))
        b = cols.size
        batch = np.broadcast_to(zc, (b, n, k)).copy()
        sel = np.arange(b)
        batch[sel, :, cols] += 1j * steps[:, cols].T
        with np.errstate(invalid="ignore"):
            shares = contributions(problem, batch)  # (B, N), complex
        grad[:, cols] = (shares.imag / steps[:, cols].T).T

    parallel_blocks(one_block, range(0, k, block), work=2 * n * k * k)
    grad[~finite] = 0.0
    return grad
