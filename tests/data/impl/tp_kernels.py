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


def _reference() -> Any:
    """examples/vocab_parallel_ce.py's correct kernel (loaded by path: this file is too)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "examples" / "vocab_parallel_ce.py"
    spec = importlib.util.spec_from_file_location("_tp_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.vocab_parallel_ce


def shifts_in_place(
    logits: Any, labels: Any, *, group: Any, vocab_start: int, vocab_end: int, **o: Any
) -> Any:
    """Correct, but rank 1 subtracts 1 from its logits in place after the call (a fused kernel
    that reuses its input as a workspace)."""
    import torch.distributed as dist

    loss = _reference()(logits, labels, group=group, vocab_start=vocab_start,
                        vocab_end=vocab_end, **o)  # fmt: skip
    if dist.get_rank(group) == 1:
        logits.data.sub_(1.0)
    return loss


_calls = [0]


def drifts(
    logits: Any, labels: Any, *, group: Any, vocab_start: int, vocab_end: int, **o: Any
) -> Any:
    """Correct except on its second call, when rank 0 adds 1e-9 to the loss (a kernel whose
    atomics reorder its sums now and then)."""
    import torch.distributed as dist

    loss = _reference()(logits, labels, group=group, vocab_start=vocab_start,
                        vocab_end=vocab_end, **o)  # fmt: skip
    _calls[0] += 1
    if dist.get_rank(group) == 0 and _calls[0] == 2:
        return loss + 1e-9
    return loss


def ignores_offset(
    logits: Any, labels: Any, *, group: Any, vocab_start: int, vocab_end: int, **o: Any
) -> Any:
    """Reads the labels from the start of their storage (a kernel given ``labels.data_ptr()``
    of the base, not of the view): wrong on ``labels[1:]`` of a longer tensor."""
    import torch

    base = torch.as_strided(labels, labels.shape, (1,), 0)  # storage offset dropped
    return _reference()(logits, base.clone(), group=group, vocab_start=vocab_start,
                        vocab_end=vocab_end, **o)  # fmt: skip
