"""A linear layer in front of the loss: logits = inputs @ weights + bias.

Two spellings of one layer (docs/spec.md): ``layer: {inputs, weights, bias}`` with the weights in
the (D, K) layout, and ``linear: {hidden, weight, bias}``, the fused lm_head + cross-entropy of
LLM training, with the weight in PyTorch's ``nn.Linear`` (V, D) layout (``weight_layout: dv``
takes (D, V)). Both are stored the same way, weights (D, K); ``fused`` and ``layout`` say how the
spec gave them, which is how an implementation receives them and how gradients are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
Layout = Literal["vd", "dv"]
LAYOUTS: tuple[Layout, ...] = ("vd", "dv")


@dataclass(frozen=True, eq=False)
class Layer:
    """A linear layer in front of the loss: ``logits = inputs @ weights + bias``."""

    inputs: FloatArray
    """Shape (N, D); a single input vector is stored as N = 1."""
    weights: FloatArray
    """Shape (D, K), in this layout (row d holds the weights from input d to every class); for
    a ``linear:`` spec in the (V, D) layout this is a transposed view of the given array."""
    bias: FloatArray | None = None
    """Shape (K,)."""
    fused: bool = False
    """True for a ``linear:`` spec: ``--impl`` gets (hidden, weight, bias), not the logits, and
    the parameters are named hidden, weight and bias."""
    layout: Layout = "dv"
    """How the spec gave the weight: ``vd`` (V, D), PyTorch's, or ``dv`` (D, V)."""

    def logits(self) -> FloatArray:
        """``inputs @ weights + bias``, shape (N, K) (inf where it overflows; callers check)."""
        with np.errstate(over="ignore", invalid="ignore"):
            z: FloatArray = self.inputs @ self.weights
            return z if self.bias is None else z + self.bias

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, D, K)``."""
        n, d = self.inputs.shape
        return n, d, self.weights.shape[1]

    def names(self) -> dict[str, str]:
        """The parameters' names in reports, by their internal names."""
        if self.fused:
            return {"weights": "weight", "bias": "bias", "inputs": "hidden"}
        return {"weights": "weights", "bias": "bias", "inputs": "inputs"}

    def given_weight(self, dk: np.ndarray) -> np.ndarray:
        """A (D, K) weight-shaped array in the layout the spec gave the weight."""
        return dk.T if self.layout == "vd" else dk
