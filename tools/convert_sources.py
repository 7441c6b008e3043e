"""Random-weight draft checkpoints in the published layouts, at the published sizes, for
`./just bench-convert` (tools/bench_convert.py): what spec-convert and upstream's converter read.

Each layout is one `Layout`: the draft's shapes as the published checkpoint has them (file kind,
dtype, tensor names and shapes, config keys), and the verifier it was made for. `write_layout`
writes the source folder and a stand-in verifier folder: the verifier's config.json plus only
the tensors a converter reads from it (embed_tokens, lm_head, final norm) at full size. `scale`
shrinks hidden size, vocabularies and intermediate size together (1.0: the published sizes).
Weights are random: memory and time depend on shapes and dtypes, not on values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from libspec.format.weights_file import write_weights

HEAD_DIM = 128


@dataclass(frozen=True)
class Layout:
    """One published draft: its format, shapes, storage and verifier."""

    kind: str  # safeailab-eagle3, specforge-eagle3, zlab-dflash, safeailab-eagle
    published_as: str
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    draft_vocab: int
    draft_layers: int
    verifier_layers: int
    verifier_intermediate: int
    dtype: torch.dtype
    weights_file: str  # model.safetensors or pytorch_model.bin
    embed_tokens: bool = True
    extra: dict = field(default_factory=dict)  # layout-specific config keys

    def scaled(self, scale: float) -> "Layout":
        """Hidden size, heads, vocabularies and intermediate sizes times `scale` (head_dim kept)."""
        if scale == 1.0:
            return self
        hidden = max(HEAD_DIM, round(self.hidden * scale / HEAD_DIM) * HEAD_DIM)
        factor = hidden / self.hidden  # heads follow the hidden size actually reached
        heads = max(1, round(self.heads * factor))
        while hidden % heads:  # transformers' configs want hidden divisible by heads
            heads -= 1
        kv_heads = max(1, min(heads, round(self.kv_heads * factor)))
        while heads % kv_heads:
            kv_heads -= 1
        return replace(
            self, hidden=hidden, heads=heads, kv_heads=kv_heads, intermediate=max(8, round(self.intermediate * scale)),
            vocab=max(64, round(self.vocab * scale)), draft_vocab=max(32, round(self.draft_vocab * scale)),
            verifier_intermediate=max(8, round(self.verifier_intermediate * scale)),
        )  # fmt: skip


LLAMA3_ROPE = {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
QWEN3_ROPE = {"rope_theta": 1000000.0}

# Shapes and dtypes as in the real configs of tests/data/published_configs (SOURCES.md there).
LAYOUTS: dict[str, Layout] = {
    "safeailab-eagle3-llama3.1-8b": Layout(
        "safeailab-eagle3", "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", 4096, 32, 8, 14336, 128256, 32000, 1, 32, 14336,
        torch.float16, "pytorch_model.bin", extra=LLAMA3_ROPE,
    ),
    "specforge-eagle3-qwen3-8b": Layout(
        "specforge-eagle3", "SpecForge EAGLE-3 for Qwen/Qwen3-8B (--to hf)", 4096, 32, 8, 12288, 151936, 32000, 1, 36, 12288,
        torch.bfloat16, "model.safetensors", extra={**QWEN3_ROPE, "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 17, 32]}},
    ),
    "specforge-eagle3.1-qwen3-30b-a3b": Layout(
        "specforge-eagle3", "SpecForge EAGLE-3.1 (fc_norm) for Qwen/Qwen3-30B-A3B", 2048, 32, 4, 12288, 151936, 32000, 1, 48, 6144,
        torch.bfloat16, "model.safetensors", extra={**QWEN3_ROPE, "fc_norm": True, "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 23, 44]}},
    ),
    "zlab-dflash-qwen3-8b": Layout(
        "zlab-dflash", "z-lab/Qwen3-8B-DFlash-b16", 4096, 32, 8, 12288, 151936, 151936, 5, 36, 12288,
        torch.bfloat16, "model.safetensors", embed_tokens=False,
        extra={**QWEN3_ROPE, "block_size": 16, "dflash_config": {"mask_token_id": 151669, "target_layer_ids": [1, 9, 17, 25, 33]}},
    ),
    "safeailab-eagle1-vicuna-7b": Layout(
        "safeailab-eagle", "yuhuili/EAGLE-Vicuna-7B-v1.3", 4096, 32, 32, 11008, 32000, 32000, 1, 32, 11008,
        torch.float16, "pytorch_model.bin", extra={"rope_theta": 10000.0, "bias": True},
    ),
}


class _Random:
    """Random tensors of a given dtype, made in blocks so a 1 GB bf16 table never exists in float32."""

    def __init__(self, seed: int, dtype: torch.dtype):
        self.generator, self.dtype = torch.Generator().manual_seed(seed), dtype

    def matrix(self, rows: int, cols: int) -> torch.Tensor:
        out = torch.empty(rows, cols, dtype=self.dtype)
        step = max(1, (16 << 20) // max(1, cols))
        for start in range(0, rows, step):
            block = torch.randn(min(step, rows - start), cols, generator=self.generator)
            out[start : start + step] = block.mul_(1 / math.sqrt(cols))
        return out

    def norm(self, size: int) -> torch.Tensor:
        return (1 + 0.1 * torch.randn(size, generator=self.generator)).to(self.dtype)


def _layer(w: _Random, layout: Layout, prefix: str, width: int, *, input_norm: bool, hidden_norm: bool = False, qk_norm: bool = False) -> dict:
    q, kv = layout.heads * HEAD_DIM, layout.kv_heads * HEAD_DIM
    tensors = {
        f"{prefix}self_attn.q_proj.weight": w.matrix(q, width),
        f"{prefix}self_attn.k_proj.weight": w.matrix(kv, width),
        f"{prefix}self_attn.v_proj.weight": w.matrix(kv, width),
        f"{prefix}self_attn.o_proj.weight": w.matrix(layout.hidden, q),
        f"{prefix}mlp.gate_proj.weight": w.matrix(layout.intermediate, layout.hidden),
        f"{prefix}mlp.up_proj.weight": w.matrix(layout.intermediate, layout.hidden),
        f"{prefix}mlp.down_proj.weight": w.matrix(layout.hidden, layout.intermediate),
        f"{prefix}post_attention_layernorm.weight": w.norm(layout.hidden),
    }
    if input_norm:
        tensors[f"{prefix}input_layernorm.weight"] = w.norm(layout.hidden)
    if hidden_norm:
        tensors[f"{prefix}hidden_norm.weight"] = w.norm(layout.hidden)
    if qk_norm:
        tensors[f"{prefix}self_attn.q_norm.weight"] = w.norm(HEAD_DIM)
        tensors[f"{prefix}self_attn.k_norm.weight"] = w.norm(HEAD_DIM)
    return tensors


def _vocab_maps(vocab: int, draft_vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """d2t (offsets) and t2d (mask) of a draft vocabulary of random verifier ids."""
    targets = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:draft_vocab].sort().values
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[targets] = True
    return targets - torch.arange(draft_vocab), t2d


def draft_tensors(layout: Layout, seed: int = 0) -> dict[str, torch.Tensor]:
    """The draft's tensors under the source's own names."""
    w, h = _Random(seed, layout.dtype), layout.hidden
    if layout.kind == "zlab-dflash":
        tensors = {"fc.weight": w.matrix(h, layout.draft_layers * h), "hidden_norm.weight": w.norm(h), "norm.weight": w.norm(h)}
        for index in range(layout.draft_layers):
            tensors.update(_layer(w, layout, f"layers.{index}.", h, input_norm=True, qk_norm=True))
        return tensors
    if layout.kind == "safeailab-eagle":
        tensors = {"fc.weight": w.matrix(h, 2 * h), "fc.bias": (0.1 * torch.randn(h, generator=w.generator)).to(layout.dtype)}
        tensors.update(_layer(w, layout, "layers.0.", h, input_norm=False))
    else:  # EAGLE-3: one midlayer reading [embedding, hidden]
        tensors = {**_layer(w, layout, "midlayer.", 2 * h, input_norm=True, hidden_norm=True), "fc.weight": w.matrix(h, 3 * h), "norm.weight": w.norm(h)}
        tensors["lm_head.weight"] = w.matrix(layout.draft_vocab, h)
        tensors["d2t"], tensors["t2d"] = _vocab_maps(layout.vocab, layout.draft_vocab)
        if layout.extra.get("fc_norm"):
            tensors.update({f"fc_norm.{i}.weight": w.norm(h) for i in range(3)})
    if layout.embed_tokens:
        tensors["embed_tokens.weight"] = w.matrix(layout.vocab, h)
    return tensors


def draft_config(layout: Layout) -> dict:
    """The source's config.json as the publisher writes it."""
    config = {
        "model_type": "qwen3" if layout.kind == "zlab-dflash" else "llama", "hidden_size": layout.hidden,
        "intermediate_size": layout.intermediate, "num_attention_heads": layout.heads, "num_key_value_heads": layout.kv_heads,
        "head_dim": HEAD_DIM, "num_hidden_layers": layout.draft_layers, "vocab_size": layout.vocab, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": str(layout.dtype).removeprefix("torch."), **layout.extra,
    }  # fmt: skip
    if layout.kind == "zlab-dflash":
        config.update({"architectures": ["DFlashDraftModel"], "num_target_layers": layout.verifier_layers, "attention_bias": False})
        config["dflash_config"] = {**config["dflash_config"], "mask_token_id": min(config["dflash_config"]["mask_token_id"], layout.vocab - 1)}
    elif layout.kind == "safeailab-eagle":
        config["architectures"] = ["LlamaForCausalLM"]
    else:
        config.update({"architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": layout.draft_vocab})
    return config


