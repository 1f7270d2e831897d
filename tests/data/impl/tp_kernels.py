"""Hostile vocabulary-parallel kernels for --tensor-parallel: one rank hangs, aborts or raises."""

from __future__ import annotations

import os
import time
from typing import Any


def hangs(
    logits: Any, labels: Any, *, group: Any, vocab_start: int, vocab_end: int, **o: Any
) -> Any:
    """Rank 1 never returns (the others then wait in no collective: they finish)."""
    import torch.distributed as dist

    if dist.get_rank(group) == 1:
        time.sleep(3600)
    return logits.sum() * 0


def aborts(
    logits: Any, labels: Any, *, group: Any, vocab_start: int, vocab_end: int, **o: Any
) -> Any:
    """Rank 1 dies of SIGABRT (a C++ assertion)."""
    import torch.distributed as dist

    if dist.get_rank(group) == 1:
        os.abort()
    return logits.sum() * 0


def raises(
    logits: Any, labels: Any, *, group: Any, vocab_start: int, vocab_end: int, **o: Any
) -> Any:
    """Every rank raises."""
    raise ValueError(f"shard {vocab_start}:{vocab_end} is not supported")
