"""Framework-native JAX losses for --impl jax:...: a correct one, and a custom_vjp whose
backward broadcasts grad_output[0] (the Liger-Kernel #1298 shape, in JAX)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def cross_entropy(logits: Any, *, labels: Any, reduction: str) -> Any:
    logp = jax.nn.log_softmax(logits, axis=-1)
    per = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()


@jax.custom_vjp
def _per_sample(logits: Any, labels: Any) -> Any:
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _forward(logits: Any, labels: Any) -> Any:
    return _per_sample(logits, labels), (logits, labels)


def _backward(saved: Any, g: Any) -> Any:
    logits, labels = saved
    grad = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(labels, logits.shape[-1])
    return grad * g[0], None  # bug: every row scaled by the first row's grad_output


_per_sample.defvjp(_forward, _backward)


def first_grad_output(logits: Any, *, labels: Any, reduction: str) -> Any:
    per = _per_sample(logits, labels)
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()
