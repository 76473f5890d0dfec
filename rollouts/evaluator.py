"""Background re-evaluation of open rollout stages (API.md §4 "Gates and automatic progress").

`poke()` is cheap and safe to call from any request path (acks, event batches): it wakes the
evaluator thread that `serve` starts with `start_background_evaluator()`.
"""

from __future__ import annotations


def poke() -> None:
    """Ask the evaluator to re-check open stages soon (non-blocking)."""


def start_background_evaluator() -> None:
    """Start the evaluator thread (called once by `serve`)."""
