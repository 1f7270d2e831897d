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

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem, contributions
from gradcheck_cli.methods._base import (
    DEFAULT_SETTINGS,
    GradientOutput,
    MethodSettings,
    NotComputable,
)
from gradcheck_cli.methods.differences import (
    parallel_blocks,
    row_groups,
    row_parts,
    workspace,
    zero_at_minus_inf,
)

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
    grad = complex_step(problem, COMPLEX_STEP, settings.columns)  # fixed: any tiny step will do
    return GradientOutput(grad, note=f"complex step, h = {COMPLEX_STEP:g}")


def complex_step(problem: Problem, h: float, columns: NDArray[np.intp] | None = None) -> FloatArray:
    """The complex-step gradient with imaginary step ``h`` (absolute), shape (N, K) (with
    ``columns`` only those classes' entries, nan elsewhere)."""
    base = contributions(problem)
    if not np.all(np.isfinite(base)):
        row = int(np.flatnonzero(~np.isfinite(base))[0])
        raise NotComputable(f"the loss of sample {row} is not finite")
    z = problem.logits
    if z.dtype == np.float16:
        raise NotComputable("NumPy has no float16 complex type, so no float16 complex step")
    n, k = z.shape
    finite = np.isfinite(z)
    grad = np.zeros_like(z) if columns is None else np.full_like(z, np.nan)
    chosen = np.arange(k) if columns is None else columns
    complex_type = np.result_type(z.dtype, np.complex64)
    step = float(np.asarray(h, dtype=z.dtype))  # the step as the dtype holds it
    group, block = row_groups(n, k)  # as the finite differences' blocks, one point
    for rows, part in row_parts(problem, group):
        zc = part.logits.astype(complex_type)
        r = zc.shape[0]

        def one_block(first: int, part: Problem = part, zc: Any = zc, rows: slice = rows) -> None:
            cols = chosen[first : first + block]
            b = cols.size
            batch, scratch = (a[:b] for a in workspace((block, zc.shape[0], k), zc.dtype))
            batch[...] = zc
            batch[np.arange(b), :, cols] += 1j * step
            with np.errstate(invalid="ignore"):
                shares = contributions(part, batch, scratch)  # (B, rows), complex
            grad[rows, cols] = (shares.imag / step).T

        parallel_blocks(one_block, range(0, chosen.size, block), work=2 * r * k * chosen.size)
    zero_at_minus_inf(grad, finite, columns)
    return grad
