"""Finite differences of the loss, used as a black box: forward, central and Richardson.

Every element ``z_nk`` gets the step ``h = f * max(1, |z_nk|)`` with a factor ``f`` that balances
the scheme's truncation error against the rounding error of the loss values (``eps`` is the
machine epsilon of the logits' dtype, 2.2e-16 for float64):

=============  ==============================================  ==============  ==================
scheme         quotient                                        truncation      automatic f
=============  ==============================================  ==============  ==================
forward        ``(L(z+h) - L(z)) / h``                          ``O(h)``        ``eps^(1/2)``
central        ``(L(z+h) - L(z-h)) / 2h``                       ``O(h^2)``      ``eps^(1/3)``
richardson     ``(4 D(h/2) - D(h)) / 3``, D the central one     ``O(h^4)``      ``eps^(1/5)``
=============  ==============================================  ==============  ==================

Each quotient divides by the step the machine actually took (``(z + h) - (z - h)`` etc.), not by
the nominal ``2h``, since ``z + h`` is itself rounded. The stencils, step rules and quotients are
those of :mod:`gradcheck_cli.methods.differences`; this module supplies the black box.

The black box is each row's share of the reduced loss (``core.contributions``: options, softcap,
z-loss and reduction included). A row's share depends only on its own logits, so the perturbation
of class k is applied to every row at once and read back from the rows' shares. Classes are
processed in blocks under a fixed memory budget; there is no Python loop per element. A logit of
-inf cannot be perturbed; its gradient is exactly 0 (its probability is 0) and is reported so.
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
    Scheme,
)
from gradcheck_cli.methods.differences import (
    coordinatewise,
    points,
    relative_steps,
    row_groups,
    row_parts,
    step_factor,
    workspace,
    zero_at_minus_inf,
)

FloatArray = NDArray[np.float64]


def finite_difference_gradient(
    problem: Problem, settings: MethodSettings = DEFAULT_SETTINGS
) -> GradientOutput:
    """Finite-difference gradient of the reduced loss, shape (N, K), by ``settings.fd_scheme``.

    Raises
    ------
    NotComputable
        Where the loss itself is not finite at the given logits.
    """
    scheme = settings.fd_scheme
    factor = settings.fd_step or step_factor(scheme, problem.logits.dtype)
    grad = fd_gradient(problem, scheme, factor, settings.columns)
    how = "automatic" if settings.fd_step is None else "given"
    exponent = {"forward": "1/2", "central": "1/3", "richardson": "1/5"}[scheme]
    rule = f"eps^({exponent})" if settings.fd_step is None else f"{factor:g}"
    return GradientOutput(
        grad, note=f"{scheme} differences, h = {rule}·max(1, |z|) ({how} step {factor:.3g})"
    )


def fd_gradient(
    problem: Problem, scheme: Scheme, factor: float, columns: NDArray[np.intp] | None = None
) -> FloatArray:
    """The gradient by ``scheme`` with relative step ``factor`` (shape (N, K); with
    ``columns`` only those classes' entries, nan elsewhere).

    Rows are taken in groups and classes in blocks so that one block of perturbed logits,
    (points, classes, rows, K), holds about ``FD_BLOCK_ELEMENTS`` values; each thread
    evaluates its blocks in one workspace of that size (and one for the exponentials), so the
    hot loop allocates nothing of the logits' size and its passes stay in cache.
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
    zf = np.where(finite, z, 0.0).astype(z.dtype)
    moved = points(scheme, zf, relative_steps(zf, factor))  # finite stand-ins at -inf
    if np.any(moved[-1] == zf):
        raise NotComputable(
            f"the step {factor:g}·max(1, |z|) is below the spacing of {z.dtype} at some logit, "
            "so z + h == z"
        )
    inputs = [np.where(finite, m, z) for m in moved]  # -inf logits stay -inf
    count = len(moved)
    group, block = row_groups(n, count * k)  # rows evaluated together, classes per block
    grad = np.empty_like(zf)
    for rows, part in row_parts(problem, group):
        at = [pt[rows] for pt in inputs]

        def evaluate(
            cols: NDArray[np.intp], part: Problem = part, at: list[FloatArray] = at
        ) -> FloatArray:
            return _shares(part, at, cols, block)  # (P, B, rows)

        width = k if columns is None else columns.size
        work = count * (rows.stop - rows.start) * k * width
        grad[rows] = coordinatewise(
            scheme, zf[rows], [m[rows] for m in moved], evaluate, base[rows], block, work, columns
        )
    zero_at_minus_inf(grad, finite, columns)
    return grad


def _shares(
    problem: Problem, values: list[FloatArray], cols: NDArray[np.intp], block: int
) -> FloatArray:
    """Rows' shares of the loss with column ``cols[b]`` replaced by ``values[p][:, b]``, by the
    forward formula itself (``core.contributions``) on every perturbed copy of the rows.

    Returns shape (P, B, N): evaluation point p, perturbed class b, row n.
    """
    z = problem.logits
    n, k = z.shape
    b = cols.size
    native = z.dtype.kind == "f"  # bfloat16 (ml_dtypes) takes the allocating path
    if native:
        batch, scratch = (a[:, :b] for a in workspace((len(values), block, n, k), z.dtype))
        batch[...] = z
    else:
        batch, scratch = np.broadcast_to(z, (len(values), b, n, k)).copy(), None
    sel = np.arange(b)
    for p, v in enumerate(values):
        batch[p, sel, :, cols] = v[:, cols].T
    out: FloatArray = contributions(problem, batch, scratch)
    return out