def verifier_config(layout: Layout) -> dict:
    """The config.json of the verifier the draft was made for (only what converters read matters)."""
    qwen = layout.kind in ("zlab-dflash", "specforge-eagle3")
    return {
        "architectures": ["Qwen3ForCausalLM" if qwen else "LlamaForCausalLM"], "model_type": "qwen3" if qwen else "llama",
        "hidden_size": layout.hidden, "intermediate_size": layout.verifier_intermediate, "num_hidden_layers": layout.verifier_layers,
        "num_attention_heads": layout.heads, "num_key_value_heads": layout.kv_heads, "head_dim": HEAD_DIM, "vocab_size": layout.vocab,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        **{k: v for k, v in layout.extra.items() if k.startswith("rope")},
    }  # fmt: skip


def write_layout(layout: Layout, directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `directory`/source and `directory`/verifier (once: a finished folder is reused)."""
    source, verifier = directory / "source", directory / "verifier"
    done = directory / "complete.json"
    if done.is_file() and json.loads(done.read_text()) == _stamp(layout, seed):
        return source, verifier
    for folder in (source, verifier):
        folder.mkdir(parents=True, exist_ok=True)
    (source / "config.json").write_text(json.dumps(draft_config(layout), indent=2))
    tensors = draft_tensors(layout, seed)
    if layout.weights_file.endswith(".bin"):
        torch.save(tensors, source / layout.weights_file)
    else:
        with open(source / layout.weights_file, "wb") as handle:
            write_weights(handle, tensors, {"format": "pt"})
    del tensors
    _write_verifier(layout, verifier, seed)
    done.write_text(json.dumps(_stamp(layout, seed)))
    return source, verifier


def _write_verifier(layout: Layout, directory: Path, seed: int) -> None:
    """config.json, stand-in tokenizer files, and embed_tokens / lm_head / final norm at full size."""
    (directory / "config.json").write_text(json.dumps(verifier_config(layout), indent=2))
    (directory / "tokenizer.json").write_text('{"model": "stand-in"}')
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    w = _Random(seed + 1, torch.bfloat16)
    table = w.matrix(layout.vocab, layout.hidden)  # one table written as both: the values do not matter here
    tensors = {"model.embed_tokens.weight": table, "lm_head.weight": table, "model.norm.weight": w.norm(layout.hidden)}
    with open(directory / "model.safetensors", "wb") as handle:
        write_weights(handle, tensors, {"format": "pt"})


def _stamp(layout: Layout, seed: int) -> dict:
    return {"layout": repr(layout), "seed": seed}


def source_bytes(source: Path) -> int:
    """Bytes of the source's weights files (what "source size" means in the bench)."""
    return sum(p.stat().st_size for p in source.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
