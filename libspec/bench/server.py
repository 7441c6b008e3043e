"""A small OpenAI-compatible HTTP server over the offline engine, so GuideLLM and friends can load it.

It serves a verifier alone or a verifier plus a speculator with a fixed k, as a Starlette app on
uvicorn (HTTP/1.1 by h11, the stack vLLM's server uses): the parsing of HTTP, keep-alive, the
listen backlog and TCP_NODELAY are theirs. The engine decodes one request at a time
(libspec/bench/serving_engine.py); up to `max_queue` more wait their turn, which the latencies
then show, and beyond that a request gets a 503 at once.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`
(non-streaming, or `stream: true` as Server-Sent Events, one chunk per verification round so a
client's inter-token latency reflects speculative decoding), and `GET /metrics` with vLLM's
spec-decode counters (libspec/bench/metrics_page.py). Every request gets an answer; refusals carry
OpenAI's error document `{"error": {"message", "type", "param", "code"}}`: 400 for a body that is
not a JSON object or a field we refuse (libspec/bench/openai_protocol.py), 404/405 for a route,
408 for a body not sent within `body_timeout_s`, 413 for a body over `max_body_bytes`, 503 when
the queue is full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from dataclasses import dataclass

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from libspec.bench.decoding import DecodingVerifier
from libspec.bench.openai_protocol import RequestError, Responder, error_document, parse_request
from libspec.bench.serving_engine import ENGINE_NOTE, CompletionRequest, Engine, TextStream  # noqa: F401 - ENGINE_NOTE, TextStream: imported from here
from libspec.errors import SpecError
from libspec.options import check_options, option

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 2048  # connections the kernel holds before we accept them (uvicorn's default; capped by somaxconn)


@dataclass(frozen=True)
class ServerLimits:
    """What one server takes on; `spec-bench serve` offers each as an option."""

    max_queue: int = option(512, "requests that may wait while one generates; more get a 503 (GuideLLM's sweep keeps up to 512 in flight)", minimum=0, metavar="N")
    max_tokens_per_request: int = option(4096, "largest max_tokens a request may ask for; chat without max_tokens gets this or what fits the context", minimum=1, metavar="N")
    max_body_bytes: int = option(4 * 2**20, "largest request body; larger gets a 413 (4 MiB holds a 128k-token prompt as text or token ids)", minimum=1, metavar="BYTES")
    body_timeout_s: float = option(30.0, "seconds a client has to send its request body; slower gets a 408", minimum=0.001, metavar="S")


@dataclass(frozen=True)
class ServerConfig:
    """What `spec-bench serve` serves and where."""

    verifier: str
    speculator: str | None = None
    k: int | None = None  # drafted tokens per step; None = the checkpoint's speculative_tokens
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None = the verifier argument, as vLLM does
    device: str = "auto"
    dtype: str = "auto"
    limits: ServerLimits = ServerLimits()


def load_engine(config: ServerConfig) -> Engine:
    """Load the verifier, its tokenizer and the speculator named in `config`, warmed up."""
    from libspec.format import checkpoint as ckpt
    from libspec.algorithms import load_proposer
    from libspec.verifier import eos_token_ids, load_causal_lm, load_tokenizer, pick_device, pick_dtype

    check_options(config.limits)  # before minutes of loading
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    model = load_causal_lm(config.verifier, device, dtype)
    tokenizer = load_tokenizer(config.verifier)
    proposer, k = None, None
    if config.speculator:
        proposer = load_proposer(config.speculator, model)
        k = config.k or ckpt.speculative_tokens(ckpt.read_config(config.speculator))
    verifier = DecodingVerifier(model, proposer.aux_layer_ids if proposer else [])
    info = {"verifier": config.verifier, "speculator": config.speculator, "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    engine = Engine(verifier, tokenizer, eos_token_ids(model, tokenizer), config.served_model_name or config.verifier, proposer, k, info)
    engine.warm_up()
    return engine


# ---------------------------------------------------------------------------------------------
# Requests in


async def _read_json(request: Request, limits: ServerLimits):
    """The request body parsed as JSON, within the limits; RequestError otherwise."""
    declared = request.headers.get("content-length")  # h11 has checked it is a number
    if declared is not None and int(declared) > limits.max_body_bytes:
        raise RequestError(413, f"request body: {declared} bytes declared, this server takes at most {limits.max_body_bytes} (--max-body-bytes)")
    try:
        raw = await asyncio.wait_for(_read_at_most(request, limits.max_body_bytes), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"request body: not received within {limits.body_timeout_s:g} s (--body-timeout-s)") from None
    except ClientDisconnect:  # nobody left to answer, but no traceback either
        raise RequestError(400, "request body: the client closed the connection before sending it all") from None
    return parse_body(raw)


def parse_body(raw: bytes):
    """A request body's JSON value; RequestError(400) when it is empty or not strict JSON."""
    if not raw.strip():
        raise RequestError(400, "request body is empty: expected a JSON object")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than the parser goes
        raise RequestError(400, f"request body is not valid JSON: {str(error)[:200]}") from None


