"""Low-precision dtypes NumPy does not have by itself: ``bfloat16`` (8 significant bits, the
exponent range of float32), from ``ml_dtypes`` (the JAX team's NumPy dtype extensions).

Importing ``ml_dtypes`` registers ``"bfloat16"`` as a NumPy dtype name and gives it ufuncs that
compute each operation in float32 and round the result once to bfloat16 (the way a bfloat16
tensor operation runs on a CPU). It is imported only when a bfloat16 check asks for it.
"""

from __future__ import annotations

import numpy as np


def register(dtype: str) -> None:
    """Make ``dtype`` usable by name in NumPy (``bfloat16``: import ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: F401  (registers the dtype)


def bfloat16() -> np.dtype:
    """NumPy's dtype object for bfloat16."""
    import ml_dtypes

    out: np.dtype = np.dtype(ml_dtypes.bfloat16)
    return out


def is_float(dtype: np.dtype) -> bool:
    """A floating-point dtype, bfloat16 (NumPy kind ``V``) included."""
    return dtype.kind == "f" or dtype.name == "bfloat16"
