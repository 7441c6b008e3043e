"""A small OpenAI-compatible HTTP server over the offline engine, so GuideLLM and friends can load it.

It serves a verifier alone or a verifier plus a speculator with a fixed k, on the standard library's
`ThreadingHTTPServer`. The engine decodes one request at a time (batch 1): a lock serialises
generations and other requests wait, which the latencies then show (`/v1/models` says so too).

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`
(non-streaming, or `stream: true` as Server-Sent Events, one chunk per verification round so a
client's inter-token latency reflects speculative decoding), and `GET /metrics` with vLLM's
spec-decode counters (libspec/bench/metrics_page.py). Sampling supports `temperature` and `seed`
only; requests asking for anything else we cannot honour (top_p, stop strings, n > 1, ...) get a
400 naming the field instead of a silently different answer.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import torch

from libspec.bench import metrics_page as sdm
from libspec.bench.decoding import Generation, DecodingVerifier, autoregressive_generate, speculative_generate
from libspec.errors import SpecError
from libspec.bench.prompts import encode_prompt

log = logging.getLogger(__name__)

ENGINE_NOTE = "spec-tools offline engine (PyTorch), batch 1: one generation at a time; concurrent requests wait their turn"
DEFAULT_TEMPERATURE = 1.0  # OpenAI's and vLLM's default when a request gives none
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions without max_tokens, as OpenAI and vLLM
UNBOUNDED_CHAT_TOKENS = 4096  # chat without max_tokens on a model that states no context length


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


class RequestError(Exception):
    """A request we refuse: HTTP status, message, and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass(frozen=True)
class CompletionRequest:
    """One parsed /v1/completions or /v1/chat/completions request."""

    chat: bool
    prompt_ids: torch.Tensor
    max_tokens: int
    temperature: float
    seed: int | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool


@dataclass
class Completion:
    """What a request produced: text, token counts, why it stopped, and its verification rounds."""

    text: str
    prompt_tokens: int
    generation: Generation
    finish_reason: str