async def _read_at_most(request: Request, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no Content-Length to check first
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body: over {max_bytes} bytes, the most this server takes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's parser would accept NaN and Infinity


def _admit(engine: Engine, limits: ServerLimits) -> None:
    """Refuse a generation when max_queue requests already wait behind the running one."""
    if engine.in_flight() > limits.max_queue:
        raise RequestError(503, f"the engine is busy: one request generating and {limits.max_queue} waiting, the most this server queues (--max-queue); retry later")


# ---------------------------------------------------------------------------------------------
# Endpoints


async def _health(request: Request) -> Response:
    return Response(b"", media_type="text/plain")


async def _models(request: Request) -> Response:
    return JSONResponse(request.app.state.engine.models_page())


async def _metrics(request: Request) -> Response:
    return Response(request.app.state.engine.metrics_page(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _completions(request: Request) -> Response:
    engine, limits = request.app.state.engine, request.app.state.limits
    body = await _read_json(request, limits)
    completion_request = parse_request(body, request.url.path.endswith("/chat/completions"), engine, limits.max_tokens_per_request)
    _admit(engine, limits)
    responder = Responder(completion_request, engine.model_name, engine.k)
    if completion_request.stream:
        events = _EventStream(engine, completion_request, responder)
        return StreamingResponse(events.sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        completion = await asyncio.wrap_future(engine.submit(completion_request))
    except Exception as error:  # the server boundary: report, keep serving
        log.exception("generation failed")
        raise RequestError(500, f"generation failed: {error}") from None
    return JSONResponse(responder.full(completion))


def _sse(document: dict | str) -> bytes:
    data = document if isinstance(document, str) else json.dumps(document, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _EventStream:
    """One streamed generation: the engine's thread puts each round's chunk on a queue, the response sends it."""

    def __init__(self, engine: Engine, request: CompletionRequest, responder: Responder):
        loop = asyncio.get_running_loop()
        self.responder, self.queue, self.stop = responder, asyncio.Queue(), threading.Event()

        def put(item) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(self.queue.put_nowait, item)

        self.future = engine.submit(request, lambda text, so_far: put(responder.chunk(text, tokens_so_far=so_far)), self.stop)
        self.future.add_done_callback(lambda _: put(None))  # after every chunk: the same thread, in order

    async def sse(self):
        """The Server-Sent Events; a client that leaves cancels this and so stops the generation."""
        try:
            if self.responder.request.chat:
                yield _sse(self.responder.chunk("", role=True))
            while (chunk := await self.queue.get()) is not None:
                yield _sse(chunk)
            completion = self.future.result()
            yield _sse(self.responder.final_chunk(completion))
            if self.responder.request.include_usage:
                yield _sse(self.responder.usage_chunk(completion))
        except Exception as error:  # the server boundary: tell the client in the stream, as vLLM does
            log.exception("generation failed")
            yield _sse(error_document(500, f"generation failed: {error}"))
        finally:
            self.stop.set()  # a no-op when it finished; otherwise the client went away
            self.future.cancel()
        yield _sse("[DONE]")


# After a 408 or 413 the rest of the body may still be on its way: close rather than read it as a next request.
_ERROR_HEADERS = {408: {"Connection": "close"}, 413: {"Connection": "close"}, 503: {"Retry-After": "1"}}


async def _request_error(request: Request, error: RequestError) -> Response:
    return JSONResponse(error_document(error.status, error.message, error.param), error.status, _ERROR_HEADERS.get(error.status))


async def _http_error(request: Request, error: HTTPException) -> Response:
    message = f"no route {request.method} {request.url.path}" if error.status_code == 404 else f"{request.method} {request.url.path}: {error.detail}"
    return JSONResponse(error_document(error.status_code, message), error.status_code, error.headers)


def make_app(engine: Engine, limits: ServerLimits = ServerLimits()) -> Starlette:
    """The ASGI app: the routes above over `engine`."""
    routes = [
        Route("/health", _health), Route("/ping", _health), Route("/v1/models", _models), Route("/metrics", _metrics),
        Route("/v1/completions", _completions, methods=["POST"]), Route("/v1/chat/completions", _completions, methods=["POST"]),
    ]  # fmt: skip
    app = Starlette(routes=routes, exception_handlers={RequestError: _request_error, HTTPException: _http_error})
    app.state.engine, app.state.limits = engine, limits
    return app


# ---------------------------------------------------------------------------------------------
# The server


class _H11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering a request that is not valid HTTP (a Content-Length of
    -1 or abc, a garbled request line) in OpenAI's error shape rather than plain text."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_document(400, f"{msg} Check the request line, the headers and Content-Length.")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class OpenAIServer:
    """uvicorn serving the app on a socket bound (and listening) from construction, so `.url` is known
    and early connections wait in the backlog; `serve_forever` / `shutdown` / `server_close` as socketserver's."""

    def __init__(self, engine: Engine, listener: socket.socket, limits: ServerLimits):
        self.socket = listener
        config = uvicorn.Config(make_app(engine, limits), http=_H11Protocol, loop="asyncio", ws="none", lifespan="off", log_config=None,
                                backlog=LISTEN_BACKLOG, timeout_graceful_shutdown=5, server_header=False, headers=[("server", "spec-tools")])  # fmt: skip
        self.uvicorn = uvicorn.Server(config)
        self.stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until `shutdown` (from another thread) or, on the main thread, Ctrl-C (then KeyboardInterrupt)."""
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.stopped.set()

    def shutdown(self) -> None:
        """Stop `serve_forever` running on another thread, and wait for it."""
        self.uvicorn.should_exit = True
        self.stopped.wait()

    def server_close(self) -> None:
        """Release the socket (the engine stays with whoever made it)."""
        self.socket.close()


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits = ServerLimits()) -> OpenAIServer:
    """Bind the server (port 0 picks a free one; see `.url`); call `serve_forever()` to run it."""
    check_options(limits)
    # The protocol named: asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets, and without it every
    # response written in two parts (headers, body) waits ~40 ms for the client's delayed ACK.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(LISTEN_BACKLOG)
    except OSError as error:
        listener.close()
        raise SpecError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return OpenAIServer(engine, listener, limits)
