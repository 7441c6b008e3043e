"""Tiny tokenizers and verifier folders with real chat templates, built in-line for tests (nothing downloaded)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"]
THINK = ["<think>", "</think>"]  # added but not special, as in Qwen3
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Continue this Python code:",
    "import os\nimport sys\nprint(os.getcwd())\n",
    "Hello! How can I help you today? Let me think about it.",
]

# Llama-3-like: header tokens, content trimmed, <|eot_id|> ends every turn.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Qwen3-like ChatML with <think>: reasoning is shown only for assistant turns after the last user
# message (the last turn always gets a think block), so past reasoning is dropped from history;
# enable_thinking=false pre-fills an empty think block in the generation prompt.
QWEN3_TEMPLATE = (
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_query = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- set reasoning = message.reasoning_content if message.reasoning_content is defined and message.reasoning_content else '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# The project verifier's ChatML template (libspec.demo.tiny_verifier.CHAT_TEMPLATE), with generation markers.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}{{- message['content'] + '<|im_end|>' -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

TEMPLATES = {"llama3": LLAMA3_TEMPLATE, "qwen3": QWEN3_TEMPLATE, "chatml": CHATML_TEMPLATE}
STOP_TOKENS = {"llama3": "<|eot_id|>", "qwen3": "<|im_end|>", "chatml": "<|im_end|>"}


@lru_cache(maxsize=None)
def _trained_bpe() -> str:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, min_frequency=2, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(CORPUS * 3, trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    return bpe.to_str()


def make_tokenizer(template: str = "chatml") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~320 ids) with one of the test chat templates."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_bpe()),
        bos_token="<|begin_of_text|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        chat_template=TEMPLATES.get(template, template),
    )


def stop_ids(tokenizer, template: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(STOP_TOKENS[template]), tokenizer.eos_token_id]


MODEL_CONFIG = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
    head_dim=8, max_position_embeddings=256, tie_word_embeddings=False,
)


def write_chat_verifier(directory: Path, template: str = "chatml", model_type: str = "llama", seed: int = 0, **config) -> Path:
    """A complete verifier folder: tokenizer with a chat template, random model weights, generation config."""
    tokenizer = make_tokenizer(template)
    torch.manual_seed(seed)
    model_config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        **{**MODEL_CONFIG, **config},
    )
    model = AutoModelForCausalLM.from_config(model_config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(STOP_TOKENS.get(template, "<|im_end|>"))],
        pad_token_id=tokenizer.pad_token_id,
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def loaded_verifier(directory: Path):
    """A verifier folder loaded for capture on the CPU in float32."""
    from libspec.verifier import load_model, load_verifier

    verifier = load_verifier(str(directory))
    load_model(verifier, "cpu", "float32")
    return verifier


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def conversations(count: int, seed: int = 0) -> list[dict]:
    """Varied chat inputs: OpenAI messages (1-2 turns, some with system prompts) and ShareGPT."""
    import random

    rng = random.Random(seed)
    words = "def add return import print hello fox dog quick lazy think code help".split()
    records = []
    for i in range(count):
        say = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
        messages = [{"role": "system", "content": "You are a helpful assistant."}] if i % 3 == 0 else []
        for _ in range(1 + i % 2):
            messages += [{"role": "user", "content": say(rng.randint(2, 12))}, {"role": "assistant", "content": say(rng.randint(1, 30))}]
        if i % 4 == 1:
            records.append({"conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in messages if m["role"] != "system"]})
        else:
            records.append({"messages": messages})
    return records