class TextStream:
    """Text of a growing token list, released as it becomes final (never half a UTF-8 character)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = 0

    def add(self, tokens: list[int]) -> str:
        """The new text after `tokens`; empty while the tail is an incomplete character."""
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        return self._release(text)

    def finish(self) -> str:
        """Whatever is still held back."""
        return self._release(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _release(self, text: str) -> str:
        new, self.sent = text[self.sent :], max(self.sent, len(text))
        return new


@dataclass
class ServerStats:
    """Counters shown at /metrics (guarded by Engine.stats_lock)."""

    spec: sdm.SpecDecodeCounters = field(default_factory=sdm.SpecDecodeCounters)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_running: int = 0
    requests_waiting: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class Engine:
    """The verifier (and speculator) behind the server; generations run one at a time."""

    def __init__(self, verifier: DecodingVerifier, tokenizer, eos_ids: set[int], model_name: str, proposer=None, k: int | None = None, info: dict | None = None):
        if proposer is not None and (k is None or k < 1):
            raise SpecError(f"k must be at least 1 with a speculator (got {k})")
        self.verifier, self.tokenizer, self.eos_ids = verifier, tokenizer, eos_ids
        self.model_name, self.proposer, self.k = model_name, proposer, k if proposer is not None else None
        self.max_model_len = getattr(verifier.model.config, "max_position_embeddings", None)
        self.info = info or {}
        self.created = int(time.time())
        self.generate_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.stats = ServerStats()
        if self.k:
            self.stats.spec.accepted_per_position = [0.0] * self.k  # vLLM shows every position from the start

    def warm_up(self) -> None:
        """One short untimed generation: the first calls pay for allocations and lazy initialisation."""
        prompt = torch.tensor([0], device=self.verifier.device)
        with self.generate_lock:
            self._decode(prompt, 4, set(), 0.0, None, None)

    def complete(self, request: CompletionRequest, on_text: Callable[[str, int], None] | None = None) -> Completion:
        """Generate for one request; `on_text(new_text, tokens_so_far)` hears each step's text as it is decided."""
        with self.stats_lock:
            self.stats.requests_waiting += 1
        with self.generate_lock:
            with self.stats_lock:
                self.stats.requests_waiting -= 1
                self.stats.requests_running += 1
            finish_reason = "abort"  # unless it completes: a client gone mid-stream, an engine error
            try:
                completion = self._complete(request, on_text)
                finish_reason = completion.finish_reason
            finally:
                with self.stats_lock:
                    self.stats.requests_running -= 1
                    self.stats.finished[finish_reason] = self.stats.finished.get(finish_reason, 0) + 1
        return completion

    def _complete(self, request: CompletionRequest, on_text) -> Completion:
        stream = TextStream(self.tokenizer)
        produced = 0

        def on_tokens(tokens: list[int], accepted: int | None) -> None:
            nonlocal produced
            produced += len(tokens)
            with self.stats_lock:
                self.stats.generation_tokens += len(tokens)
                if accepted is not None:
                    self.stats.spec.observe(self.k, accepted)
            text = stream.add(tokens)
            if text and on_text:
                on_text(text, produced)

        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device=self.verifier.device)
            if request.seed is None:
                generator.seed()  # a fresh random seed
            else:
                generator.manual_seed(request.seed)
        eos_ids = set() if request.ignore_eos else self.eos_ids
        prompt = request.prompt_ids.to(self.verifier.device)
        with self.stats_lock:
            self.stats.prompt_tokens += len(prompt)
        generation = self._decode(prompt, request.max_tokens, eos_ids, request.temperature, generator, on_tokens)
        tail = stream.finish()
        if tail and on_text:
            on_text(tail, produced)
        finish_reason = "stop" if generation.tokens and generation.tokens[-1] in eos_ids else "length"
        text = self.tokenizer.decode(generation.tokens, skip_special_tokens=True)
        return Completion(text, len(prompt), generation, finish_reason)

    def _decode(self, prompt, max_tokens, eos_ids, temperature, generator, on_tokens) -> Generation:
        if self.proposer is None:
            return autoregressive_generate(self.verifier, prompt, max_tokens, eos_ids, temperature, generator, on_tokens)
        return speculative_generate(self.verifier, self.proposer, prompt, self.k, max_tokens, eos_ids, temperature, generator, on_tokens)

    def metrics_page(self) -> str:
        """The Prometheus text page: vLLM's names, with the spec-decode counters only when speculating."""
        labels = {"engine": "0", "model_name": self.model_name}
        with self.stats_lock:
            stats = self.stats
            entries = [
                ("vllm:num_requests_running", "gauge", "Requests generating now (at most 1: batch-1 engine).", [(labels, stats.requests_running)]),
                ("vllm:num_requests_waiting", "gauge", "Requests waiting for the engine.", [(labels, stats.requests_waiting)]),
                ("vllm:prompt_tokens", "counter", "Prefilled prompt tokens.", [(labels, stats.prompt_tokens)]),
                ("vllm:generation_tokens", "counter", "Generated tokens.", [(labels, stats.generation_tokens)]),
                ("vllm:request_success", "counter", "Finished requests by finish reason.",
                 [({**labels, "finished_reason": reason}, n) for reason, n in sorted(stats.finished.items())]),
            ]  # fmt: skip
            if self.proposer is not None:
                entries += sdm.spec_decode_metrics(stats.spec, labels)
            return sdm.render(entries)

    def models_page(self) -> dict:
        """The /v1/models document: one model, with what the engine is."""
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "spec-tools",
            "root": self.info.get("verifier", self.model_name),
            "parent": None,
            "max_model_len": self.max_model_len,
            "spec_tools": {**self.info, "engine": ENGINE_NOTE, "num_speculative_tokens": self.k},
        }
        return {"object": "list", "data": [card]}


def load_engine(config: ServerConfig) -> Engine:
    """Load the verifier, its tokenizer and the speculator named in `config`, warmed up."""
    from libspec.format import checkpoint as ckpt
    from libspec.algorithms import load_proposer
    from libspec.verifier import eos_token_ids, load_causal_lm, load_tokenizer, pick_device, pick_dtype

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
# Requests


def _number(body: dict, name: str, default, low=None, integer=False):
    value = body.get(name)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (low is not None and value < low):
        expected = "an integer" if integer else "a number"
        raise RequestError(400, f"{name}: expected {expected}{'' if low is None else f' >= {low}'}, got {value!r}", name)
    return value


def _flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(400, f"{name}: expected true or false, got {value!r}", name)
    return value


# Fields the engine cannot honour, with the values that mean "off" (accepted and ignored).
_UNSUPPORTED = {
    "n": (1,),
    "best_of": (1,),
    "top_p": (1, 1.0),
    "top_k": (-1, 0),
    "min_p": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "echo": (False,),
    "stop": ("", []),
    "stop_token_ids": ([],),
    "logit_bias": ({},),
    "tools": ([],),
    "suffix": ("",),
}


