"""Gradients with respect to a linear layer's parameters: ``logits = X W + b``.

Shapes: inputs ``X`` (N, D), weights ``W`` (D, K), bias ``b`` (K,), logits ``z`` (N, K), and
``G = dL/dz`` (N, K) from a logits-gradient method. With reduction ``none`` the loss is a vector;
the parameter gradients are then those of the sum of the per-sample losses.

* ``analytic``: the closed forms ``dL/dW = X^T G`` (D, K, the weights' own layout),
  ``dL/db = sum_n G_n`` and ``dL/dX = G W^T``.
* ``jacobian``: the explicit chain ``vec(dL/dtheta) = (dz/dtheta)^T vec(G)`` with the full
  ``dz/dtheta`` matrix materialized: for the weights it is (N K) x (D K) with entries
  ``dz_nk / dW_dj = X_nd [k == j]``. Refused above a size limit.
* ``finite_difference``: every parameter perturbed by a central step, the logits recomputed from
  the perturbed parameters and the whole loss re-evaluated (the layer and the loss are one black
  box); perturbations are evaluated in vectorized blocks by the shared routine
  (:func:`gradcheck_cli.methods.differences.coordinatewise`, the parameters as one row).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import Problem, contributions
from gradcheck_cli.core.layer import Layer
from gradcheck_cli.methods._base import NotComputable
from gradcheck_cli.methods.differences import (
    FD_CHUNK_ELEMENTS,
    coordinatewise,
    points,
    relative_steps,
    step_factor,
)

FloatArray = NDArray[np.float64]
PARAMETERS = ("weights", "bias", "inputs")
#: The methods that compute parameter gradients (the closed form is their reference).
LAYER_METHODS = ("analytic", "jacobian", "finite_difference")
#: Largest dz/dtheta matrix the jacobian method materializes: 2^22 values (32 MiB).
LAYER_JACOBIAN_ELEMENTS = 1 << 22


def closed_form(layer: Layer, grad: FloatArray) -> dict[str, FloatArray]:
    """``X^T G``, ``sum_n G_n`` and ``G W^T`` from the logits gradient ``G`` (N, K)."""
    out = {"weights": layer.inputs.T @ grad, "inputs": grad @ layer.weights.T}
    if layer.bias is not None:
        out["bias"] = np.sum(grad, axis=0)
    return {name: out[name] for name in PARAMETERS if name in out}


def explicit_chain(layer: Layer, grad: FloatArray) -> dict[str, FloatArray]:
    """``(dz/dtheta)^T vec(G)`` with each ``dz/dtheta`` materialized as a matrix."""
    x, w = layer.inputs, layer.weights
    n, d = x.shape
    k = w.shape[1]
    largest = max(n * k * d * k, n * k * n * d)
    if largest > LAYER_JACOBIAN_ELEMENTS:
        raise NotComputable(
            f"the layer's dz/dtheta matrices would hold {largest:,} values, above the limit of "
            f"{LAYER_JACOBIAN_ELEMENTS:,}"
        )
    eye_k = np.eye(k)
    g = grad.reshape(n * k)
    # dz_nk/dW_dj = X_nd [k == j]  -> rows (n, k), columns (d, j)
    dz_dw = np.einsum("nd,kj->nkdj", x, eye_k).reshape(n * k, d * k)
    # dz_nk/dX_md = [n == m] W_dk   -> rows (n, k), columns (m, d)
    dz_dx = np.einsum("nm,dk->nkmd", np.eye(n), w).reshape(n * k, n * d)
    out = {"weights": (dz_dw.T @ g).reshape(d, k), "inputs": (dz_dx.T @ g).reshape(n, d)}
    if layer.bias is not None:
        dz_db = np.tile(eye_k, (n, 1))  # dz_nk/db_j = [k == j]
        out["bias"] = dz_db.T @ g
    return {name: out[name] for name in PARAMETERS if name in out}


def finite_differences(layer: Layer, problem: Problem) -> dict[str, FloatArray]:
    """Central differences of the total loss with respect to every parameter."""
    out: dict[str, FloatArray] = {}
    params = {"weights": layer.weights, "bias": layer.bias, "inputs": layer.inputs}
    for name in PARAMETERS:
        theta = params[name]
        if theta is None:
            continue
        out[name] = _fd_one(layer, problem, name, theta)
    return out


def _fd_one(layer: Layer, problem: Problem, name: str, theta: FloatArray) -> FloatArray:
    """Central differences of the total loss in every entry of ``theta`` (shape of ``theta``).

    The entries are one row of coordinates, (1, M), for :func:`coordinatewise`: the step is
    ``eps^(1/3) max(1, |theta|)`` and each quotient divides by the step actually taken."""
    flat = theta.reshape(1, -1)
    moved = points("central", flat, relative_steps(flat, step_factor("central", flat.dtype)))
    n, k = problem.shape
    per_copy = max(n * k + theta.size, 1)

    def evaluate(idx: NDArray[np.intp]) -> FloatArray:
        b = idx.size
        batch = np.broadcast_to(flat[0], (len(moved), b, flat.size)).copy()
        sel = np.arange(b)
        for p, m in enumerate(moved):
            batch[p, sel, idx] = m[0, idx]
        logits = _logits_with(layer, name, batch.reshape(len(moved), b, *theta.shape))
        total = np.sum(contributions(problem, logits), axis=-1)  # (P, B)
        out: FloatArray = total[..., None]  # (P, B, 1): one row
        return out

    block = max(1, FD_CHUNK_ELEMENTS // (len(moved) * per_copy))
    grad = coordinatewise("central", flat, moved, evaluate, None, block, work=0)
    return grad.reshape(theta.shape)


def _logits_with(layer: Layer, name: str, values: FloatArray) -> FloatArray:
    """Logits (..., N, K) with parameter ``name`` replaced by each of ``values`` (..., shape)."""
    x, w, b = layer.inputs, layer.weights, layer.bias
    z: FloatArray
    if name == "weights":
        z = np.einsum("nd,...dk->...nk", x, values)
    elif name == "inputs":
        z = np.einsum("...nd,dk->...nk", values, w)
    else:
        z = (x @ w) + values[..., None, :]
        return z
    return z if b is None else z + b
