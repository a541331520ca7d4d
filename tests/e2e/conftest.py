"""The end-to-end stack: the session's emulators plus the processes a module names."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ltxv.local.stack import LocalStack
from ltxv.settings import Settings


@contextlib.contextmanager
def running_stack(
    emulators, components: list[str], settings: Settings | None = None
) -> Iterator[LocalStack]:
    """Start `components` next to the running emulators (found and left alone), as
    `make dev` runs them, and stop them again afterwards."""
    stack = LocalStack(
        emulators.state_dir,
        ports=emulators.stack.ports,
        settings=settings or emulators.settings,
        echo=None,
    )
    stack.up(components)
    try:
        yield stack
    finally:
        stack.down(components)
