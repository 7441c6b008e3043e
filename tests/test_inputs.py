"""Reading inputs: every accepted format normalises to the same Example; bad items name file:line."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import zstandard

from libspec.errors import SpecError
from libspec.capture.inputs import count_items, expand_inputs, normalise, read_items


def items_of(tmp_path, lines: list, name: str = "in.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return list(read_items([str(path)]))


def test_openai_messages_keep_reasoning_tools_and_text_parts(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
            {"role": "assistant", "content": "4", "reasoning_content": "add them"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{\"x\": 2}"}}]},
            {"role": "tool", "content": "4", "tool_call_id": "c1"},
        ],
        "tools": [{"type": "function", "function": {"name": "calc"}}],
    }
    example = normalise(items_of(tmp_path, [record])[0])
    assert example.kind == "messages" and example.location.endswith("in.jsonl:1")
    assert example.messages[1]["content"] == "What is 2+2?"
    assert example.messages[2]["reasoning_content"] == example.messages[2]["thinking"] == "add them"
    assert example.messages[3]["content"] == ""
    assert example.messages[3]["tool_calls"][0]["function"] == {"name": "calc", "arguments": {"x": 2}}  # JSON string -> dict
    assert example.messages[4]["tool_call_id"] == "c1"
    assert example.tools == record["tools"]


def test_sharegpt_maps_speakers_and_system(tmp_path):
    record = {"system": "Sys", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}, {"from": "observation", "value": "x"}]}
    example = normalise(items_of(tmp_path, [record])[0])
    assert [(m["role"], m["content"]) for m in example.messages] == [("system", "Sys"), ("user", "hi"), ("assistant", "hello"), ("tool", "x")]


def test_text_prompt_completion_and_tokens(tmp_path):
    items = items_of(tmp_path, [{"text": "abc"}, {"prompt": "p", "completion": "c"}, {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}])
    kinds = [normalise(i) for i in items]
    assert [k.kind for k in kinds] == ["text", "prompt_completion", "tokens"]
    assert kinds[1].prompt == "p" and kinds[1].completion == "c"
    assert kinds[2].input_ids == [5, 6, 7] and kinds[2].loss_mask == [0, 1, 1]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "in.jsonl:2: not valid JSON"),
        ([1, 2], "in.jsonl:2: expected a JSON object"),
        ({"foo": 1}, "in.jsonl:2: expected field messages, conversations, text, prompt+completion or input_ids+loss_mask; found foo".replace("+", r"\+")),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"in.jsonl:2: field messages\[0\]: field role: expected one of"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text parts are supported, found 'image_url'"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, r"field conversations\[0\]: field from: unknown speaker 'alien'"),
        ({"input_ids": [1, 2], "loss_mask": [1]}, "length 1 differs from input_ids length 2"),
        ({"input_ids": [1, -2], "loss_mask": [1, 1]}, "field input_ids: expected non-negative integers"),
        ({"input_ids": [1, 2], "loss_mask": [1, 2]}, "field loss_mask: expected only 0 and 1"),
        ({"text": ""}, "field text: expected a non-empty string"),
        ({"prompt": "p"}, "field completion: expected a non-empty string"),
    ],
)
def test_bad_items_name_file_line_and_field(tmp_path, line, message):
    items = items_of(tmp_path, [{"text": "fine"}, line])
    normalise(items[0])
    with pytest.raises(SpecError, match=message):
        normalise(items[1])


def test_issue_12_a_prompt_without_completion_is_prompt_only_and_refused_naming_regenerate(tmp_path):
    items = items_of(tmp_path, [{"prompt": "p"}, {"prompt": "p", "completion": ""}, {"prompt": "p", "completion": None}, {"prompt": "p", "completion": 5}])
    for item in items[:3]:
        with pytest.raises(SpecError, match=r"in.jsonl:\d: field completion: expected a non-empty string; a prompt alone needs --regenerate"):
            normalise(item)
        example = normalise(item, prompt_only=True)  # what --regenerate reads: the verifier writes the completion
        assert example.kind == "prompt_completion" and example.prompt == "p" and example.completion is None
    with pytest.raises(SpecError, match="in.jsonl:4: field completion: expected a non-empty string$"):
        normalise(items[3], prompt_only=True)  # a completion of the wrong type stays an error


def test_issue_12_conversations_ending_in_a_user_turn_normalise_as_they_are(tmp_path):
    items = items_of(tmp_path, [{"messages": [{"role": "user", "content": "hi"}]}, {"system": "S", "conversations": [{"from": "human", "value": "hi"}]}])
    assert [[m["role"] for m in normalise(i).messages] for i in items] == [["user"], ["system", "user"]]


def test_global_indices_over_files_skip_blank_lines_and_count_bad_ones(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.jsonl").write_text('{"text": "b1"}\n\n{"text": "b2"}\n')
    (tmp_path / "d" / "sub" / "c.json").write_text(json.dumps([{"text": "c1"}, {"text": "c2"}]))
    (tmp_path / "d" / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a1"}\nbroken\n'))
    (tmp_path / "d" / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "z1"}\n'))
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    files = expand_inputs([str(tmp_path / "d")])
    assert [f.split("/d/")[1] for f in files] == ["a.jsonl.gz", "b.jsonl", "sub/c.json", "z.jsonl.zst"]
    items = list(read_items(files))
    assert [i.index for i in items] == list(range(7))
    assert [(i.line, i.error is not None) for i in items] == [(1, False), (2, True), (1, False), (3, False), (1, False), (2, False), (1, False)]
    assert [normalise(i).text for i in items if i.error is None] == ["a1", "b1", "b2", "c1", "c2", "z1"]
    assert count_items(files) == 7


def test_stdin_and_missing_inputs(tmp_path):
    items = list(read_items(["-"], stdin=io.BytesIO(b'{"text": "x"}\n{"text": "y"}\n')))
    assert [normalise(i).text for i in items] == ["x", "y"] and items[0].source == "-"
    assert count_items(["-"]) is None
    with pytest.raises(SpecError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="holds no input files"):
        expand_inputs([str(tmp_path / "empty")])
