"""Gradient methods behind one signature: ``method(problem, settings) -> GradientOutput``.

Every method returns the gradient of the *reduced* loss with respect to the logits, shape (N, K);
for reduction ``none`` row n holds ``dl_n/dz_n``. A method that cannot produce a meaningful value
for a problem raises :class:`NotComputable` with a reason a user can read.

The methods are deliberately independent of one another:

* ``analytic`` — the closed form ``p * sum(q) - q``, cancellation-free.
* ``jacobian`` — the explicit chain rule ``J^T dL/dp`` with ``J = diag(p) - p p^T`` materialized.
* ``finite_difference`` — forward, central or Richardson differences of the loss as a black box.
* ``complex_step`` — ``Im L(z + i h e_k) / h``: no cancellation, accurate to a few ulps.
* ``exact`` — the closed form in 50-digit arithmetic (mpmath), rounded once: the reference
  whenever it is computed; ``analytic`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gradcheck_cli.core import Problem
from gradcheck_cli.methods._base import (
    DEFAULT_SETTINGS,
    SCHEMES,
    GradientOutput,
    MethodSettings,
    NotComputable,
    Scheme,
)
from gradcheck_cli.methods.analytic import analytic_gradient
from gradcheck_cli.methods.complex_step import complex_step_gradient
from gradcheck_cli.methods.exact import exact_gradient
from gradcheck_cli.methods.finite_difference import finite_difference_gradient
from gradcheck_cli.methods.jacobian import jacobian_gradient

Method = Callable[[Problem, MethodSettings], GradientOutput]

METHODS: dict[str, Method] = {
    "analytic": analytic_gradient,
    "jacobian": jacobian_gradient,
    "finite_difference": finite_difference_gradient,
    "complex_step": complex_step_gradient,
    "exact": exact_gradient,
}
"""Every method by its spec name, in report order."""

#: The reference when ``exact`` is not computed; it is always computed itself.
REFERENCE_METHOD = "analytic"
EXACT_METHOD = "exact"


def reference_of(gradients: Mapping[str, object]) -> str:
    """The method every other is compared against: ``exact`` when it produced a gradient,
    ``analytic`` otherwise."""
    return EXACT_METHOD if gradients.get(EXACT_METHOD) is not None else REFERENCE_METHOD


__all__ = [
    "DEFAULT_SETTINGS",
    "EXACT_METHOD",
    "METHODS",
    "REFERENCE_METHOD",
    "SCHEMES",
    "GradientOutput",
    "Method",
    "MethodSettings",
    "NotComputable",
    "Scheme",
    "analytic_gradient",
    "complex_step_gradient",
    "exact_gradient",
    "finite_difference_gradient",
    "jacobian_gradient",
    "reference_of",
]
