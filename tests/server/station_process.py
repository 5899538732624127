"""Start `server.cli serve` as a real process and wait until it serves (shared by the slow station tests).

The start loop lives in :mod:`server.process_launch` (bench/load_test.py uses the same one)."""

from __future__ import annotations

from server.process_launch import REPO_ROOT, start_serve_process

__all__ = ["REPO_ROOT", "start_serve_process"]