def _message_text(message, index: int) -> dict:
    """A chat message with its content as one string (text parts joined, as vLLM does)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise RequestError(400, f"messages[{index}]: expected an object with a string 'role'", "messages")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, f"messages[{index}].content: only text parts are supported", "messages")
            texts.append(part["text"])
        content = "\n".join(texts)
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise RequestError(400, f"messages[{index}].content: expected a string or a list of text parts", "messages")
    return {**message, "content": content}


def _prompt_ids(body: dict, chat: bool, tokenizer) -> torch.Tensor:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages: expected a non-empty list of messages", "messages")
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
        return encode_prompt(tokenizer, {"messages": [_message_text(m, i) for i, m in enumerate(messages)]})
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return encode_prompt(tokenizer, {"prompt": prompt})
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < len(tokenizer) for t in prompt):
        return torch.tensor(prompt, dtype=torch.long)
    raise RequestError(400, "prompt: expected a non-empty string or list of token ids (one prompt per request)", "prompt")


def parse_request(body, chat: bool, engine: Engine) -> CompletionRequest:
    """Check a request body and turn it into what the engine runs; RequestError names the bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body: expected a JSON object")
    model = body.get("model")
    if model not in (None, "", engine.model_name):
        raise RequestError(404, f"The model `{model}` does not exist (this server serves `{engine.model_name}`).", "model")
    for name, off in _UNSUPPORTED.items():
        if body.get(name) is not None and body[name] not in off:
            raise RequestError(400, f"{name}={body[name]!r} is not supported by the spec-tools engine (temperature and seed only)", name)
    prompt_ids = _prompt_ids(body, chat, engine.tokenizer)
    room = None if engine.max_model_len is None else engine.max_model_len - len(prompt_ids)
    if room is not None and room < 1:
        raise RequestError(400, f"prompt: {len(prompt_ids)} tokens leave no room in the model's maximum context length of {engine.max_model_len}", "prompt")
    # Without max_tokens: chat fills the context, completions give 16 tokens (OpenAI's and vLLM's defaults).
    default_tokens = min(DEFAULT_COMPLETION_TOKENS, room or DEFAULT_COMPLETION_TOKENS) if not chat else room or UNBOUNDED_CHAT_TOKENS
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, default_tokens, low=1, integer=True)
    if room is not None and max_tokens > room:
        raise RequestError(
            400, f"This model's maximum context length is {engine.max_model_len} tokens; the prompt has {len(prompt_ids)} and {name} asks for {max_tokens}.", name
        )  # fmt: skip
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "stream_options: expected an object", "stream_options")
    return CompletionRequest(
        chat=chat,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", DEFAULT_TEMPERATURE, low=0)),
        seed=_number(body, "seed", None, integer=True),
        stream=_flag(body, "stream"),
        include_usage=_flag(options, "include_usage"),
        continuous_usage=_flag(options, "continuous_usage_stats"),
        ignore_eos=_flag(body, "ignore_eos"),
    )


# ---------------------------------------------------------------------------------------------
# Responses


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def per_request_metrics(generation: Generation, k: int) -> dict:
    """vLLM's per-request `metrics.speculative_decoding` summary, from one generation's rounds."""
    rounds = generation.accepted_per_round
    accepted = sum(rounds)
    histogram = [0] * (k + 1)
    for n in rounds:
        histogram[n] += 1
    return {
        "mean_acceptance_length": 1.0 + accepted / len(rounds) if rounds else None,
        "draft_acceptance_rate": accepted / (k * len(rounds)) if rounds else None,
        "acceptance_histogram": histogram,
        "num_spec_steps": len(rounds),
        "num_accepted_draft_tokens": accepted,
        "num_draft_tokens": k * len(rounds),
        "num_spec_tokens": k,
    }


