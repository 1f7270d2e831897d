"""Shared types of the gradient methods."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


class NotComputable(Exception):
    """A method cannot produce a meaningful gradient for this problem; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class GradientOutput:
    """What a gradient method produced."""

    grad: NDArray[np.float64]
    """Gradient of the reduced loss with respect to the logits, shape (N, K)."""
    note: str | None = None
    """How it was computed, where that matters to a reader (step rule, chunking)."""
