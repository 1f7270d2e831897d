"""A linear layer in front of the loss (``layer:`` specs): logits = inputs @ weights + bias."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Layer:
    """A linear layer in front of the loss: ``logits = inputs @ weights + bias``."""

    inputs: FloatArray
    """Shape (N, D); a single input vector is stored as N = 1."""
    weights: FloatArray
    """Shape (D, K), in this layout (row d holds the weights from input d to every class)."""
    bias: FloatArray | None = None
    """Shape (K,)."""

    def logits(self) -> FloatArray:
        """``inputs @ weights + bias``, shape (N, K) (inf where it overflows; callers check)."""
        with np.errstate(over="ignore", invalid="ignore"):
            z: FloatArray = self.inputs @ self.weights
            return z if self.bias is None else z + self.bias
