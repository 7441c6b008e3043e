"""`spec-bench serve` under hostile clients: every request gets an HTTP answer with OpenAI's error
document, bursts beyond the queue are refused with 503 instead of reset, limits hold.

Regression tests for issue 16 item 4 (a hostile test campaign against the standard-library server):
raw bytes over sockets, each read under a timeout so that a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import statistics
import threading
import time

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import TINY_LLAMA
from libspec.bench.decoding import DecodingVerifier
from libspec.bench.server import ServerConfig, ServerLimits, load_engine, make_server
from libspec.bench.serving_engine import Engine
from libspec.errors import SpecError

LIMITS = ServerLimits(max_queue=2, max_tokens_per_request=32, max_body_bytes=64 * 1024, body_timeout_s=1.0)
ANSWER_TIMEOUT_S = 20.0  # a hang fails the test after this long


@pytest.fixture(scope="module")
def engine():
    """A tiny verifier and word-level tokenizer built in memory, behind the serving engine."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")})).eval()
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="t63", pad_token="t0")
    tokenizer.chat_template = "{% for m in messages %}t1 {{ m['content'] }} t2 {% endfor %}{% if add_generation_prompt %}t3{% endif %}"
    engine = Engine(DecodingVerifier(model), tokenizer, {63}, "tiny")
    engine.warm_up()
    yield engine
    engine.close()


