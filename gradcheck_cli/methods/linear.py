"""A fused linear cross-entropy's loss and gradients at any size, in row chunks.

Shapes: hidden ``H`` (N, D), weights ``W`` (D, V) (the :class:`~gradcheck_cli.core.layer.Layer`'s
internal layout; a ``linear:`` spec's (V, D) weight is its transpose), bias ``b`` (V,), logits
``z = H W + b`` (N, V), and ``G = dL/dz`` (N, V).

The rows are taken ``r`` at a time, with ``r V <= ROW_CHUNK_ELEMENTS`` (2^22 values, 32 MiB in
float64), so no (N, V) array is ever held: for each chunk ``z_r = H_r W + b`` in float64, ``G_r``
by the cancellation-free closed form (:func:`~gradcheck_cli.methods.analytic.analytic_gradient`,
with the whole batch's reduction scales, so every option of the softmax loss applies), and

    loss += sum of the rows' contributions,  dH_r = G_r W^T,  dW += H_r^T G_r,  db += sum_n G_n.

A row of V float64 values is 8 V bytes (2 MiB at V = 256k), so rows are the natural chunk and
the vocabulary needs no online log-sum-exp here: each chunk's softmax is exact over its rows.

The *error budget* (:class:`Roundoff`) is a forward error bound, per element, for a correct kernel
whose inputs and outputs are in a dtype with unit roundoff ``u`` and whose sums run in a dtype
with unit roundoff ``a`` (float32 for float32 and half-precision kernels):

* each logit is off by at most ``D_nv = u |z_nv| + a (||h_n|| ||w_v|| + |b_v|)`` (rounded to the
  dtype, accumulated over D);
* through the softmax Jacobian ``diag(p) - p p^T`` that moves the logits' gradient by at most
  ``E_nv = c_n p_nv (D_nv + sum_c p_nc D_nc) + u |G_nv|`` (``c_n`` the row's reduction scale,
  z-loss and upstream factor included), plus ``a sqrt(terms) |G|`` for the sums of the chain;
* ``B_H = (E + a sqrt(V) |G|) |W|^T + u |dH|``, ``B_W = |H|^T (E + a sqrt(N) |G|) + u |dW|``,
  ``B_b = sum_n (E + a sqrt(N) |G|) + u |db|``; the loss likewise from ``(p + q) D`` per row.

A kernel passes when its error is within ``k`` budgets (default 4). Bugs are far outside: a
dropped bias moves ``G`` by ``p |b|``, a gradient scaled by the wrong ``grad_output`` by
``|G|``, a bfloat16 accumulator in a float32 kernel by ``2^-9 |dW|``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core import lowp
from gradcheck_cli.core.layer import Layer
from gradcheck_cli.core.softmax import logsumexp, softmax
from gradcheck_cli.core.softmax_ce import (
    CrossEntropyProblem,
    capped,
    contributions,
    float64_scales,
    label_columns,
    label_weights,
    mean_normalizers,
    per_sample_loss,
    rows_of,
    weighted_targets,
)
from gradcheck_cli.methods.analytic import analytic_gradient

FloatArray = NDArray[np.float64]

#: Values per row chunk (2^22: 32 MiB in float64).
ROW_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Roundoff:
    """Unit roundoffs of a kernel's storage (``u``) and of its sums (``a``)."""

    u: float
    a: float

    @classmethod
    def of(cls, dtype: str) -> Roundoff:
        """Storage in ``dtype``; sums in float64 for float64, float32 otherwise."""
        u = float(np.finfo(np.dtype(dtype)).eps) / 2
        a = u if dtype == "float64" else float(np.finfo(np.float32).eps) / 2
        return cls(u, a)


@dataclass(frozen=True, eq=False)
class LinearResult:
    """The loss and the gradients of one evaluation, by the layer's internal names."""

    loss: FloatArray
    """Shape () for ``mean`` and ``sum``, (N,) for ``none``."""
    grads: dict[str, FloatArray]
    """``inputs`` (N, D), ``weights`` (D, V), ``bias`` (V,) (when the layer has one)."""
    budget: dict[str, FloatArray] | None = None
    """Per-element error budgets, the same keys and shapes plus ``loss`` (see the module
    docstring); None when not asked for."""
    max_logit: float | None = None
    """``max |z|`` over the finite logits (with the budgets only)."""


