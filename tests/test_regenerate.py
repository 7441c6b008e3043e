"""On-policy regeneration: the records hold exactly what the verifier generates, reproducibly."""

from __future__ import annotations

import pytest
import torch
from tiny_chat import loaded_verifier, write_chat_verifier

from libspec.capture.hooks import BatchLimits
from libspec.capture.chat import ChatRenderer, samples_from_turns
from libspec.capture.inputs import Example
from libspec.capture.regenerate import Regenerator, SamplingOptions


@pytest.fixture(scope="module")
def verifier(tmp_path_factory):
    directory = write_chat_verifier(tmp_path_factory.mktemp("verifier") / "v", "chatml")
    return loaded_verifier(str(directory))


def regenerator(verifier, max_len: int = 200, **options) -> Regenerator:
    renderer = ChatRenderer(verifier.tokenizer, stop_token_ids=verifier.stop_token_ids)
    options = SamplingOptions(**{"max_new_tokens": 6, **options})
    return Regenerator(verifier.model, verifier.tokenizer, renderer, options, BatchLimits(4096, 8), max_len, verifier.pad_token_id)


def chat(index: int, *turns: str, system: bool = False) -> Example:
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    for text in turns:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "an old reply"}]
    return Example(index=index, source="test", line=index + 1, kind="messages", messages=messages)


def greedy_alone(verifier, prompt: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = verifier.model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=list(verifier.stop_token_ids), pad_token_id=verifier.pad_token_id)
    return out[0, len(prompt) :].tolist()


def test_greedy_batched_replies_equal_unbatched_generation(verifier):
    regen = regenerator(verifier)
    examples = [chat(0, "hello"), chat(1, "def add code please", system=True), chat(2, "quick fox")]
    results = regen.regenerate(examples)
    for example, result in zip(examples, results):
        (turn,) = result.turns
        prompt = regen.renderer.render_ids(example.messages[:-1], True)
        assert turn.ids[: turn.start] == prompt
        assert turn.ids[turn.start :] == greedy_alone(verifier, prompt, 6)
        assert result.finish_reasons == ["length"] and turn.end == len(turn.ids)
        (sample,) = samples_from_turns(result.turns)
        assert sample.loss_mask == [0] * len(prompt) + [1] * 6


def test_sampling_is_reproducible_with_the_seed(verifier):
    examples = [chat(i, "hello there") for i in range(3)]
    first = [r.turns[0].ids for r in regenerator(verifier, temperature=1.0, seed=7).regenerate(examples)]
    again = [r.turns[0].ids for r in regenerator(verifier, temperature=1.0, seed=7).regenerate(examples)]
    other = [r.turns[0].ids for r in regenerator(verifier, temperature=1.0, seed=8).regenerate(examples)]
    assert first == again and first != other


def test_multi_turn_regenerates_in_order_with_regenerated_history(verifier):
    regen = regenerator(verifier)
    (result,) = regen.regenerate([chat(0, "hello", "more please")])
    assert [t.message_index for t in result.turns] == [1, 3]
    first_reply = verifier.tokenizer.decode(result.turns[0].ids[result.turns[0].start :], skip_special_tokens=True)
    second_context = verifier.tokenizer.decode(result.turns[1].ids[: result.turns[1].start])
    assert "an old reply" not in second_context and first_reply in second_context


def test_stop_tokens_end_replies(verifier):
    original = verifier.model.lm_head.weight.data.clone()
    verifier.model.lm_head.weight.data.zero_()  # all logits equal: greedy picks id 0, <|endoftext|>
    try:
        (result,) = regenerator(verifier).regenerate([chat(0, "hello")])
    finally:
        verifier.model.lm_head.weight.data.copy_(original)
    turn = result.turns[0]
    assert result.finish_reasons == ["stop"] and turn.ids[turn.start :] == [verifier.tokenizer.eos_token_id]


def test_tool_calls_prompt_length_and_completions(verifier):
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}
    tool_first = Example(0, "test", 1, "messages", messages=[{"role": "user", "content": "x"}, call, {"role": "tool", "content": "1"}, {"role": "assistant", "content": "done"}])
    mixed = Example(1, "test", 2, "messages", messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "y"}, call])
    completion = Example(2, "test", 3, "prompt_completion", prompt="import os", completion="\nold")
    results = regenerator(verifier).regenerate([tool_first, mixed, completion])
    assert results[0].dropped == "tool_calls_not_regenerated"
    assert [t.message_index for t in results[1].turns] == [1]  # cut before the tool call
    prompt = verifier.tokenizer("import os")["input_ids"]
    assert results[2].turns[0].ids[: len(prompt)] == prompt and len(results[2].turns[0].ids) == len(prompt) + 6
    too_long = regenerator(verifier, max_len=5).regenerate([chat(0, "a long enough question for five tokens")])
    assert too_long[0].dropped == "prompt_too_long"


def test_issue_12_a_conversation_ending_in_a_user_turn_gets_the_verifiers_answer(verifier):
    regen = regenerator(verifier)
    prompt_only = Example(0, "test", 1, "messages", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
    follow_up = Example(1, "test", 2, "messages", messages=chat(1, "hello").messages + [{"role": "user", "content": "more please"}])
    system_only = Example(2, "test", 3, "messages", messages=[{"role": "system", "content": "Be brief."}])
    first, second, third = regen.regenerate([prompt_only, follow_up, system_only])
    (turn,) = first.turns
    prompt = regen.renderer.render_ids(prompt_only.messages, True)
    assert turn.message_index == 2 and turn.ids[: turn.start] == prompt  # a new turn after the input's messages
    assert turn.ids[turn.start :] == greedy_alone(verifier, prompt, 6)
    assert [t.message_index for t in second.turns] == [1, 3]  # the recorded reply regenerated, then the last user turn answered
    assert third.dropped == "no_assistant_turn"  # nothing to answer


def test_issue_12_a_prompt_without_completion_gets_the_verifiers_completion(verifier):
    (result,) = regenerator(verifier).regenerate([Example(0, "test", 1, "prompt_completion", prompt="import os")])
    prompt = verifier.tokenizer("import os")["input_ids"]
    (turn,) = result.turns
    assert turn.ids[: turn.start] == prompt and turn.ids[turn.start :] == greedy_alone(verifier, prompt, 6)
