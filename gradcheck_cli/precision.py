"""What each method's error should be: per-dtype tolerances and a predicted error bound.

A method under test runs in the spec's ``dtype`` (float64, float32 or float16); its gradient is
compared with the float64 reference computed from the same (rounded) inputs. The report shows the
observed error next to :func:`predicted_error`, a first-order bound from the dtype's machine
epsilon ``eps``:

* ``analytic``, ``jacobian``, ``complex_step``: ``(4 + G) eps max|g|``, where ``G`` is the widest
  spread ``max z - min z`` of finite logits in a row: ``exp(z_j - m)`` inherits the rounding of
  ``z_j - m`` multiplied by ``|z_j - m|``, and a few more roundings follow.
* ``finite_difference``: truncation at the largest step ``h`` plus rounding at the smallest
  ``h0``: forward ``h |l''| / 2 + 2 eps L / h0``; central ``h^2 |l'''| / 6 + eps L / h0``;
  Richardson ``h^4 |l^(5)| / 80 + 3 eps L / h0``, using the softmax cross-entropy bounds
  ``|l''| <= 1/4``, ``|l'''| <= 0.0962``, ``|l^(5)| <= 1/8`` (times the weighted target mass
  and reduction scale), and ``L`` the largest magnitude a row's loss share reaches.

The tolerance table is what a correct implementation must meet in each dtype; it is looser than
float64's only as far as the dtype requires (jax's test defaults, 2e-3 for float32 and 1e-2 for
float16, are looser still for the closed forms). Finite differences in float16 cannot resolve
gradients better than about 0.1: the table says so rather than pretending otherwise.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.compare import SCHEME_TOLERANCES, Tolerance, default_tolerance
from gradcheck_cli.core import Problem, SigmoidProblem, contributions
from gradcheck_cli.core.sigmoid_ce import reduction_scale
from gradcheck_cli.core.softmax_ce import reduction_scales, weighted_targets
from gradcheck_cli.methods._base import Scheme
from gradcheck_cli.methods.differences import step_factor

FloatArray = NDArray[np.float64]

#: Default tolerances by dtype and method (finite differences by scheme) against the float64
#: reference. Measured worst errors over 300 seeded random problems (K <= 40, logit scale <= 12,
#: ``benchmarks/accuracy.py --dtype``): float32 closed forms 3.9e-7 absolute, central
#: differences 4.7e-4; float16 closed forms 1.6e-3, central differences 0.097.
DTYPE_TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "float32": {
        "analytic": Tolerance(rtol=1e-5, atol=1e-6),
        "jacobian": Tolerance(rtol=1e-5, atol=1e-6),
        "complex_step": Tolerance(rtol=1e-5, atol=1e-6),
        "forward": Tolerance(rtol=5e-2, atol=2e-2),
        "central": Tolerance(rtol=1e-2, atol=2e-3),
        "richardson": Tolerance(rtol=1e-2, atol=2e-3),
    },
    "float16": {
        "analytic": Tolerance(rtol=2e-2, atol=5e-3),
        "jacobian": Tolerance(rtol=2e-2, atol=5e-3),
        "complex_step": Tolerance(rtol=2e-2, atol=5e-3),
        "forward": Tolerance(rtol=0.5, atol=1.0),
        "central": Tolerance(rtol=0.2, atol=0.2),
        "richardson": Tolerance(rtol=0.2, atol=0.2),
    },
    # bfloat16 has 8 significant bits (eps 2^-7, 8 times float16's): the same model scaled
    "bfloat16": {
        "analytic": Tolerance(rtol=1.6e-1, atol=4e-2),
        "jacobian": Tolerance(rtol=1.6e-1, atol=4e-2),
        "complex_step": Tolerance(rtol=1.6e-1, atol=4e-2),
        "forward": Tolerance(rtol=1.0, atol=2.0),
        "central": Tolerance(rtol=0.5, atol=0.5),
        "richardson": Tolerance(rtol=0.5, atol=0.5),
    },
}

_D2, _D3, _D5 = 0.25, 0.0962, 0.125


def dtype_overflow(logits: FloatArray, dtype: str) -> str | None:
    """Why ``logits`` cannot be rounded to ``dtype`` (a finite logit would become infinite), or
    None when they can (at once when they are already in ``dtype`` or a narrower one)."""
    if np.can_cast(logits.dtype, np.dtype(dtype), casting="safe"):
        return None
    finite = np.isfinite(logits)
    with np.errstate(over="ignore"):
        rounded = logits.astype(dtype)
    bad = finite & ~np.isfinite(rounded)
    if not np.any(bad):
        return None
    idx = [int(i) for i in np.argwhere(bad)[0]]
    top = float(np.finfo(dtype).max)
    return f"logit {float(logits[tuple(idx)]):g} at {idx} overflows {dtype} (largest {top:g})"


def dtype_tolerance(method: str, scheme: Scheme, dtype: str) -> Tolerance:
    """The default tolerance of ``method`` run in ``dtype`` (float64: the usual defaults)."""
    table = DTYPE_TOLERANCES.get(dtype)
    if table is None:
        return default_tolerance(method, scheme)
    key = scheme if method == "finite_difference" else method
    return table.get(key, SCHEME_TOLERANCES[scheme])


def predicted_error(
    method: str,
    problem: Problem,
    reference: FloatArray,
    *,
    scheme: Scheme = "central",
    step: float | None = None,
) -> float | None:
    """A first-order bound on ``max |method - reference|`` in the problem's dtype, or None.

    ``problem`` is the one the method ran on (its logits' dtype sets ``eps``); ``reference`` is
    the reference gradient (N, K).
    """
    dtype = problem.logits.dtype
    eps = float(np.finfo(dtype).eps)
    z = problem.logits.astype(np.float64)
    finite = np.isfinite(z)
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    if method in ("analytic", "jacobian", "complex_step"):
        zf = np.where(finite, z, np.nan)
        spread = float(np.nanmax(np.nanmax(zf, axis=-1) - np.nanmin(zf, axis=-1)))
        return (4.0 + spread) * eps * scale
    if method != "finite_difference":
        return None
    factor = step or step_factor(scheme, dtype)
    # Truncation grows with the step, rounding shrinks with it: bound each at its worst element.
    h = factor * float(np.max(np.maximum(1.0, np.abs(np.where(finite, z, 0.0)))))
    h_min = factor  # every step is factor * max(1, |z|) >= factor
    mass = derivative_scale(problem)
    shares = np.abs(contributions(problem).astype(np.float64))
    magnitude = float(np.max(shares)) + mass * (1.0 + float(np.max(np.abs(z[finite]))))
    if scheme == "forward":
        return h * _D2 * mass / 2 + 2 * eps * magnitude / h_min
    if scheme == "central":
        return h * h * _D3 * mass / 6 + eps * magnitude / h_min
    return h**4 * _D5 * mass / 80 + 3 * eps * magnitude / h_min


def derivative_scale(problem: Problem) -> float:
    """The largest weight a row's loss puts on derivatives: alpha_n sum(q_n) (softmax) or the
    element weight times ``max(r y, 1 - y)`` times the reduction scale (sigmoid)."""
    if isinstance(problem, SigmoidProblem):
        w = 1.0 if problem.weight is None else float(np.max(problem.weight))
        r = 1.0 if problem.pos_weight is None else max(1.0, float(np.max(problem.pos_weight)))
        return w * r * reduction_scale(problem)
    alpha, beta = reduction_scales(problem)
    q = weighted_targets(problem).astype(np.float64)
    mass = float(np.max(alpha.astype(np.float64) * np.sum(q, axis=-1)))
    if problem.z_loss:  # derivatives of s lse^2 grow with |lse| <= max|z| + log K
        top = float(np.max(np.abs(np.where(np.isfinite(problem.logits), problem.logits, 0.0))))
        mass += float(np.max(beta)) * problem.z_loss * 4.0 * (1.0 + top)
    return mass
