"""Loss masks supervise exactly the tokens the verifier produces, on three kinds of chat template."""

from __future__ import annotations

import pytest
from tokenizers.processors import TemplateProcessing
from tiny_chat import make_tokenizer, stop_ids

from libspec.capture.chat import (
    ChatRenderer,
    ChatTemplateError,
    TokenizedSample,
    UnstableTemplate,
    prompt_completion_sample,
    samples_from_turns,
    text_sample,
    truncate,
)

A1, A2 = "Hello! How can I help?", "def add(a, b):\n    return a + b"
CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": "add code"},
    {"role": "assistant", "content": A2},
    {"role": "user", "content": "thanks"},  # trailing non-assistant turns are not part of any record
]


def renderer(template: str, **kwargs) -> ChatRenderer:
    tokenizer = make_tokenizer(template)
    return ChatRenderer(tokenizer, stop_token_ids=stop_ids(tokenizer, template if template in ("llama3", "qwen3", "chatml") else "chatml"), **kwargs)


def supervised_spans(r: ChatRenderer, sample: TokenizedSample) -> list[str]:
    """The decoded runs of supervised tokens."""
    spans, current = [], []
    for token, mask in zip(sample.input_ids + [None], sample.loss_mask + [0]):
        if mask:
            current.append(token)
        elif current:
            spans.append(r.tokenizer.decode(current))
            current = []
    return spans


def records(template: str, messages=CONVERSATION, policy: str = "auto", **kwargs) -> tuple[ChatRenderer, list[TokenizedSample]]:
    r = renderer(template, **kwargs)
    return r, samples_from_turns(r.assistant_turns(messages, where="test:1"), policy)


def assert_history_as_inference_sees_it(r: ChatRenderer, sample: TokenizedSample, messages=CONVERSATION) -> None:
    """Before each supervised turn j, the record holds the generation prompt of messages[:j] (or its header-free prefix)."""
    starts = [i for i, m in enumerate(sample.loss_mask) if m and (i == 0 or not sample.loss_mask[i - 1])]
    for j, start in zip(sample.turns, starts):
        prompt = r.render_ids(messages[:j], True)
        assert sample.input_ids[:start] == prompt[:start]
        assert start == len(prompt) or r.render_text(messages[:j], True).startswith(r.tokenizer.decode(sample.input_ids[:start]))


@pytest.mark.parametrize(
    "template, end",
    [("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>")],
)
def test_multi_turn_one_record_supervises_every_assistant_reply(template, end):
    r, samples = records(template)
    assert len(samples) == 1
    (sample,) = samples
    assert sample.turns == (2, 4)
    assert supervised_spans(r, sample) == [A1 + end, A2 + end]  # nothing else: no headers, no trailing newline
    assert_history_as_inference_sees_it(r, sample)
    assert r.tokenizer.decode(sample.input_ids).endswith(A2 + end)  # ends at the last supervised token


def test_chatml_mask_equals_transformers_generation_markers():
    r, (sample,) = records("chatml", CONVERSATION[:5])
    rendered = r.tokenizer.apply_chat_template(CONVERSATION[:5], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    hf_ids, hf_mask = list(rendered["input_ids"]), list(rendered["assistant_masks"])
    assert hf_ids[: len(sample.input_ids)] == sample.input_ids
    assert hf_mask[: len(sample.loss_mask)] == sample.loss_mask and sum(hf_mask) == sum(sample.loss_mask)


def test_qwen3_template_dropping_past_reasoning_gives_one_record_per_turn():
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["reasoning_content"], messages[4]["reasoning_content"] = "greet them", "write it"
    r, samples = records("qwen3", messages)
    assert [s.turns for s in samples] == [(2,), (4,)]
    first, second = (supervised_spans(r, s) for s in samples)
    assert first == ["<think>\ngreet them\n</think>\n\n" + A1 + "<|im_end|>"]
    assert second == ["<think>\nwrite it\n</think>\n\n" + A2 + "<|im_end|>"]
    context = r.tokenizer.decode(samples[1].input_ids)
    assert "greet them" not in context and "<|im_start|>assistant\n" + A1 + "<|im_end|>" in context  # history as inference renders it
    for sample in samples:
        assert_history_as_inference_sees_it(r, sample, messages)


def test_qwen3_without_reasoning_and_thinking_disabled():
    # enable_thinking=false pre-fills an empty think block in the prompt: only the answer is produced.
    r, samples = records("qwen3", CONVERSATION[:3], template_kwargs={"enable_thinking": False})
    assert [supervised_spans(r, s) for s in samples] == [[A1 + "<|im_end|>"]]
    assert r.tokenizer.decode(samples[0].input_ids).endswith("<think>\n\n</think>\n\n" + A1 + "<|im_end|>")


def test_per_turn_policy_and_history_render_order():
    r, samples = records("llama3", policy="per-turn")
    assert [s.turns for s in samples] == [(2,), (4,)]
    assert [supervised_spans(r, s) for s in samples] == [[A1 + "<|eot_id|>"], [A2 + "<|eot_id|>"]]
    assert samples[1].input_ids[: len(samples[0].input_ids)] == samples[0].input_ids


def test_generation_prompt_that_differs_from_the_reply_header():
    # Like R1 distills: the generation prompt opens a think block that the history never shows.
    template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
    )
    r, (sample,) = records(template, CONVERSATION[:3])
    assert supervised_spans(r, sample) == [A1 + "<|im_end|>"]


def test_unstable_template_and_failing_template_are_reported():
    unstable = (
        "{{- 'final ' if messages[-1].role == 'assistant' else 'draft ' }}"
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    with pytest.raises(UnstableTemplate, match="test:1: chat template renders the history before message 2 differently"):
        records(unstable, CONVERSATION[:3])
    strict = "{%- if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{%- endif %}x"
    with pytest.raises(ChatTemplateError, match="test:1: chat template failed: Conversations must start with a user message"):
        records(strict, CONVERSATION[:3])


def test_truncation_keeps_the_head_and_can_leave_nothing_supervised():
    r, (sample,) = records("chatml")
    first_reply_start = sample.loss_mask.index(1)
    cut = truncate(sample, first_reply_start + 3)
    assert cut.input_ids == sample.input_ids[: first_reply_start + 3] and cut.num_supervised == 3
    assert truncate(sample, first_reply_start).num_supervised == 0
    assert truncate(sample, None) is sample


def test_text_and_prompt_completion_samples():
    tokenizer = make_tokenizer("chatml")
    bos = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    sample = text_sample(tokenizer, "import os")
    assert sample.input_ids[0] == bos and sample.loss_mask[0] == 0 and all(sample.loss_mask[1:])
    pc = prompt_completion_sample(tokenizer, "def add(a, b):", "\n    return a + b")
    head = tokenizer("def add(a, b):")["input_ids"]
    assert pc.input_ids[: len(head)] == head and pc.loss_mask == [0] * len(head) + [1] * (len(pc.input_ids) - len(head))
    assert tokenizer.decode(pc.input_ids[len(head) :]) == "\n    return a + b"
