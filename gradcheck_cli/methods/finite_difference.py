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
the nominal ``2h``, since ``z + h`` is itself rounded.

The black box is each row's share of the reduced loss (``core.contributions``: options, softcap,
z-loss and reduction included). A row's share depends only on its own logits, so the perturbation
of class k is applied to every row at once and read back from the rows' shares. Classes are
processed in blocks under a fixed memory budget; there is no Python loop per element. A logit of
-inf cannot be perturbed; its gradient is exactly 0 (its probability is 0) and is reported so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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

FloatArray = NDArray[np.float64]
EPS = float(np.finfo(np.float64).eps)
#: Central-difference step factor in float64, eps^(1/3).
CENTRAL_STEP = EPS ** (1.0 / 3.0)
#: Exponent of eps in each scheme's automatic step factor.
STEP_EXPONENT: dict[Scheme, float] = {"forward": 1 / 2, "central": 1 / 3, "richardson": 1 / 5}
#: Upper bound on the values in one block of perturbed logits: 2^20 (8 MiB in float64), which
#: measured fastest on 32 x 1000 (two threads in flight: 0.24 s against 0.33 s at 2^21 and
#: 0.39 s at 2^19).
FD_CHUNK_ELEMENTS = 1 << 20
#: Element operations below which blocks run in one thread.
PARALLEL_MIN_WORK = 1 << 22
#: Most threads used for blocks.
MAX_WORKERS = 8


def step_factor(scheme: Scheme, dtype: np.dtype[np.floating] | type = np.float64) -> float:
    """The automatic relative step of ``scheme`` for logits of ``dtype``."""
    eps = float(np.finfo(dtype).eps)
    return float(eps ** STEP_EXPONENT[scheme])


def central_steps(z: FloatArray, factor: float = CENTRAL_STEP) -> FloatArray:
    """The step of every element: ``factor * max(1, |z|)``, same shape as ``z``."""
    out: FloatArray = factor * np.maximum(1.0, np.abs(z))
    return out.astype(z.dtype, copy=False)


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
    grad = fd_gradient(problem, scheme, factor)
    how = "automatic" if settings.fd_step is None else "given"
    exponent = {"forward": "1/2", "central": "1/3", "richardson": "1/5"}[scheme]
    rule = f"eps^({exponent})" if settings.fd_step is None else f"{factor:g}"
    return GradientOutput(
        grad, note=f"{scheme} differences, h = {rule}·max(1, |z|) ({how} step {factor:.3g})"
    )


def fd_gradient(problem: Problem, scheme: Scheme, factor: float) -> FloatArray:
    """The gradient by ``scheme`` with relative step ``factor`` (shape (N, K))."""
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
    h = central_steps(zf, factor)
    # Offsets per scheme: (multiple of h for the evaluation points) and how to combine them.
    offsets = {"forward": (1.0,), "central": (1.0, -1.0), "richardson": (1.0, -1.0, 0.5, -0.5)}[
        scheme
    ]
    moved = [zf + c * h for c in offsets]  # the perturbed values (finite stand-ins at -inf)
    if np.any(moved[-1] == zf):
        raise NotComputable(
            f"the step {factor:g}·max(1, |z|) is below the spacing of {z.dtype} at some logit, "
            "so z + h == z"
        )
    points = [np.where(finite, m, z) for m in moved]  # -inf logits stay -inf
    grad = np.empty_like(zf)
    block = max(1, FD_CHUNK_ELEMENTS // (len(points) * n * k))

    def one_block(start: int) -> None:
        cols = np.arange(start, min(k, start + block))
        shares = _shares(problem, [pt[:, cols] for pt in points], cols)  # (P, B, N)
        at = [m[:, cols].T for m in moved]  # (B, N) each: where each quotient's points sit
        zc = zf[:, cols].T
        if scheme == "forward":
            g = (shares[0] - base) / (at[0] - zc)
        elif scheme == "central":
            g = (shares[0] - shares[1]) / (at[0] - at[1])
        else:
            wide = (shares[0] - shares[1]) / (at[0] - at[1])
            narrow = (shares[2] - shares[3]) / (at[2] - at[3])
            g = (4.0 * narrow - wide) / 3.0
        grad[:, cols] = g.T  # blocks write disjoint columns: safe from several threads

    parallel_blocks(one_block, range(0, k, block), work=len(points) * n * k * k)
    grad[~finite] = 0.0
    return grad


def parallel_blocks(fn: Callable[[int], None], starts: range, work: int) -> None:
    """Run ``fn`` on every block start, on the machine's cores when the work pays for it.

    NumPy's ufuncs release the GIL, so threads run the blocks' array arithmetic in parallel;
    below :data:`PARALLEL_MIN_WORK` element operations the thread start-up costs more than it
    saves and the blocks run in order.
    """
    workers = min(len(starts), os.cpu_count() or 1, MAX_WORKERS)
    if workers <= 1 or work < PARALLEL_MIN_WORK:
        for start in starts:
            fn(start)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, starts):
            pass


def _shares(problem: Problem, values: list[FloatArray], cols: NDArray[np.intp]) -> FloatArray:
    """Rows' shares of the loss with column ``cols[b]`` replaced by ``values[p][:, b]``.

    Returns shape (P, B, N): evaluation point p, perturbed class b, row n.
    """
    z = problem.logits
    n, k = z.shape
    b = cols.size
    batch = np.broadcast_to(z, (len(values), b, n, k)).copy()
    sel = np.arange(b)
    for p, v in enumerate(values):
        batch[p, sel, :, cols] = v.T
    out: FloatArray = contributions(problem, batch)
    return out
