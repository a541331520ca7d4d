"""The client's Server-Sent Events parser against the WHATWG rules it follows."""

from __future__ import annotations

from ltxv.client.server_events import EventParser, ServerEvent, parse


def test_line_endings_split_across_chunks_and_unicode_separators_inside_data():
    parser = EventParser()
    chunks = [
        b"retry: 1500\r\n\r\n: keep-alive\r",
        b'\nevent: state\r\nid: 7-abc\ndata: {"p":"a\xe2\x80\xa8b\xc2',
        b'\x85c\x1cd"}\r',
        b"\r\n",  # CR, then CR LF: the blank line
    ]
    events = list(parse(chunks, parser))
    assert events == [ServerEvent("state", '{"p":"a\u2028b\u0085c\x1cd"}', "7-abc")]
    assert parser.retry_ms == 1500 and parser.comments == ["keep-alive"]


def test_multi_line_data_default_name_and_ids_that_carry_over():
    events = list(parse([b"id: 1\ndata: a\ndata:b\n\ndata: c\n\n"]))
    assert events == [ServerEvent("message", "a\nb", "1"), ServerEvent("message", "c", "1")]


def test_what_the_standard_ignores():
    parser = EventParser()
    events = parser.feed(
        b"event: state\n\n"  # no data: not dispatched
        b"retry: 1e3\nretry: \xc2\xb2\n"  # not ASCII digits
        b"id: a\x00b\n"  # NUL: ignored
        b"bogus: x\ndata: kept\n\n"
        b"data: cut off"  # the stream ends mid-event: dropped
    )
    assert events == [ServerEvent("message", "kept", None)]
    assert parser.retry_ms is None
