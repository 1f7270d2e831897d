"""Gradient methods behind one signature: ``method(problem) -> GradientOutput``.

Every method returns the gradient of the *reduced* loss with respect to the logits, shape (N, K);
for reduction ``none`` row n holds ``dl_n/dz_n``. A method that cannot produce a meaningful value
for a problem raises :class:`NotComputable` with a reason a user can read.

The methods are deliberately independent of one another:

* ``analytic`` — the closed form ``p * sum(t) - t`` (``p - onehot`` for labels).
* ``jacobian`` — the explicit chain rule ``J^T dL/dp`` with ``J = diag(p) - p p^T`` materialized.
* ``finite_difference`` — central differences of the per-sample loss, used as a black box.
"""

from __future__ import annotations

from collections.abc import Callable

from gradcheck_cli.core import Problem
from gradcheck_cli.methods._base import GradientOutput, NotComputable
from gradcheck_cli.methods.analytic import analytic_gradient
from gradcheck_cli.methods.finite_difference import finite_difference_gradient
from gradcheck_cli.methods.jacobian import jacobian_gradient

Method = Callable[[Problem], GradientOutput]

METHODS: dict[str, Method] = {
    "analytic": analytic_gradient,
    "jacobian": jacobian_gradient,
    "finite_difference": finite_difference_gradient,
}
"""Every method by its spec name, in report order. ``analytic`` is the reference."""

REFERENCE_METHOD = "analytic"

__all__ = [
    "METHODS",
    "REFERENCE_METHOD",
    "GradientOutput",
    "Method",
    "NotComputable",
    "analytic_gradient",
    "finite_difference_gradient",
    "jacobian_gradient",
]
