"""``--impl jax:module:function`` and ``--impl optax``: a JAX loss as it is, differentiated by
``jax.vjp``.

The function takes JAX arrays and returns the **loss only** (a scalar, or per-sample for
``reduction: none``), like the PyTorch protocol of ``torch_native``; xentcheck pulls a seeded
``grad_output`` back through ``jax.vjp``. Float64 specs run inside ``jax.enable_x64(True)``
(only for that call: JAX's global default stays float32), so float64 logits are not silently
rounded to float32. JAX arrays are immutable, so there are no in-place side effects to check;
determinism (two identical calls) is checked. jax is imported only here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradcheck_cli.errors import XentcheckError
from gradcheck_cli.torch_native import Previous, call_spread


def _jax() -> Any:
    try:
        import jax
    except ImportError:
        raise XentcheckError(
            "--impl jax:... and --impl optax need JAX, which is not installed (pip install jax "
            "optax)"
        ) from None
    return jax


def _device(name: str) -> Any:
    """The JAX device ``name`` names (``cpu``, ``cuda``/``gpu``, ``tpu``, with ``:N``), or a
    clear error when this machine's JAX has none."""
    jax = _jax()
    kind, _, index = name.partition(":")
    platform = {"cuda": "gpu"}.get(kind, kind)
    if platform not in ("cpu", "gpu", "tpu"):
        raise XentcheckError(f"--device {name}: expected cpu, cuda, cuda:N, gpu or tpu for JAX")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    number = int(index) if index.isdigit() else 0
    if number >= len(devices):
        raise XentcheckError(
            f"--device {name}: JAX sees {len(devices)} {platform} device(s) here "
            f"(jax.devices(): {', '.join(str(d) for d in jax.devices())})"
        )
    return devices[number]


