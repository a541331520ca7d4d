"""A Server-Sent Events parser, as the WHATWG HTML standard defines the format.

Lines end at CR LF, CR or LF, and nowhere else: the bytes are split here rather than with
`str.splitlines` or requests' `iter_lines`, which also split at U+2028, U+0085 and other
characters a JSON string may carry unescaped. A blank line dispatches the event being
built; an event without data is not dispatched; `:` starts a comment; `retry` takes ASCII
digits only; an `id` holding NUL is ignored. A stream that ends mid-event drops it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerEvent:
    event: str  # "message" when the stream named none
    data: str
    id: str | None  # the last event id in effect when it was dispatched


class EventParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        """The events completed by `chunk`."""
        self._buffer += chunk
        events = []
        while (cut := _line_end(self._buffer)) is not None:
            end, length = cut
            line = self._buffer[:end].decode("utf-8", "replace")
            self._buffer = self._buffer[end + length :]
            dispatched = self._line(line)
            if dispatched:
                events.append(dispatched)
        return events

    def _line(self, line: str) -> ServerEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].lstrip(" "))
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerEvent(event, "\n".join(data), self.last_id)


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """(index, length) of the first line ending in `buffer`, or None when there is none
    yet (a CR at the very end may be the first half of CR LF)."""
    for index, byte in enumerate(buffer):
        if byte == 0x0A:
            return index, 1
        if byte == 0x0D:
            if index + 1 == len(buffer):
                return None
            return index, 2 if buffer[index + 1] == 0x0A else 1
    return None


def parse(chunks: Iterable[bytes], parser: EventParser | None = None) -> Iterator[ServerEvent]:
    """Every event of a byte stream, as it completes."""
    parser = parser or EventParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
