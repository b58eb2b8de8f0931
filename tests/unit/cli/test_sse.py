"""Reading Server-Sent Events as the api writes them, and following a stream on a thread."""

from __future__ import annotations

import io
import json

import pytest

from orchestrator.cli.client import ApiError
from orchestrator.cli.sse import Follower, SseEvent, StreamEnded, parse


def stream(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


def test_events_comments_ids_and_multiline_data() -> None:
    raw = (
        ": connected\n\n"
        'event: job.snapshot\ndata: {"id": "j"}\n\n'
        "id: 5-0\nevent: job.step\ndata: line1\ndata: line2\n\n"
        ": keep-alive\n\n"
        "id: 6-0\r\nevent: job.succeeded\r\ndata:{}\r\n\r\n"
    )
    events = list(parse(iter(stream(raw).readline, b"")))
    assert events == [
        SseEvent("job.snapshot", '{"id": "j"}'),
        SseEvent("job.step", "line1\nline2", "5-0"),
        SseEvent("job.succeeded", "{}", "6-0"),
    ]


def test_the_follower_resumes_after_the_last_id_and_stops_at_the_end() -> None:
    asked: list[str | None] = []
    parts = ["id: 1-0\nevent: a\ndata: {}\n\n", "id: 2-0\nevent: end\ndata: {}\n\n"]

    def open_stream(last: str | None) -> io.BytesIO:
        asked.append(last)
        return stream(parts[len(asked) - 1])

    with Follower(open_stream, resume=True, until=lambda e: e.type == "end") as f:
        got = [f.next(5), f.next(5)]
        with pytest.raises(StreamEnded):
            f.next(5)
    assert [e.type for e in got if e] == ["a", "end"]
    assert asked == [None, "1-0"]  # reconnected once the first stream ended, resuming


def test_a_refusal_ends_the_follower_with_the_api_s_error() -> None:
    def refuse(_: str | None) -> io.BytesIO:
        raise ApiError(404, {"error": {"code": "not_found", "message": "no such job"}})

    with Follower(refuse, resume=False) as f, pytest.raises(ApiError) as e:
        f.next(5)
    assert e.value.status == 404


def test_an_event_s_data_is_json() -> None:
    assert SseEvent("x", json.dumps({"a": 1})).json() == {"a": 1}
