"""OpenAI's completions API as `spec-bench serve` speaks it: request checks, response documents, errors.

Every refusal is a RequestError naming the field, which the server sends in OpenAI's error shape.
Numbers are checked before they reach torch: temperature is 0 (greedy) or finite in
[MIN_TEMPERATURE, MAX_TEMPERATURE], seed an integer in torch's int64 range, max_tokens an integer
from 1 to the server's per-request limit and the room left in the context. Sampling supports
`temperature` and `seed` only; fields we cannot honour (top_p, stop strings, n > 1, ...) get a 400
instead of a silently different answer.
"""

from __future__ import annotations

import time
import uuid

import torch

from libspec.bench.decoding import Generation
from libspec.bench.prompts import encode_prompt
from libspec.bench.serving_engine import Completion, CompletionRequest

DEFAULT_TEMPERATURE = 1.0  # OpenAI's and vLLM's default when a request gives none
MIN_TEMPERATURE = 0.01  # below it logits / T overflow half precision (vLLM clamps to the same 0.01)
MAX_TEMPERATURE = 2.0  # OpenAI's documented range
SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.Generator.manual_seed takes, and vLLM's bound
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions without max_tokens, as OpenAI and vLLM

ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 408: "RequestTimeoutError",
               413: "RequestTooLargeError", 500: "InternalServerError", 503: "ServiceUnavailableError"}  # fmt: skip


class RequestError(Exception):
    """A request we refuse: HTTP status, message, and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_document(status: int, message: str, param: str | None = None) -> dict:
    """The OpenAI error shape vLLM answers with."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


# ---------------------------------------------------------------------------------------------
# Requests


def _integer(body: dict, name: str, default, low: int, high: int, why: str = ""):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(400, f"{name}: expected an integer from {low} to {high}{why}, got {value!r}", name)
    return value


def _temperature(body: dict) -> float:
    value = body.get("temperature")
    if value is None:
        return DEFAULT_TEMPERATURE
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (value == 0 or MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
        return float(value)  # NaN and infinities fail every comparison above
    raise RequestError(400, f"temperature: expected 0 (greedy) or a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE}, got {value!r}", "temperature")


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


def _max_tokens(body: dict, chat: bool, prompt_tokens: int, max_model_len: int | None, limit: int) -> int:
    room = limit if max_model_len is None else min(limit, max_model_len - prompt_tokens)
    if room < 1:
        raise RequestError(400, f"prompt: {prompt_tokens} tokens leave no room in the model's maximum context length of {max_model_len}", "prompt")
    # Without max_tokens: chat fills the room, completions give 16 tokens (OpenAI's and vLLM's defaults).
    default = room if chat else min(DEFAULT_COMPLETION_TOKENS, room)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, default, 1, limit, " (this server's --max-tokens-per-request)")
    if max_model_len is not None and max_tokens > max_model_len - prompt_tokens:
        raise RequestError(
            400, f"This model's maximum context length is {max_model_len} tokens; the prompt has {prompt_tokens} and {name} asks for {max_tokens}.", name
        )  # fmt: skip
    return max_tokens


def parse_request(body, chat: bool, engine, max_tokens_limit: int) -> CompletionRequest:
    """Check a request body and turn it into what `engine` runs; RequestError names the bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, f"request body: expected a JSON object, got {type(body).__name__ if body is not None else 'null'}")
    model = body.get("model")
    if model not in (None, "", engine.model_name):
        raise RequestError(404, f"The model `{model}` does not exist (this server serves `{engine.model_name}`).", "model")
    for name, off in _UNSUPPORTED.items():
        if body.get(name) is not None and body[name] not in off:
            raise RequestError(400, f"{name}={body[name]!r} is not supported by the spec-tools engine (temperature and seed only)", name)
    prompt_ids = _prompt_ids(body, chat, engine.tokenizer)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "stream_options: expected an object", "stream_options")
    return CompletionRequest(
        chat=chat,
        prompt_ids=prompt_ids,
        max_tokens=_max_tokens(body, chat, len(prompt_ids), engine.max_model_len, max_tokens_limit),
        temperature=_temperature(body),
        seed=_integer(body, "seed", None, *SEED_RANGE),
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


class Responder:
    """Builds the OpenAI response and chunk documents of one request."""

    def __init__(self, request: CompletionRequest, model_name: str, k: int | None):
        self.request, self.model_name, self.k = request, model_name, k
        self.id = f"{'chatcmpl' if request.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model_name}

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
        if self.k:
            document["metrics"] = {"speculative_decoding": per_request_metrics(completion.generation, self.k)}
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
        if self.k:
            document["metrics"] = {"speculative_decoding": per_request_metrics(completion.generation, self.k)}
        return document

    def final_chunk(self, completion: Completion) -> dict:
        """The chunk that carries the finish reason (no text)."""
        return self.chunk(None if self.request.chat else "", completion.finish_reason, tokens_so_far=len(completion.generation.tokens))
