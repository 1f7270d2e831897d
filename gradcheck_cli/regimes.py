"""Logits and labels built deterministically from a seed, in the regimes where cross-entropy
kernels break: confident rows, large logit gaps, -inf padding lanes, uniform and tied rows.

Pure NumPy (no YAML, no I/O): the spec loader validates ``regime:`` and calls :func:`generate`;
anything else (a search for failing inputs) can call it the same way.

Construction, for ``rows`` N and ``num_classes`` K:

* Labels are drawn uniformly from the allowed classes (for ``masked`` never a padded lane; never
  ``ignore_index`` itself when it is a class), by the first child of ``SeedSequence(seed)``;
  with ``ignored`` a fraction f, round(f * N) rows drawn by the same stream get ``ignore_index``
  instead (their logits are built as for any other row).
* The other logits are standard normal draws in float32, in blocks of rows, each block from its
  own child of ``SeedSequence(seed)`` (so the blocks can be drawn on all cores and the values
  depend neither on the number of threads nor on the check's dtype), then rounded to the check's
  dtype (float64: widened, exactly).
* ``confident``: the label's logit is solved for, in float64, from the other logits *as rounded
  to the check's dtype*: z_y = log(p / (1 - p)) + logsumexp(z_j, j != y), so that softmax gives
  p_y = p (in float64 to rounding, about 1e-16). In a lower dtype z_y is rounded upwards, so
  p_y >= p still holds for the logits the check sees (and exceeds p by at most one rounding of
  z_y: up to 12% of 1 - p in bfloat16, whose spacing is 1/8 for z_y from 16 to 32).
* ``large-gap``: the normals times ``scale``.
* ``masked``: the last ``pad`` lanes of every row are -inf; with ``p`` the label is also made
  confident over the live lanes, as above.
* ``uniform``: every logit 0 (p = 1/K exactly).
* ``tied``: the label and one other class (drawn uniformly) both get max(row) + 1, rounded to
  the dtype: the two largest logits tie exactly, one lane above the rest.

Storage is the check's dtype (float64, float32, float16 or bfloat16): a bfloat16 batch of
4096 x 32000 is 262 MB, and no float64 array larger than a block of about 2 million values is
made for it.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradcheck_cli.core.lowp import bfloat16

KINDS = ("confident", "large-gap", "masked", "uniform", "tied")
#: The parameters every kind takes; ``rows`` and ``num_classes`` are required.
COMMON = ("kind", "rows", "num_classes", "seed", "ignored")
#: Each kind's own parameters: (required, optional).
PARAMETERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "confident": (("p",), ()),
    "large-gap": (("scale",), ()),
    "masked": (("pad",), ("p",)),
    "uniform": ((), ()),
    "tied": ((), ()),
}
#: What each parameter is, for messages and the JSON Schema.
DESCRIPTIONS: dict[str, str] = {
    "kind": " | ".join(KINDS),
    "rows": "number of rows N (integer >= 1)",
    "num_classes": "number of classes K (integer >= 2)",
    "seed": "integer >= 0 (default 0): the same seed gives the same logits and labels",
    "ignored": "fraction of rows labelled ignore_index, in [0, 1] (default 0)",
    "p": "the label's probability, in (1/K, 1) (K: the unmasked classes)",
    "scale": "the logits' standard deviation (number > 0)",
    "pad": "number of -inf lanes at the end of every row (1 to K - 1)",
}
#: Rows per block of normals: a block holds about this many values, whatever K is.
BLOCK_VALUES = 1 << 21
MAX_SEED = 2**64


class RegimeError(ValueError):
    """An invalid regime; ``field`` names the parameter at fault (``kind``, ``p``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Regime:
    """One regime's parameters (see the module docstring for what each kind builds)."""

    kind: str
    rows: int
    num_classes: int
    seed: int = 0
    p: float | None = None
    scale: float | None = None
    pad: int | None = None
    ignored: float = 0.0


def storage_dtype(dtype: str) -> np.dtype[Any]:
    """The NumPy dtype the logits are built in for a check in ``dtype``."""
    return bfloat16() if dtype == "bfloat16" else np.dtype(dtype)


def nbytes(regime: Regime, dtype: str) -> int:
    """Size of the logits :func:`generate` builds (for the loader's memory cap)."""
    return regime.rows * regime.num_classes * storage_dtype(dtype).itemsize


def validate(regime: Regime, ignore_index: int | None = None) -> None:
    """Raise :class:`RegimeError` for a regime :func:`generate` cannot build."""
    if regime.kind not in KINDS:
        raise RegimeError("kind", f"expected one of {' | '.join(KINDS)}, found {regime.kind!r}")
    required, optional = PARAMETERS[regime.kind]
    given = {name for name in ("p", "scale", "pad") if getattr(regime, name) is not None}
    for name in sorted(given - set(required) - set(optional)):
        raise RegimeError(name, f"does not apply to kind {regime.kind}")
    for name in required:
        if name not in given:
            what = DESCRIPTIONS[name]
            raise RegimeError(name, f"missing required key for kind {regime.kind}: {what}")
    if regime.rows < 1:
        raise RegimeError("rows", f"expected an integer >= 1, found {regime.rows}")
    k = regime.num_classes
    if k < 2:
        raise RegimeError("num_classes", f"expected an integer >= 2, found {k}")
    if not 0 <= regime.seed < MAX_SEED:
        raise RegimeError("seed", f"expected an integer from 0 to 2**64 - 1, found {regime.seed}")
    if regime.pad is not None and not 1 <= regime.pad < k:
        raise RegimeError("pad", f"expected an integer from 1 to {k - 1}, found {regime.pad}")
    live = k - (regime.pad or 0)
    if regime.p is not None and not (1.0 / live < regime.p < 1.0):
        raise RegimeError(
            "p",
            f"expected a probability in (1/{live}, 1) = ({1.0 / live:.6g}, 1), found {regime.p:g}",
        )
    if regime.scale is not None and not (math.isfinite(regime.scale) and regime.scale > 0):
        raise RegimeError("scale", f"expected a finite number > 0, found {regime.scale:g}")
    if not 0.0 <= regime.ignored <= 1.0:
        raise RegimeError("ignored", f"expected a fraction in [0, 1], found {regime.ignored:g}")
    if regime.ignored > 0 and ignore_index is None:
        raise RegimeError("ignored", "needs the spec's ignore_index (e.g. ignore_index: -100)")
    if len(_allowed(regime, ignore_index)) < (2 if regime.kind == "tied" else 1):
        raise RegimeError("num_classes", f"no class left to label (ignore_index {ignore_index})")


def generate(
    regime: Regime, dtype: str = "float64", ignore_index: int | None = None
) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """The logits (N, K) in ``dtype`` and the labels (N,) of ``regime``; deterministic in its
    parameters. Raises :class:`RegimeError` for an invalid regime or logits that overflow
    ``dtype`` (``large-gap`` with a large scale)."""
    validate(regime, ignore_index)
    n, k = regime.rows, regime.num_classes
    store = storage_dtype(dtype)
    label_seq, *block_seqs = np.random.SeedSequence(regime.seed).spawn(1 + _blocks(n, k)[1])
    rng = np.random.Generator(np.random.PCG64(label_seq))
    allowed = _allowed(regime, ignore_index)
    labels = allowed[rng.integers(0, len(allowed), n)]
    partners = None
    if regime.kind == "tied":  # a second class, never the label
        partners = (labels + rng.integers(1, k, n)) % k
    out = np.empty((n, k), dtype=store)
    step, count = _blocks(n, k)
    scratch = _Scratch()

    def fill(i: int) -> float:
        rows = slice(i * step, min(n, (i + 1) * step))
        block_rng = np.random.Generator(np.random.PCG64(block_seqs[i]))
        partner = None if partners is None else partners[rows]
        return _fill_block(regime, out[rows], labels[rows], partner, block_rng, scratch)

    if count == 1:
        peaks = [fill(0)]
    else:
        with ThreadPoolExecutor(max_workers=min(count, os.cpu_count() or 1)) as pool:
            peaks = list(pool.map(fill, range(count)))
    if regime.kind == "large-gap":
        top = float(np.finfo(store).max)
        if max(peaks) * regime.scale > top:  # type: ignore[operator]
            raise RegimeError(
                "scale",
                f"logits up to {max(peaks) * regime.scale:g} overflow {dtype} "  # type: ignore[operator]
                f"(largest {top:g}): lower the scale",
            )
    if regime.ignored > 0:
        assert ignore_index is not None
        count_ignored = round(regime.ignored * n)
        labels[rng.choice(n, count_ignored, replace=False)] = ignore_index
    return out, labels.astype(np.int64)


def _blocks(n: int, k: int) -> tuple[int, int]:
    """(rows per block, number of blocks)."""
    step = max(1, BLOCK_VALUES // k)
    return step, -(-n // step)


def _allowed(regime: Regime, ignore_index: int | None) -> NDArray[np.int64]:
    """The classes a label may be drawn from: the live lanes, without ignore_index."""
    allowed = np.arange(regime.num_classes - (regime.pad or 0), dtype=np.int64)
    return allowed[allowed != ignore_index] if ignore_index is not None else allowed


class _Scratch(threading.local):
    """Per-thread buffers, reused from block to block (fresh large arrays cost page faults)."""

    normals: NDArray[np.float32] | None = None
    wide: NDArray[np.float64] | None = None

    def get(self, shape: tuple[int, int]) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
        if (
            self.normals is None
            or self.normals.shape[1] != shape[1]
            or (len(self.normals) < shape[0])
        ):
            self.normals = np.empty(shape, dtype=np.float32)
            self.wide = np.empty(shape, dtype=np.float64)
        assert self.wide is not None
        return self.normals[: shape[0]], self.wide[: shape[0]]


def _fill_block(
    regime: Regime,
    out: NDArray[Any],
    labels: NDArray[np.int64],
    partners: NDArray[np.int64] | None,
    rng: np.random.Generator,
    scratch: _Scratch,
) -> float:
    """Build one block of rows in place; return its largest |normal| (for the overflow check)."""
    if regime.kind == "uniform":
        out[...] = 0
        return 0.0
    normals, wide = scratch.get(out.shape)
    rng.standard_normal(out.shape, dtype=np.float32, out=normals)
    peak = float(max(np.max(normals), -np.min(normals)))
    if regime.kind == "large-gap":
        assert regime.scale is not None
        with np.errstate(over="ignore"):
            if out.dtype == np.float64:
                np.multiply(normals, regime.scale, out=out)
            else:
                np.multiply(normals, np.float32(regime.scale), out=normals)
                np.copyto(out, normals, casting="unsafe")
        return peak
    np.copyto(out, normals, casting="unsafe")
    at = (np.arange(len(out)), labels)
    if regime.pad:
        out[:, out.shape[1] - regime.pad :] = -np.inf
    if regime.kind == "tied":
        assert partners is not None
        top = _round(np.max(out, axis=1).astype(np.float64) + 1.0, out.dtype)
        out[at] = top
        out[np.arange(len(out)), partners] = top
    if regime.p is not None:
        np.copyto(wide, out, casting="unsafe")  # the logits as rounded, exactly
        wide[at] = -np.inf
        m = np.max(wide, axis=1)
        np.subtract(wide, m[:, None], out=wide)
        np.exp(wide, out=wide)
        lse = m + np.log(np.sum(wide, axis=1))
        odds = math.log(regime.p) - math.log1p(-regime.p)
        out[at] = _round(odds + lse, out.dtype, upwards=True)
    return peak


def _round(x: NDArray[np.float64], dtype: np.dtype[Any], upwards: bool = False) -> NDArray[Any]:
    """``x`` in ``dtype``: to nearest, or ``upwards`` (never below x)."""
    rounded = x.astype(dtype)
    if upwards:
        low = rounded.astype(np.float64) < x
        rounded[low] = np.nextafter(rounded[low], np.array(np.inf, dtype=dtype))
    return rounded
