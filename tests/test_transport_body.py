"""Large request bodies through the service's HTTP protocol and the client's body parts (issue 21): a bulk body
arrives in few steps, memory per connection stays bounded, and not a byte is lost. No real data needed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time

import pytest


@contextlib.contextmanager
def serving(app):
    """`app` served by uvicorn with the service's protocol class on a free loopback port, in a thread."""
    import uvicorn

    from enrich_service.server.slow_clients import PROTOCOL

    from .conftest import _free_port

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=PROTOCOL, log_config=None,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def body_server():
    """uvicorn with the service's protocol class and an app that waits `wait` seconds before reading the body,
    then records the size of every chunk it receives and answers the body's sha256."""



    chunks: list[int] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(1.0)  # the client sends meanwhile: what the protocol buffered is the first chunk
        digest = hashlib.sha256()
        more = True
        while more:
            message = await receive()
            chunks.append(len(message["body"]))
            digest.update(message["body"])
            more = message.get("more_body", False)
        answer = digest.hexdigest().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    with serving(app) as url:
        yield url, chunks


def test_a_large_body_is_buffered_in_megabytes_not_64_kb_steps_and_arrives_whole(body_server):
    import httpx

    from enrich_service.client import BODY_PART_BYTES, body_parts
    from enrich_service.server.slow_clients import BODY_BUFFER_BYTES

    url, chunks = body_server
    body = bytes(range(256)) * (24 * 4096)  # 24 MB, as a 1M-point Arrow body
    parts, length = body_parts(body)
    assert len(parts) == 24 and all(len(p) == BODY_PART_BYTES for p in parts) and length == {
        "content-length": str(len(body))}
    r = httpx.post(url, content=parts, headers=length, timeout=60)
    assert r.status_code == 200 and r.text == hashlib.sha256(body).hexdigest()
    assert sum(chunks) == len(body)
    # uvicorn alone stops reading at 64 KB: its first chunk would be one socket read at most (~256 KB)
    assert chunks[0] > 1 << 20, chunks[:5]
    assert chunks[0] <= BODY_BUFFER_BYTES + (1 << 20), chunks[:5]  # still bounded: reading pauses past the buffer


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_is_read_whole_into_one_buffer_of_its_declared_length(declared):
    """read_body copies a body that declares its length (from 1 MB) into one buffer as its chunks arrive, and joins
    the chunks of one that does not: the same bytes either way, and one buffer, not the chunks and their join."""
    from starlette.requests import Request

    from enrich_service.api.common import PREALLOCATE_FROM_BYTES, read_body
    from enrich_service.settings import Settings

    body = bytes(range(256)) * (3 * PREALLOCATE_FROM_BYTES // 256 + 7)
    chunks = [body[i:i + 700_001] for i in range(0, len(body), 700_001)]

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    headers = [(b"content-length", str(len(body)).encode())] if declared else []
    request = Request({"type": "http", "method": "POST", "headers": headers, "path": "/"}, receive)
    got = asyncio.run(read_body(request, Settings()))
    assert got == body and isinstance(got, bytearray if declared else bytes)


def test_a_responses_head_goes_out_with_its_body_in_one_write():
    """The protocol's cycle writes the status line and headers, then the body: the two leave in one writev, and
    what is written before the response starts (100 Continue) or after its first part goes out as it comes."""
    from types import SimpleNamespace

    from enrich_service.server.slow_clients import _HeadWithBody

    class Recording:
        def __init__(self):
            self.calls: list = []

        def write(self, data):
            self.calls.append(("write", bytes(data)))

        def writelines(self, parts):
            self.calls.append(("writelines", [bytes(p) for p in parts]))

        def close(self):
            self.calls.append(("close",))

        def is_closing(self):
            return False

    cycle, transport = SimpleNamespace(response_started=False), Recording()
    wrapped = _HeadWithBody(cycle, transport)
    wrapped.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response: as it comes
    cycle.response_started = True
    wrapped.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")  # held
    assert transport.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]
    wrapped.write(memoryview(b"abc"))
    wrapped.write(b"def")
    assert transport.calls[1:] == [("writelines", [b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n", b"abc"]),
                                   ("write", b"def")]
    assert wrapped.is_closing() is False  # the rest is the transport's own

    cycle, transport = SimpleNamespace(response_started=True), Recording()
    wrapped = _HeadWithBody(cycle, transport)
    wrapped.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    wrapped.close()  # a head never followed by a body is still written, before the close
    assert transport.calls == [("write", b"HTTP/1.1 204 No Content\r\n\r\n"), ("close",)]


async def _hello_or_not_modified(scope, receive, send):
    """200 "hello", or a 304 without a body at /not-modified: what HEAD and 304 answers are tested against."""
    if scope["type"] != "http":
        return
    status = 304 if scope["path"] == "/not-modified" else 200
    headers = [(b"content-length", b"5")] if status == 200 else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello" if status == 200 else b""})


def test_answers_without_a_body_part_are_not_held_on_a_kept_alive_connection():
    """HEAD, and a 304, are answered at once on a kept-alive connection: the protocol holds a response's head to
    send it with the body, and uvicorn writes no body for them (found by hand: a HEAD waited for the keep-alive
    timeout and was lost; a 304 came 5 s late)."""
    import socket

    with serving(_hello_or_not_modified) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:  # a held head: no answer in 2 s
            for request, status in ((b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", b"200"),
                                    (b"GET /not-modified HTTP/1.1\r\nHost: t\r\n\r\n", b"304"),
                                    (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", b"200")):
                s.sendall(request)
                answer = s.recv(65536)
                assert answer.startswith(b"HTTP/1.1 " + status), (request, answer)
            assert answer.endswith(b"\r\n\r\nhello")  # the same connection still answers in order


def test_pipelined_answers_without_a_body_part_keep_their_place():
    """HEAD and a 304 followed, on the same connection, by requests sent before their answers came (pipelining):
    every answer comes, in order, and the HEAD's without a body. The head held for a HEAD had been flushed through
    the next request's stand-in, so it was lost and the next answer came alone (found by a tester with
    HEAD /healthz then GET /healthz)."""
    import socket
    import time

    with serving(_hello_or_not_modified) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /not-modified HTTP/1.1\r\nHost: t\r\n\r\n"
                      b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
            answer, deadline = b"", time.monotonic() + 2
            while answer.count(b"HTTP/1.1 ") < 4 and time.monotonic() < deadline:
                try:
                    answer += s.recv(65536)
                except TimeoutError:
                    break
    statuses = [line.split(b" ")[1] for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [b"200", b"304", b"200", b"200"], answer
    assert answer.count(b"hello") == 1 and answer.endswith(b"\r\n\r\nhello"), answer


def test_body_parts_are_views_of_the_body_sent_again_on_a_retry():
    import pyarrow as pa

    from enrich_service.client import body_parts

    buffer = pa.py_buffer(b"x" * 2_500_000)
    parts, length = body_parts(buffer)
    assert [len(p) for p in parts] == [1 << 20, 1 << 20, 2_500_000 - (2 << 20)] and length["content-length"] == \
        "2500000"
    assert b"".join(parts) == b"x" * 2_500_000 and b"".join(parts) == b"".join(parts)  # a list: iterable twice
    assert body_parts(b"") == ([], {"content-length": "0"})


def test_a_body_sent_in_parts_reaches_the_socket_in_order():
    # A plain socket reading the request httpx writes from the parts: the Content-Length framing, no chunked encoding.
    import httpx

    from enrich_service.client import body_parts

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = bytearray()

    def serve():
        conn, _ = listener.accept()
        with conn:
            while b"\r\n\r\n" not in received:
                received.extend(conn.recv(65536))
            head, _, rest = bytes(received).partition(b"\r\n\r\n")
            size = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
                b"content-length")][0])
            while len(rest) < size:
                rest += conn.recv(1 << 20)
            received[:] = head + b"\r\n\r\n" + rest
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    body = bytes(range(256)) * 9000
    parts, length = body_parts(body)
    assert httpx.post(f"http://127.0.0.1:{port}/", content=parts, headers=length, timeout=30).status_code == 204
    thread.join(10)
    listener.close()
    head, _, sent = bytes(received).partition(b"\r\n\r\n")
    assert sent == body and b"transfer-encoding" not in head.lower()


def test_an_arrow_streams_parts_are_the_stream_and_its_columns_are_not_copied():
    import numpy as np
    import pyarrow as pa

    from enrich_service.io.arrow_stream import SMALL_PART_BYTES, stream_buffer, stream_parts

    n = 300_001  # odd: every bitmap and narrow column needs padding
    lon = np.linspace(-117.3, -116.9, n)
    keys = pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 7, pa.int8()), pa.array(list("abcdefg")))
    flags = pa.array([None, "x"] * (n // 2) + [None])
    table = pa.table({"id": np.arange(n), "lon": lon, "zip": keys, "flags": flags})
    for t in (table, table.slice(5, 200_000), pa.concat_tables([table, table.slice(1, 3)]), table.slice(0, 0)):
        parts = stream_parts(t)
        assert b"".join(parts) == stream_buffer(t).to_pybytes()
        sizes = [p.nbytes for p in parts]  # small pieces (message headers, padding) joined: never two in a row
        assert not any(a < SMALL_PART_BYTES and b < SMALL_PART_BYTES for a, b in zip(sizes, sizes[1:])), sizes
    # The float column is sent from the array itself: a part lies over its memory, not a copy of it.
    addresses = {np.frombuffer(p, dtype=np.uint8).ctypes.data for p in stream_parts(table)}
    assert lon.ctypes.data in addresses


@pytest.fixture
def answer_server():
    """uvicorn with the service's protocol class answering the service's ArrowResponse from parts (path /parts,
    with Content-Length) or a chunked stream without one (path /chunked)."""
    from starlette.responses import StreamingResponse

    from enrich_service.io.responses import ArrowResponse


    parts = [b"head", bytes(range(256)) * 40_000, b"", memoryview(b"tail" * 5)]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/parts":
            response = ArrowResponse(parts, headers={"x-parts": str(len(parts))})
        else:
            async def chunks():
                for part in parts:
                    yield bytes(part)
            response = StreamingResponse(chunks())
        await response(scope, receive, send)

    with serving(app) as url:
        yield url, b"".join(parts)


def test_an_answer_sent_in_parts_arrives_whole_with_its_length_and_is_read_into_one_buffer(answer_server):
    import httpx

    from enrich_service.client import read_answer

    url, whole = answer_server
    with httpx.Client(timeout=30) as client:
        for _ in range(2):  # the connection is kept and reused: the parts ended the response exactly
            with client.stream("GET", f"{url}/parts") as r:
                body = read_answer(r)
            assert r.headers["content-length"] == str(len(whole)) and "transfer-encoding" not in r.headers
            assert isinstance(body, bytearray) and body == whole and r.headers["x-parts"] == "4"
        with client.stream("GET", f"{url}/chunked") as r:  # no Content-Length: httpx reads it
            body = read_answer(r)
        assert r.headers["transfer-encoding"] == "chunked" and body == whole
