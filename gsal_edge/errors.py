"""The root of every error GSAL Edge raises on purpose.

Bad input, a broken config, an unreadable data set, a refused bundle, a store that cannot take a write:
each raises a subclass of :class:`GSALError` whose message names what was wrong and how to fix it.
Callers (the CLIs, the gRPC servicers) catch this one class; anything else is a bug and keeps its
traceback. Subclasses also derive from the builtin they always were (mostly ``ValueError``), so code
that caught those keeps working.
"""

from __future__ import annotations

__all__ = ["GSALError"]


class GSALError(Exception):
    """An error with a message meant for the person who caused it (never a traceback)."""
