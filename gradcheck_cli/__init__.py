"""xentcheck: verify softmax cross-entropy losses and their gradients.

The public API (docs/api.md) is :func:`load`, :func:`check`, :func:`assert_passes` and
:class:`Report`; they are imported on first use, so ``import gradcheck_cli`` (and the command
line's start-up) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradcheck_cli._version import __version__

__all__ = ["Report", "__version__", "assert_passes", "check", "load"]

if TYPE_CHECKING:
    from gradcheck_cli.api import Report, assert_passes, check, load


def __getattr__(name: str) -> Any:
    if name in ("Report", "assert_passes", "check", "load"):
        from gradcheck_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradcheck_cli' has no attribute {name!r}")