def row_chunks(n: int, v: int, rows_per: int | None = None) -> Iterator[slice]:
    """Slices of ``rows_per`` rows (default: as many as fit in ``ROW_CHUNK_ELEMENTS``)."""
    step = rows_per or max(1, ROW_CHUNK_ELEMENTS // max(v, 1))
    for s in range(0, n, step):
        yield slice(s, min(s + step, n))


def _loss_of(template: CrossEntropyProblem, parts: list[FloatArray]) -> FloatArray:
    """The reduced loss from the chunks' contributions (or per-sample losses for ``none``),
    with the 0/0 of an empty ``mean`` as :func:`~gradcheck_cli.core.softmax_ce.reduce_loss`
    gives it."""
    rows = np.concatenate(parts) if parts else np.zeros(0)
    if template.reduction == "none":
        return rows
    if template.reduction == "mean" and mean_normalizers(template)[0] == 0.0:
        return np.asarray(0.0 if template.empty_mean == "zero" else np.nan)
    return np.asarray(float(np.sum(rows)))


def _chunk(
    template: CrossEntropyProblem,
    rows: slice,
    scales: tuple[FloatArray, FloatArray],
    z: np.ndarray,
) -> CrossEntropyProblem:
    part = rows_of(template, rows, scales, str(z.dtype), logits=z)
    return replace(part, row_scales=(scales[0][rows], scales[1][rows]))


def _row_losses(chunk: CrossEntropyProblem) -> FloatArray:
    """The chunk's rows' shares of the loss (per-sample losses for ``none`` without a mask,
    as ``reduce_loss`` reports them)."""
    if chunk.reduction == "none" and chunk.loss_mask is None:
        return per_sample_loss(chunk)
    return contributions(chunk)


def template_problem(problem: CrossEntropyProblem) -> CrossEntropyProblem:
    """``problem`` with zero-strided placeholder logits of its shape: labels, targets and
    options without an (N, V) array (the chunks compute their own logits)."""
    placeholder = np.broadcast_to(np.zeros((), dtype=np.float64), problem.shape)
    return replace(problem, logits=placeholder, row_scales=None)


def reference(
    layer: Layer,
    template: CrossEntropyProblem,
    upstream: FloatArray | None = None,
    roundoff: Roundoff | None = None,
    rows_per: int | None = None,
) -> LinearResult:
    """The loss and the gradients of ``sum_n u_n l_n`` (``upstream`` u: None for 1, a scalar,
    or (N,) per sample) in float64, chunk by chunk; with ``roundoff``, the error budgets too.

    ``layer`` holds the inputs in float64 (the kernel's inputs, rounded to its dtype and
    widened); ``template`` the labels and options (:func:`template_problem`)."""
    x, w, b = layer.inputs, layer.weights, layer.bias
    n, d, v = layer.shape
    scales = float64_scales(template)
    factor = _upstream_rows(upstream, n)
    d_h = np.zeros((n, d))
    d_w = np.zeros((d, v))
    d_b = np.zeros(v)
    parts: list[FloatArray] = []
    bound = None if roundoff is None else _Budget(layer, template, roundoff)
    for rows in row_chunks(n, v, rows_per):
        z = x[rows] @ w
        if b is not None:
            z += b
        chunk = _chunk(template, rows, scales, z)
        g = analytic_gradient(chunk).grad
        parts.append(_row_losses(chunk))
        if factor is not None:
            g *= factor[rows, None]
        d_h[rows] = g @ w.T
        d_w += x[rows].T @ g
        d_b += np.sum(g, axis=0)
        if bound is not None:
            bound.add(rows, chunk, g, None if factor is None else factor[rows])
    grads: dict[str, FloatArray] = {"weights": d_w, "inputs": d_h}
    if b is not None:
        grads["bias"] = d_b
    loss = _loss_of(template, parts)
    if bound is None:
        return LinearResult(loss, grads)
    budget = bound.finish(grads, loss, np.concatenate(parts))
    return LinearResult(loss, grads, budget, bound.max_logit)


def _upstream_rows(upstream: FloatArray | None, n: int) -> FloatArray | None:
    if upstream is None:
        return None
    values = np.asarray(upstream, dtype=np.float64)
    return np.full(n, float(values)) if values.ndim == 0 else values.reshape(n)


class _Budget:
    """The error budgets of :func:`reference`, accumulated over its chunks."""

    def __init__(self, layer: Layer, template: CrossEntropyProblem, r: Roundoff) -> None:
        self.layer, self.r = layer, r
        n, d, v = layer.shape
        self.h_norm = np.linalg.norm(layer.inputs, axis=1)
        self.w_norm = np.linalg.norm(layer.weights, axis=0)
        self.abs_b = np.zeros(v) if layer.bias is None else np.abs(layer.bias)
        # magnitudes only: float32 products are accurate enough and twice as fast, unless the
        # logits could leave float32's range (|z| <= ||h|| ||w|| + |b|)
        top = float(np.max(self.h_norm, initial=0.0)) * float(np.max(self.w_norm, initial=0.0))
        self.t = np.float32 if top + float(np.max(self.abs_b, initial=0.0)) < 1e30 else np.float64
        self.w_norm = self.w_norm.astype(self.t)
        self.abs_w = np.abs(layer.weights).astype(self.t)
        self.abs_x = np.abs(layer.inputs).astype(self.t)
        self.max_logit = 0.0
        self.h = np.zeros((n, d))
        self.w = np.zeros((d, v))
        self.b = np.zeros(v)
        self.loss_rows: list[FloatArray] = []
        self.z_loss = template.z_loss

    def add(
        self, rows: slice, chunk: CrossEntropyProblem, g: FloatArray, factor: FloatArray | None
    ) -> None:
        """Accumulate one chunk's budgets (in float32: these are magnitudes, and their own
        relative rounding of 1e-7 is immaterial)."""
        r, (n, _, v) = self.r, self.layer.shape
        f32 = self.t
        z = chunk.logits
        zc = capped(chunk, z)
        lse = logsumexp(zc)
        p = softmax(zc.astype(f32))
        abs_z = np.abs(z.astype(f32))
        finite = bool(np.all(np.isfinite(abs_z)))
        if not finite:  # a -inf lane is exact: p = 0 there in any kernel
            abs_z[~np.isfinite(abs_z)] = 0.0
        self.max_logit = max(self.max_logit, float(np.max(abs_z, initial=0.0)))
        delta = np.multiply.outer((r.a * self.h_norm[rows]).astype(f32), self.w_norm)
        delta += r.u * abs_z
        delta += (r.a * self.abs_b).astype(f32)
        # the row's p-weighted logit error, and the normaliser's own sum over V (its rounding
        # scales every p of the row alike: a sqrt(V) relative)
        spread = np.einsum("ij,ij->i", p, delta) + float(r.a * np.sqrt(v))
        alpha, beta = (np.abs(s) for s in chunk.row_scales or (0.0, 0.0))
        coef = alpha + 2.0 * self.z_loss * beta * (np.abs(lse) + 1.0)
        if factor is not None:
            coef = coef * np.abs(factor)
        abs_g: FloatArray = np.abs(g).astype(f32)
        e = delta + spread[:, None]
        e *= p
        e *= coef.astype(f32)[:, None]
        e += r.u * abs_g
        self.h[rows] = (e + float(r.a * np.sqrt(v)) * abs_g) @ self.abs_w.T
        e += float(r.a * np.sqrt(n)) * abs_g
        self.w += self.abs_x[rows].T @ e
        self.b += np.sum(e, axis=0, dtype=np.float64)
        if chunk.one_hot:  # q = w_y at the label: gather
            cols = label_columns(chunk)
            at = np.arange(cols.size)
            mass = label_weights(chunk).astype(np.float64)
            gathered = mass * (delta[at, cols] + r.a * abs_z[at, cols])
        else:
            q = weighted_targets(chunk)
            mass = np.sum(q, axis=-1)
            gathered = np.sum(np.where(q > 0, q * (delta + r.a * abs_z), 0.0), axis=-1)
        per = alpha * (spread * mass + gathered + r.a * np.abs(lse) * mass)
        per += 2.0 * self.z_loss * beta * np.abs(lse) * (spread + r.a * np.abs(lse))
        self.loss_rows.append(per)

    def finish(
        self, grads: dict[str, FloatArray], loss: FloatArray, shares: FloatArray
    ) -> dict[str, FloatArray]:
        u, a = self.r.u, self.r.a
        out = {
            "inputs": self.h + u * np.abs(grads["inputs"]),
            "weights": self.w + u * np.abs(grads["weights"]),
        }
        if "bias" in grads:
            out["bias"] = self.b + u * np.abs(grads["bias"])
        per = np.concatenate(self.loss_rows) if self.loss_rows else np.zeros(0)
        with np.errstate(invalid="ignore"):
            if loss.ndim:
                out["loss"] = per + u * np.abs(np.nan_to_num(loss, posinf=0.0))
            else:
                total = float(np.sum(per)) + a * np.sqrt(per.size) * float(np.sum(np.abs(shares)))
                out["loss"] = np.asarray(total + u * abs(float(np.nan_to_num(loss, posinf=0.0))))
        return out


def forward_loss(
    layer: Layer, template: CrossEntropyProblem, rows_per: int | None = None
) -> FloatArray:
    """The loss alone, chunk by chunk in float64 (the directional differences' black box)."""
    x, w, b = layer.inputs, layer.weights, layer.bias
    n, _, v = layer.shape
    scales = float64_scales(template)
    parts = []
    for rows in row_chunks(n, v, rows_per):
        z = x[rows] @ w
        if b is not None:
            z += b
        parts.append(_row_losses(_chunk(template, rows, scales, z)))
    return _loss_of(template, parts)


def baseline(
    layer: Layer,
    template: CrossEntropyProblem,
    dtype: str,
    upstream: FloatArray | None = None,
    rows_per: int | None = None,
) -> LinearResult:
    """The naive baseline of a fused kernel in ``dtype`` (float32, float16 or bfloat16), as
    Liger-Kernel's own tests build their reference: ``F.linear`` in the dtype (float32 sums,
    the logits rounded to the dtype), the cross-entropy on the float32 up-cast, its gradient
    rounded back to the dtype (the up-cast's backward), and ``G W^T``, ``H^T G``, ``sum G`` with
    float32 sums over the whole batch, each rounded once to the dtype. ``layer`` holds the
    kernel's inputs (already representable in ``dtype``). Results widened to float64."""
    lowp.register(dtype)
    f32 = np.float32
    x = layer.inputs.astype(f32)
    w = layer.weights.astype(f32)
    b = None if layer.bias is None else layer.bias.astype(f32)
    n, d, v = layer.shape
    scales = float64_scales(template)
    factor = _upstream_rows(upstream, n)
    d_h = np.zeros((n, d))
    d_w = np.zeros((d, v), dtype=f32)
    d_b = np.zeros(v, dtype=f32)
    parts: list[FloatArray] = []
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for rows in row_chunks(n, v, rows_per):
            z = x[rows] @ w
            if b is not None:
                z += b
            z = z.astype(dtype).astype(f32)
            chunk = _chunk(template, rows, scales, z)
            g = analytic_gradient(chunk).grad
            parts.append(_row_losses(chunk).astype(np.float64))
            if factor is not None:
                g = g * factor[rows, None].astype(f32)
            g = g.astype(dtype).astype(f32)
            d_h[rows] = (g @ w.T).astype(dtype).astype(np.float64)
            d_w += x[rows].T @ g
            d_b += np.sum(g, axis=0, dtype=f32)
    grads: dict[str, FloatArray] = {
        "weights": d_w.astype(dtype).astype(np.float64),
        "inputs": d_h,
    }
    if b is not None:
        grads["bias"] = d_b.astype(dtype).astype(np.float64)
    return LinearResult(_loss_of(template, parts), grads)
