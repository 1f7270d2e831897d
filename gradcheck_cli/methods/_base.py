"""Shared types of the gradient methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Scheme = Literal["forward", "central", "richardson"]
SCHEMES: tuple[Scheme, ...] = ("forward", "central", "richardson")


class NotComputable(Exception):
    """A method cannot produce a meaningful gradient for this problem; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MethodSettings:
    """Choices that change how a method computes (set per spec)."""

    fd_scheme: Scheme = "central"
    """Finite-difference stencil."""
    fd_step: float | None = None
    """Relative finite-difference step factor (the step is ``factor * max(1, |z|)``); None picks
    the scheme's automatic factor."""
    columns: NDArray[np.intp] | None = None
    """Sampled coordinates: the classes (sorted, unique) whose derivatives the differencing
    methods (finite differences, complex step) compute in every row, the other entries nan;
    None: every class (``differences.sample_columns``)."""


DEFAULT_SETTINGS = MethodSettings()


@dataclass(frozen=True, eq=False)
class GradientOutput:
    """What a gradient method produced."""

    grad: NDArray[np.float64]
    """Gradient of the reduced loss with respect to the logits, shape (N, K)."""
    note: str | None = None
    """How it was computed, where that matters to a reader (step rule, chunking)."""