class _Responder:
    """Builds the OpenAI response and chunk documents of one request."""

    def __init__(self, request: CompletionRequest, engine: Engine):
        self.request, self.engine = request, engine
        self.id = f"{'chatcmpl' if request.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.engine.model_name}

    def full(self, completion: Completion) -> dict:
        if self.request.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": completion.text}, "logprobs": None, "finish_reason": completion.finish_reason}
        else:
            choice = {"index": 0, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}
        document = {
            **self._head("chat.completion" if self.request.chat else "text_completion"),
            "choices": [choice],
            "usage": _usage(completion.prompt_tokens, len(completion.generation.tokens)),
        }
        if self.engine.k:
            document["metrics"] = {"speculative_decoding": per_request_metrics(completion.generation, self.engine.k)}
        return document

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False, tokens_so_far: int | None = None) -> dict:
        if self.request.chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        document = {**self._head("chat.completion.chunk" if self.request.chat else "text_completion"), "choices": [choice]}
        if self.request.include_usage and self.request.continuous_usage and tokens_so_far is not None:
            document["usage"] = _usage(len(self.request.prompt_ids), tokens_so_far)
        return document

    def usage_chunk(self, completion: Completion) -> dict:
        document = {**self._head("chat.completion.chunk" if self.request.chat else "text_completion"), "choices": []}
        document["usage"] = _usage(completion.prompt_tokens, len(completion.generation.tokens))
        if self.engine.k:
            document["metrics"] = {"speculative_decoding": per_request_metrics(completion.generation, self.engine.k)}
        return document


def error_document(status: int, message: str, param: str | None = None) -> dict:
    """The OpenAI error shape vLLM answers with."""
    kinds = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 411: "LengthRequired", 500: "InternalServerError"}
    return {"error": {"message": message, "type": kinds.get(status, "Error"), "param": param, "code": status}}


class Handler(BaseHTTPRequestHandler):
    """One HTTP connection; `self.server.engine` does the work."""

    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    server_version = "spec-tools"

    @property
    def engine(self) -> Engine:
        return self.server.engine  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)

    # -- routing
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/health", "/ping"):
            self._send(200, b"", "text/plain")
        elif path == "/v1/models":
            self._send_json(200, self.engine.models_page())
        elif path == "/metrics":
            self._send(200, self.engine.metrics_page().encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send_json(404, error_document(404, f"no route GET {path}"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        body = self._read_body()
        if path not in routes:
            self._send_json(404, error_document(404, f"no route POST {path}"))
            return
        if body is None:
            return
        try:
            request = parse_request(body, routes[path], self.engine)
        except RequestError as error:
            self._send_json(error.status, error_document(error.status, error.message, error.param))
            return
        if request.stream:
            self._stream(request)
        else:
            self._complete(request)

    # -- bodies
    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send_json(411, error_document(411, "send the request body with a Content-Length"))
            self.close_connection = True
            return None
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self._send_json(400, error_document(400, f"request body is not valid JSON: {error}"))
            return None

    def _complete(self, request: CompletionRequest) -> None:
        responder = _Responder(request, self.engine)
        try:
            completion = self.engine.complete(request)
        except Exception as error:  # the server boundary: report, keep serving
            log.exception("generation failed")
            self._send_json(500, error_document(500, f"generation failed: {error}"))
            return
        self._send_json(200, responder.full(completion))

    def _stream(self, request: CompletionRequest) -> None:
        responder = _Responder(request, self.engine)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if request.chat:
            self._event(responder.chunk("", role=True))

        def on_text(text: str, tokens_so_far: int) -> None:
            self._event(responder.chunk(text, tokens_so_far=tokens_so_far))

        try:
            completion = self.engine.complete(request, on_text)
            self._event(responder.chunk(None if request.chat else "", completion.finish_reason, tokens_so_far=len(completion.generation.tokens)))
            if request.include_usage:
                self._event(responder.usage_chunk(completion))
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away; generation stopped")
            self.close_connection = True
            return
        except Exception as error:  # the server boundary: tell the client in the stream, as vLLM does
            log.exception("generation failed")
            self._event(error_document(500, f"generation failed: {error}"))
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    # -- writing
    def _event(self, document: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, document: dict) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OpenAIServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the engine its handlers use."""

    daemon_threads = True

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8000):
        self.engine = engine
        super().__init__((host, port), Handler)

    def handle_error(self, request, client_address) -> None:
        """A client closing its keep-alive connection is routine, not a traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            log.debug("%s closed the connection: %s", client_address, error)
        else:
            log.exception("error while serving %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000) -> OpenAIServer:
    """Bind the server (port 0 picks a free one; see `.url`); call `serve_forever()` to run it."""
    try:
        return OpenAIServer(engine, host, port)
    except OSError as error:
        raise SpecError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