def start(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def guarded(engine):
    """A running server with small limits: 2 may wait, 32 tokens a request, 64 KiB bodies, 1 s to send one."""
    server = make_server(engine, "127.0.0.1", 0, LIMITS)
    start(server)
    yield server
    server.shutdown()
    server.server_close()


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def send(port: int, data: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S)
    connection.sendall(data)
    return connection


def answer(connection: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of the response on `connection`; raises on a timeout or reset."""
    response = http.client.HTTPResponse(connection)
    try:
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_raw(port: int, body: bytes, headers: str | None = None, path: str = "/v1/completions") -> tuple[int, dict, bytes]:
    """POST `body` with a Content-Length of its size, unless `headers` (raw header lines) say otherwise."""
    headers = f"Content-Length: {len(body)}\r\n" if headers is None else headers
    return answer(send(port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n".encode() + body))


def assert_openai_error(status: int, headers: dict, body: bytes, expected: int, param: str | None = None) -> dict:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["code"], error["param"]) == (expected, param)
    return error


def completion(**fields) -> bytes:
    return json.dumps({"prompt": "t4 t5", "max_tokens": 2, "temperature": 0, **fields}).encode()


# ---------------------------------------------------------------------------------------------
# Each broken case of the campaign, by name: (body, raw header lines or None, status, param)

HOSTILE = {
    "empty body": (b"", None, 400, None),
    "no body and no Content-Length": (b"", "", 400, None),
    "null body": (b"null", None, 400, None),
    "a JSON array body": (b"[1, 2]", None, 400, None),
    "Content-Length -1": (completion(), "Content-Length: -1\r\n", 400, None),
    "Content-Length abc": (completion(), "Content-Length: abc\r\n", 400, None),
    "Content-Length 100 GB": (completion(), "Content-Length: 100000000000\r\n", 413, None),
    "chunked body over the bound": (b"%x\r\n%s\r\n0\r\n\r\n" % (70_000, b" " * 70_000), "Transfer-Encoding: chunked\r\n", 413, None),
    "deeply nested JSON": (b"[" * 30_000 + b"]" * 30_000, None, 400, None),  # 60 kB, within the body bound
    "integer with 5000 digits": (b'{"prompt": "t4", "seed": ' + b"1" * 5000 + b"}", None, 400, None),
    "temperature NaN": (completion(temperature=float("nan")), None, 400, None),  # json.dumps writes NaN, which is not JSON
    "temperature 1e999 (infinite)": (b'{"prompt": "t4", "temperature": 1e999}', None, 400, "temperature"),
    "temperature 1e-300": (completion(temperature=1e-300), None, 400, "temperature"),
    "temperature above 2": (completion(temperature=2.5), None, 400, "temperature"),
    "seed 2**70": (completion(seed=2**70), None, 400, "seed"),
    "seed not an integer": (completion(seed=1.5), None, 400, "seed"),
    "max_tokens over the bound": (completion(max_tokens=LIMITS.max_tokens_per_request + 1), None, 400, "max_tokens"),
    "max_completion_tokens over the bound": (completion(max_completion_tokens=10**12), None, 400, "max_completion_tokens"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_request_gets_an_openai_error_and_the_server_keeps_serving(guarded, case, caplog):
    body, headers, status, param = HOSTILE[case]
    with caplog.at_level(logging.WARNING):
        assert_openai_error(*post_raw(port_of(guarded), body, headers), status, param)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]  # no server-side traceback
    status, _, body = post_raw(port_of(guarded), completion())
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2


def test_a_garbled_request_line_gets_an_openai_error(guarded):
    assert_openai_error(*answer(send(port_of(guarded), b"GARBAGE\r\n\r\n")), 400)


def test_a_body_slower_than_the_timeout_gets_a_408(guarded):
    connection = send(port_of(guarded), b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
    began = time.monotonic()
    assert_openai_error(*answer(connection), 408)
    assert time.monotonic() - began < LIMITS.body_timeout_s + 5


def test_a_client_that_closes_mid_body_leaves_no_traceback(guarded, caplog):
    connection = send(port_of(guarded), b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
    time.sleep(0.2)  # the server is reading the body
    with caplog.at_level(logging.WARNING):
        connection.close()
        status, _, body = post_raw(port_of(guarded), completion())
    assert status == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_413_closes_the_connection_instead_of_reading_the_rest(guarded):
    connection = send(port_of(guarded), b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n" + b"x" * 10_000)
    response = http.client.HTTPResponse(connection)
    response.begin()
    assert response.status == 413 and response.getheader("Connection") == "close"
    response.read()
    assert connection.recv(1) == b""  # closed by the server, not waiting for 100 GB
    connection.close()


def test_unknown_routes_and_methods_get_openai_errors(guarded):
    port = port_of(guarded)
    assert "no route GET /v2/nothing" in assert_openai_error(*answer(send(port, b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n")), 404)["message"]
    assert_openai_error(*answer(send(port, b"GET /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")), 405)


# ---------------------------------------------------------------------------------------------
# Bursts


def burst(port: int, count: int, max_tokens: int = 16) -> list[tuple[int, dict, bytes]]:
    """`count` completions sent at once from as many threads; each answer, or the exception instead of one."""
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def ask(index: int) -> None:
        try:
            barrier.wait(timeout=ANSWER_TIMEOUT_S)
            results[index] = post_raw(port, completion(max_tokens=max_tokens, ignore_eos=True))
        except Exception as error:  # a reset or a timeout: what the test must not see
            results[index] = error

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=3 * ANSWER_TIMEOUT_S)
    return results


def assert_served_or_refused(results: list) -> list[int]:
    """Every result is a 200 or an explicit 503 with Retry-After; the statuses."""
    statuses = []
    for result in results:
        assert isinstance(result, tuple), f"no answer: {result!r}"
        status, headers, body = result
        if status != 200:
            assert_openai_error(status, headers, body, 503)
            assert headers["retry-after"] == "1"
        statuses.append(status)
    return statuses


def test_bursts_beyond_the_queue_get_503_never_a_reset(guarded):
    """The campaign's bursts of 20-40 concurrent requests: with 2 allowed to wait, most are refused at once."""
    for count in (20, 30, 40):
        statuses = assert_served_or_refused(burst(port_of(guarded), count))
        assert 200 in statuses and 503 in statuses
    page = answer(send(port_of(guarded), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))[2].decode()
    assert 'vllm:num_requests_running{engine="0",model_name="tiny"} 0.0' in page  # nothing left counted
    assert 'vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0' in page


def test_a_burst_before_the_server_accepts_waits_in_the_backlog(engine):
    """Listen backlog 5 turned away all but 6 of 40 connections made while the accept loop was busy;
    connections made before serving starts must all be answered once it does."""
    server = make_server(engine, "127.0.0.1", 0, LIMITS)
    request = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(completion()), completion())
    try:
        connections = [send(port_of(server), request) for _ in range(40)]  # a connect timeout here: turned away
    finally:
        start(server)  # shutdown() waits for serve_forever, so it must have started
    try:
        statuses = assert_served_or_refused([answer(connection) for connection in connections])
        assert 200 in statuses
    finally:
        server.shutdown()
        server.server_close()


def test_a_response_is_not_held_back_by_the_nagle_algorithm(guarded):
    """http.server wrote headers and body apart without TCP_NODELAY: each keep-alive answer waited ~40 ms for a delayed ACK."""
    connection = http.client.HTTPConnection("127.0.0.1", port_of(guarded), timeout=ANSWER_TIMEOUT_S)
    round_trips = []
    for _ in range(15):
        began = time.perf_counter()
        connection.request("GET", "/v1/models")
        assert connection.getresponse().read()
        round_trips.append(time.perf_counter() - began)
    connection.close()
    assert statistics.median(round_trips) < 0.025


def test_limits_are_checked_before_the_model_loads():
    with pytest.raises(SpecError, match="--max-queue -1: expected at least 0"):
        load_engine(ServerConfig("/nonexistent", limits=ServerLimits(max_queue=-1)))
