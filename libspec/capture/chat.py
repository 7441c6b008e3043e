"""Chat templates and loss masks: which tokens of a conversation the verifier itself produces.

The loss mask is computed by rendering prefixes of the conversation, the way inference sees it, so
no template needs `{% generation %}` markers. For each assistant message j:

    prompt_j = tokens of render(messages[:j], add_generation_prompt=True)
    full_j   = tokens of render(messages[:j+1])

The model produces `full_j[len(prompt_j):]`, up to and including the first stop token (the
tokenizer's and generation config's eos ids; what follows, such as ChatML's newline after
`<|im_end|>`, is template glue the model never generates). When the generation prompt is not a
prefix of `full_j` (templates that pre-fill e.g. an empty `<think></think>` only in the prompt),
the reply starts at their common prefix, provided the history itself renders the same.

Multi-turn policy (`auto`): if every turn's rendering is a prefix of the last one, the
conversation becomes one record with every assistant turn supervised. Templates that drop past
reasoning (Qwen3-style: `<think>` kept only after the last user message) render earlier turns
differently once later turns follow; then the conversation becomes one record per assistant
turn, each with its history exactly as inference would see it (upstream speculators does this
for every conversation; `per-turn` forces it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from libspec.errors import SpecError

TURN_POLICIES = ("auto", "per-turn")


class ChatTemplateError(SpecError):
    """The chat template failed on an input (e.g. it requires alternating roles)."""


class UnstableTemplate(SpecError):
    """The chat template renders the history differently once a reply follows: no sound loss mask."""


@dataclass(frozen=True)
class TurnTokens:
    """One assistant turn: the conversation through it as tokens, and the span the model produces."""

    message_index: int
    ids: list[int]
    start: int  # first token of the reply
    end: int  # one past its last (its stop token included)


@dataclass(frozen=True)
class TokenizedSample:
    """Token ids and loss mask of one record, with the message indices of the supervised turns."""

    input_ids: list[int]
    loss_mask: list[int]
    turns: tuple[int, ...] = ()

    @property
    def num_supervised(self) -> int:
        return sum(self.loss_mask)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ChatRenderer:
    """Renders conversations with a tokenizer's chat template and finds the assistant-produced tokens."""

    def __init__(self, tokenizer, chat_template: str | None = None, template_kwargs: dict | None = None, stop_token_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.template_kwargs = dict(template_kwargs or {})
        self.stop_token_ids = frozenset(stop_token_ids)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # The Rust tokenizer directly: the Python wrapper's per-call overhead dominates short texts.
        self._encode = (lambda text: backend.encode(text, add_special_tokens=False).ids) if backend else (
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        )

    @property
    def has_template(self) -> bool:
        return bool(self.chat_template or getattr(self.tokenizer, "chat_template", None))

    def render_text(self, messages: list[dict], add_generation_prompt: bool, tools: list | None = None, where: str = "") -> str:
        """The chat template's text for `messages` (SpecError naming `where` if the template fails)."""
        if not self.has_template:
            raise SpecError(f"{where}: the verifier's tokenizer has no chat template; pass one with --chat-template FILE")
        import jinja2

        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **self.template_kwargs,
            )
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as error:
            raise ChatTemplateError(f"{where}: chat template failed: {error}") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text, adding nothing (templates write their own BOS)."""
        return list(self._encode(text))

    def render_ids(self, messages: list[dict], add_generation_prompt: bool, tools: list | None = None, where: str = "") -> list[int]:
        """Token ids of the rendered conversation."""
        return self.encode(self.render_text(messages, add_generation_prompt, tools, where))

    def reply_end(self, ids: list[int], start: int, end: int) -> int:
        """One past the first stop token in ids[start:end], or `end` when the reply has none."""
        for position in range(start, end):
            if ids[position] in self.stop_token_ids:
                return position + 1
        return end

    def assistant_turns(self, messages: list[dict], tools: list | None = None, where: str = "") -> list[TurnTokens]:
        """Every assistant turn of `messages`, each rendered as inference sees it (see module doc)."""
        turns = []
        for j, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render_ids(messages[:j], True, tools, where)
            full = self.render_ids(messages[: j + 1], False, tools, where)
            start = common_prefix_length(prompt, full)
            if start < len(prompt):
                # The generation prompt differs from how the reply's header renders; fine as long
                # as everything before the header (the history) is unchanged.
                history = self.render_ids(messages[:j], False, tools, where)
                if common_prefix_length(history, full) < len(history):
                    raise UnstableTemplate(f"{where}: chat template renders the history before message {j} differently once the reply is added")
            if start >= len(full):
                raise UnstableTemplate(f"{where}: chat template renders nothing for assistant message {j}")
            turns.append(TurnTokens(j, full, start, self.reply_end(full, start, len(full))))
        return turns


def samples_from_turns(turns: list[TurnTokens], policy: str = "auto") -> list[TokenizedSample]:
    """Records for a conversation's assistant turns: one with all turns when consistent, else one per turn."""
    if not turns:
        return []
    if policy not in TURN_POLICIES:
        raise SpecError(f"unknown turn policy {policy!r}; expected one of {', '.join(TURN_POLICIES)}")
    last = turns[-1]
    if policy == "auto" and all(t.ids[: t.end] == last.ids[: t.end] for t in turns):
        mask = [0] * last.end
        for turn in turns:
            mask[turn.start : turn.end] = [1] * (turn.end - turn.start)
        return [TokenizedSample(last.ids[: last.end], mask, tuple(t.message_index for t in turns))]
    return [
        TokenizedSample(t.ids[: t.end], [0] * t.start + [1] * (t.end - t.start), (t.message_index,))
        for t in turns
    ]


def truncate(sample: TokenizedSample, max_len: int | None) -> TokenizedSample:
    """Keep the first `max_len` tokens (right truncation, as a model with that context sees them)."""
    if max_len is None or len(sample.input_ids) <= max_len:
        return sample
    return TokenizedSample(sample.input_ids[:max_len], sample.loss_mask[:max_len], sample.turns)


def text_sample(tokenizer, text: str) -> TokenizedSample:
    """Plain text: every token supervised except the special tokens the tokenizer adds (e.g. BOS)."""
    encoded = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True)
    return TokenizedSample(list(encoded["input_ids"]), [1 - s for s in encoded["special_tokens_mask"]])


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a raw (non-chat) prompt, with the special tokens the tokenizer adds in front."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def prompt_completion_sample(tokenizer, prompt: str, completion: str) -> TokenizedSample:
    """Raw prompt + completion (no chat template), tokenized apart so the boundary is exact."""
    head = prompt_ids(tokenizer, prompt)
    tail = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return TokenizedSample(head + tail, [0] * len(head) + [1] * len(tail))
