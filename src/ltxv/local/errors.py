"""What the local stack raises for the person running it to act on."""

from __future__ import annotations


class StackError(RuntimeError):
    """Something the person running the stack has to act on; the message says what."""


class StartupFailed(StackError):
    """A component exited before it became ready (rather than being slow to)."""