class JaxNative:
    """A framework-native JAX loss behind xentcheck's ``(loss, grad)`` protocol."""

    def __init__(self, function: Callable[..., Any], device: str = "cpu") -> None:
        self.function = function
        self.device = _device(device)

    def __call__(
        self, logits: np.ndarray, *, grad_output: np.ndarray | None = None, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The loss and the gradient of ``sum(grad_output * loss)`` as NumPy arrays."""
        jax = _jax()
        import jax.numpy as jnp

        with jax.enable_x64(logits.dtype == np.float64 or np.iscomplexobj(logits)):
            z, given = self._place(logits, options)
            loss, pullback = jax.vjp(lambda x: self.function(x, **given), z)
            upstream = (
                jnp.ones_like(loss)
                if grad_output is None
                else jnp.asarray(grad_output, dtype=loss.dtype).reshape(loss.shape)
            )
            (grad,) = pullback(upstream)
            return np.asarray(loss), np.asarray(grad)

    def linear(
        self,
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None],
        grad_output: np.ndarray | None,
        options: dict[str, Any],
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """A fused linear cross-entropy ``f(hidden, weight, bias, **options) -> loss``: the
        loss and the pull-backs of ``grad_output`` for hidden, weight and bias (None for an
        absent bias)."""
        jax = _jax()
        import jax.numpy as jnp

        hidden, weight, bias = arrays
        with jax.enable_x64(hidden.dtype == np.float64):
            h, given = self._place(hidden, options)
            w = self._place(weight, {})[0]
            if bias is None:
                loss, pullback = jax.vjp(lambda a, b: self.function(a, b, None, **given), h, w)
            else:
                b = self._place(bias, {})[0]
                loss, pullback = jax.vjp(lambda a, b, c: self.function(a, b, c, **given), h, w, b)
            upstream = (
                jnp.ones_like(loss)
                if grad_output is None
                else jnp.asarray(grad_output, dtype=loss.dtype).reshape(loss.shape)
            )
            grads: list[np.ndarray | None] = [np.asarray(g) for g in pullback(upstream)]
            if bias is None:
                grads.append(None)
            return np.asarray(loss), grads

    def forward(self, logits: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        """The loss alone (no pull-back)."""
        jax = _jax()

        with jax.enable_x64(logits.dtype == np.float64 or np.iscomplexobj(logits)):
            z, given = self._place(logits, options)
            return np.asarray(self.function(z, **given))

    def _place(self, logits: np.ndarray, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The logits and the array options as JAX arrays on the device (inside the caller's
        x64 setting); other options as they are."""
        jax = _jax()
        import jax.numpy as jnp

        def put(value: Any) -> Any:
            return jax.device_put(jnp.asarray(value), self.device)

        return put(logits), {
            k: put(v) if isinstance(v, np.ndarray) else v for k, v in options.items()
        }

    def side_effects(
        self,
        logits: np.ndarray,
        grad_output: np.ndarray | None,
        options: dict[str, Any],
        previous: Previous = None,
    ) -> tuple[list[str], float]:
        """No side effects are possible (immutable arrays); the spread of two identical calls
        (this one and ``previous``: ``torch_native.call_spread``)."""
        loss1, grad1 = self(logits, grad_output=grad_output, **options)
        again = lambda: self(logits, grad_output=grad_output, **options)  # noqa: E731
        return [], call_spread(loss1, grad1, previous, again)

    def views(
        self, logits: np.ndarray, grad_output: np.ndarray | None, options: dict[str, Any]
    ) -> float:
        """JAX copies its inputs into its own buffers: a strided NumPy view must agree."""
        from gradcheck_cli.torch_native import _spread

        loss, grad = self(logits, grad_output=grad_output, **options)
        wide = np.zeros((logits.shape[0], 2 * logits.shape[1]), dtype=logits.dtype)
        wide[:, ::2] = logits
        loss2, grad2 = self(wide[:, ::2], grad_output=grad_output, **options)
        return max(_spread(loss, loss2), _spread(grad, grad2))


def optax_loss(
    logits: Any,
    *,
    reduction: str,
    loss: str = "softmax_cross_entropy",
    labels: Any = None,
    targets: Any = None,
    label_smoothing: float = 0.0,
    empty_mean: str = "nan",
) -> Any:
    """optax's own losses (``--impl optax``): ``softmax_cross_entropy_with_integer_labels``
    for labels, ``softmax_cross_entropy`` for probability targets (label smoothing through
    ``optax.smooth_labels``), ``sigmoid_binary_cross_entropy`` for sigmoid specs; the
    reduction is a plain mean or sum over the per-sample (per-element) losses. optax has no
    class weights, ignore_index, softcap, z-loss, pos_weight, num_items_in_batch or loss mask
    (its ``where`` masks classes, not samples): a spec that sets one is an error naming it
    (this signature does not take them). ``empty_mean`` is taken and has no effect: with only
    the options optax has, every sample counts, so the mean's divisor is N >= 1 and never 0."""
    del empty_mean  # nothing to average never happens here (see above)
    import jax.numpy as jnp
    import optax

    k = logits.shape[-1]
    if loss == "sigmoid_cross_entropy":
        per = optax.sigmoid_binary_cross_entropy(logits, targets)
    elif labels is not None and not label_smoothing:
        per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    else:
        dist = targets if labels is None else jnp.eye(k, dtype=logits.dtype)[labels]
        if label_smoothing:
            dist = optax.smooth_labels(dist, label_smoothing)
        per = optax.softmax_cross_entropy(logits, dist)
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()


def optax_linear_loss(
    hidden: Any,
    weight: Any,
    bias: Any = None,
    *,
    weight_layout: str = "vd",
    class_weight: Any = None,
    **options: Any,
) -> Any:
    """``--impl optax`` on a ``linear:`` spec: the logits in the inputs' dtype, then
    :func:`optax_loss` on them up-cast to at least float32."""
    import jax.numpy as jnp

    if class_weight is not None:
        options["weight"] = class_weight  # optax has none: an error naming the option
    z = hidden @ (weight.T if weight_layout == "vd" else weight)
    if bias is not None:
        z = z + bias
    return optax_loss(z.astype(jnp.promote_types(z.dtype, jnp.float32)), **options)
