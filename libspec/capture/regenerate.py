"""On-policy regeneration: replace the data's assistant replies with the verifier's own.

A draft learns to predict what the verifier says, so training on the verifier's replies rather
than on another model's (the data set's) raises acceptance. Each assistant turn is regenerated in
order, with the earlier regenerated turns in its history; the record holds exactly the tokens the
verifier generated (not a re-tokenization of their text), masked as supervised.

Batches are left-padded and planned by length; with sampling, the random seed of each batch is
derived from (seed, first input index, round, batch number), so a rerun of the same command
(including one resumed after a crash) samples the same replies.

Prompt-only inputs are answered: a conversation ending in a user turn gets one more assistant
turn (message index = the input's message count), and a `prompt` without `completion` its
completion, generated like any other reply.

Not regenerated: plain `text` and pre-tokenized inputs (passed through as they are). A
conversation is cut before its first assistant message with `tool_calls`: a regenerated reply may
call other tools than the recorded tool results answer.
"""

from __future__ import annotations

import contextlib

import hashlib
from dataclasses import dataclass

import torch

from libspec.capture.hooks import BatchLimits, plan_batches
from libspec.capture.chat import ChatRenderer, TurnTokens, prompt_ids
from libspec.capture.inputs import Example


@dataclass(frozen=True)
class SamplingOptions:
    """How replies are generated: greedy when temperature is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Reply:
    """One generated reply: its token ids (through the stop token when it stopped) and why it ended."""

    token_ids: list[int]
    finish_reason: str  # "stop" | "length"


@dataclass
class Regenerated:
    """An input after regeneration: its turns as tokens, or why it yields nothing."""

    example: Example
    turns: list[TurnTokens]
    finish_reasons: list[str]
    dropped: str | None = None  # a drop reason when no turn could be generated


def _batch_seed(seed: int, first_index: int, round_index: int, batch_index: int) -> int:
    text = f"{seed}:{first_index}:{round_index}:{batch_index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


class Regenerator:
    """Generates replies with a Hugging Face causal LM, batched by prompt length."""

    def __init__(self, model, tokenizer, renderer: ChatRenderer, options: SamplingOptions, limits: BatchLimits, max_len: int, pad_id: int):
        self.model, self.tokenizer, self.renderer = model, tokenizer, renderer
        self.options, self.limits, self.max_len, self.pad_id = options, limits, max_len, pad_id
        self.stop_ids = sorted(renderer.stop_token_ids)

    def generate(self, prompts: list[list[int]], budgets: list[int], seed_key: tuple[int, int]) -> list[Reply]:
        """A reply to each prompt of at most its budget of new tokens."""
        replies: list[Reply | None] = [None] * len(prompts)
        # Budgeted lengths: generation memory grows with prompt + new tokens.
        plan = plan_batches([len(p) + b for p, b in zip(prompts, budgets)], self.limits)
        for batch_index, batch in enumerate(plan):
            seed = _batch_seed(self.options.seed, seed_key[0], seed_key[1], batch_index)
            outputs = self._generate_batch([prompts[i] for i in batch], max(budgets[i] for i in batch), seed)
            for i, new_ids in zip(batch, outputs):
                replies[i] = self._finish(new_ids, budgets[i])
        return replies  # type: ignore[return-value]

    def _finish(self, new_ids: list[int], budget: int) -> Reply:
        for position, token in enumerate(new_ids[:budget]):
            if token in self.renderer.stop_token_ids:
                return Reply(new_ids[: position + 1], "stop")
        return Reply(new_ids[:budget], "length")

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]]:
        from transformers import GenerationConfig

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        sampling = {} if self.options.greedy else {"temperature": self.options.temperature, "top_p": self.options.top_p}
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not self.options.greedy, eos_token_id=self.stop_ids or None,
            pad_token_id=self.pad_id, **sampling,
        )
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _quiet_length_warning():
            torch.manual_seed(seed)
            output = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
        return output[:, width:].tolist()

    def regenerate(self, examples: list[Example]) -> list[Regenerated]:
        """Regenerate every assistant turn of chat examples (answering a final user turn) and the completion of prompt examples."""
        results = [Regenerated(e, [], []) for e in examples]
        self._regenerate_completions([r for r in results if r.example.kind == "prompt_completion"])
        self._regenerate_conversations([r for r in results if r.example.kind == "messages"])
        return results

    def _regenerate_completions(self, results: list[Regenerated]) -> None:
        prompts = [prompt_ids(self.tokenizer, r.example.prompt) for r in results]
        todo = [i for i, p in enumerate(prompts) if len(p) < self.max_len]
        for i in set(range(len(results))) - set(todo):
            results[i].dropped = "prompt_too_long"
        if not todo:
            return
        budgets = [min(self.options.max_new_tokens, self.max_len - len(prompts[i])) for i in todo]
        replies = self.generate([prompts[i] for i in todo], budgets, (results[todo[0]].example.index, 0))
        for i, reply in zip(todo, replies):
            ids = prompts[i] + reply.token_ids
            results[i].turns.append(TurnTokens(-1, ids, len(prompts[i]), len(ids)))
            results[i].finish_reasons.append(reply.finish_reason)

    def _regenerate_conversations(self, results: list[Regenerated]) -> None:
        conversations = [_with_reply_slot(r.example.messages) for r in results]
        targets = [_regenerable_turns(c) for c in conversations]
        for result, turns in zip(results, targets):
            if not turns:
                has_assistant = any(m["role"] == "assistant" for m in result.example.messages)
                result.dropped = "tool_calls_not_regenerated" if has_assistant else "no_assistant_turn"
        round_index = 0
        while True:
            pending = [(i, targets[i].pop(0)) for i in range(len(results)) if targets[i] and results[i].dropped is None]
            if not pending:
                return
            prompts, budgets, work = [], [], []
            for i, j in pending:
                example = results[i].example
                prompt = self.renderer.render_ids(conversations[i][:j], True, example.tools, example.location)
                if len(prompt) >= self.max_len:  # no room to reply: later turns would not fit either
                    targets[i].clear()
                    if not results[i].turns:
                        results[i].dropped = "prompt_too_long"
                    continue
                prompts.append(prompt)
                budgets.append(min(self.options.max_new_tokens, self.max_len - len(prompt)))
                work.append((i, j))
            if work:
                replies = self.generate(prompts, budgets, (results[work[0][0]].example.index, round_index))
                for (i, j), prompt, reply in zip(work, prompts, replies):
                    ids = prompt + reply.token_ids
                    results[i].turns.append(TurnTokens(j, ids, len(prompt), len(ids)))
                    results[i].finish_reasons.append(reply.finish_reason)
                    text = self.tokenizer.decode(_without_stop(reply, self.renderer.stop_token_ids), skip_special_tokens=True)
                    conversations[i][j] = {"role": "assistant", "content": text}
            round_index += 1


def _without_stop(reply: Reply, stop_ids: frozenset[int]) -> list[int]:
    ids = reply.token_ids
    return ids[:-1] if reply.finish_reason == "stop" and ids and ids[-1] in stop_ids else ids


def _with_reply_slot(messages: list[dict]) -> list[dict]:
    """A copy of the conversation, with an empty assistant turn after a final user turn for the verifier to fill."""
    slot = [{"role": "assistant", "content": ""}] if messages and messages[-1]["role"] == "user" else []
    return [*messages, *slot]


def _regenerable_turns(messages: list[dict]) -> list[int]:
    """Indices of the assistant messages to regenerate: all of them up to the first tool call."""
    turns = []
    for j, message in enumerate(messages):
        if message["role"] == "assistant":
            if message.get("tool_calls"):
                break
            turns.append(j)
    return turns


@contextlib.contextmanager
def _quiet_length_warning():
    """Silence transformers' "exceeded the model's predefined maximum length" reminder: it counts
    the left padding of a batch, while every row's own length stays within max_len (budgets above)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
