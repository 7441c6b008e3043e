"""Random-weight sources in the published drafts' own layouts, built from their real configs.

The configs live in tests/data/published_configs (see its SOURCES.md): one folder per published
layout plus the verifiers' configs. `build_source` writes a draft folder exactly as its publisher
stores it (tensor names, file kind, dtype) with random weights, at full size or scaled down;
`build_verifier` writes the matching verifier stand-in. Tests convert the tiny ones end to end;
`python -m tools.published_sources` writes the full-size ones. A development tool, not part of
libspec: it reads its configs from the source checkout.

Scaling down keeps a config's structure: draft depth, verifier depth (so aux layer ids stay the
published ones), block size, sliding-window and rope settings, norms, biases, dtype. Only widths,
head counts, vocabulary and expert counts shrink.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from libspec.errors import SpecError
from libspec.format.atomic import atomic_directory

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "published_configs"
SCALES = ("tiny", "full")


@dataclass(frozen=True)
class TinySizes:
    """The widths a scaled-down config gets; everything structural is kept."""

    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 128
    vocab: int = 512
    draft_vocab: int = 128
    experts: int = 4
    experts_per_token: int = 2
    expert_intermediate: int = 32


TINY = TinySizes()


def corpus() -> dict[str, dict]:
    """corpus.json: layout name -> published draft, source format, verifier and where the config came from."""
    return json.loads((CORPUS / "corpus.json").read_text())


def _entry(layout: str) -> dict:
    table = corpus()
    if layout not in table:
        raise SpecError(f"{CORPUS / 'corpus.json'}: no layout {layout!r}; known: {', '.join(table)}")
    return table[layout]


def draft_config(layout: str, scale: str = "full") -> dict:
    """The published draft config, as checked in (full) or scaled down (tiny)."""
    _entry(layout)
    config = json.loads((CORPUS / layout / "config.json").read_text())
    return config if scale == "full" else scale_down(config)


def verifier_config(layout: str, scale: str = "full") -> dict:
    """The config of the verifier the layout's draft was published for."""
    config = json.loads((CORPUS / "verifiers" / _entry(layout)["verifier"] / "config.json").read_text())
    return config if scale == "full" else scale_down(config)


def scale_down(config: dict, sizes: TinySizes = TINY) -> dict:
    """The same config with small widths; layer counts, layer ids, windows and rope settings untouched."""
    config = copy.deepcopy(config)
    vocab = config.get("vocab_size")
    widths = {
        "hidden_size": sizes.hidden, "target_hidden_size": sizes.hidden, "intermediate_size": sizes.intermediate,
        "moe_intermediate_size": sizes.expert_intermediate, "num_attention_heads": sizes.heads, "head_dim": sizes.head_dim,
        "vocab_size": sizes.vocab, "num_experts": sizes.experts, "num_experts_per_tok": sizes.experts_per_token,
    }  # fmt: skip
    for key, small in widths.items():
        if config.get(key) is not None:
            config[key] = small
    if config.get("num_key_value_heads") is not None:
        multi_head = config["num_key_value_heads"] == config["num_attention_heads"]  # keep MHA as MHA
        config["num_key_value_heads"] = sizes.heads if multi_head else sizes.kv_heads
    if config.get("draft_vocab_size") is not None:
        config["draft_vocab_size"] = sizes.vocab if config["draft_vocab_size"] == vocab else sizes.draft_vocab
    if isinstance(config.get("dflash_config"), dict) and "mask_token_id" in config["dflash_config"]:
        config["dflash_config"]["mask_token_id"] = sizes.vocab - 1
    if isinstance(config.get("transformer_layer_config"), dict):
        config["transformer_layer_config"] = scale_down(config["transformer_layer_config"], sizes)
    return config


# ---- tensors in each publisher's names -------------------------------------------------------


class RandomWeights:
    """Random tensors of the publisher's dtype; norm weights near 1 so that every norm matters."""

    def __init__(self, seed: int, dtype: torch.dtype):
        self.generator = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def matrix(self, rows: int, columns: int) -> torch.Tensor:
        return (torch.randn(rows, columns, generator=self.generator) / math.sqrt(columns)).to(self.dtype)

    def vector(self, size: int, around: float = 1.0, spread: float = 0.2) -> torch.Tensor:
        return (around + spread * torch.randn(size, generator=self.generator)).to(self.dtype)

    def vocab_maps(self, vocab: int, draft_vocab: int) -> dict[str, torch.Tensor]:
        """SafeAILab's d2t (offsets to verifier ids) and t2d (which verifier ids the draft covers)."""
        chosen = torch.randperm(vocab, generator=self.generator)[:draft_vocab].sort().values
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[chosen] = True
        return {"d2t": chosen - torch.arange(draft_vocab), "t2d": t2d}


@dataclass(frozen=True)
class LayerShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def of(cls, config: dict) -> "LayerShape":
        heads = config["num_attention_heads"]
        return cls(
            config["hidden_size"], heads, config.get("num_key_value_heads") or heads,
            config.get("head_dim") or config["hidden_size"] // heads, config["intermediate_size"],
        )  # fmt: skip


def decoder_layer(w: RandomWeights, prefix: str, shape: LayerShape, width: int, *, input_norm=True, hidden_norm=False, qk_norm=False, qkv_bias=False) -> dict:
    """One Llama/Qwen3 decoder layer's tensors; `width` is what q/k/v read (2 x hidden for EAGLE-3's first layer)."""
    q_rows, kv_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    tensors = {
        f"{prefix}self_attn.q_proj.weight": w.matrix(q_rows, width),
        f"{prefix}self_attn.k_proj.weight": w.matrix(kv_rows, width),
        f"{prefix}self_attn.v_proj.weight": w.matrix(kv_rows, width),
        f"{prefix}self_attn.o_proj.weight": w.matrix(shape.hidden, q_rows),
        f"{prefix}mlp.gate_proj.weight": w.matrix(shape.intermediate, shape.hidden),
        f"{prefix}mlp.up_proj.weight": w.matrix(shape.intermediate, shape.hidden),
        f"{prefix}mlp.down_proj.weight": w.matrix(shape.hidden, shape.intermediate),
        f"{prefix}post_attention_layernorm.weight": w.vector(shape.hidden),
    }
    if input_norm:
        tensors[f"{prefix}input_layernorm.weight"] = w.vector(shape.hidden)
    if hidden_norm:
        tensors[f"{prefix}hidden_norm.weight"] = w.vector(shape.hidden)
    if qk_norm:
        tensors[f"{prefix}self_attn.q_norm.weight"] = w.vector(shape.head_dim)
        tensors[f"{prefix}self_attn.k_norm.weight"] = w.vector(shape.head_dim)
    if qkv_bias:
        for name, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            tensors[f"{prefix}self_attn.{name}_proj.bias"] = w.vector(rows, around=0.0, spread=0.5)
    return tensors


def _dtype(config: dict) -> torch.dtype:
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def safeailab_eagle3_tensors(config: dict, verifier: dict, w: RandomWeights) -> dict:
    """SafeAILab EAGLE-3 (pytorch_model.bin): one `midlayer`, fc over 3 verifier layers, its own vocab maps."""
    shape, vocab = LayerShape.of(config), config["vocab_size"]
    tensors = decoder_layer(w, "midlayer.", shape, 2 * shape.hidden, hidden_norm=True)
    tensors.update({"fc.weight": w.matrix(shape.hidden, 3 * verifier["hidden_size"]), "norm.weight": w.vector(shape.hidden)})
    tensors.update({"lm_head.weight": w.matrix(config["draft_vocab_size"], shape.hidden), "embed_tokens.weight": w.matrix(vocab, shape.hidden)})
    return {**tensors, **w.vocab_maps(vocab, config["draft_vocab_size"])}


def specforge_eagle3_tensors(config: dict, verifier: dict, w: RandomWeights) -> dict:
    """SpecForge EAGLE-3/3.1 (model.safetensors): SafeAILab's names, per-aux-layer fc_norm with fc_norm true, no embedding."""
    shape = LayerShape.of(config)
    aux = len((config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") or [0, 0, 0])
    tensors = decoder_layer(w, "midlayer.", shape, 2 * shape.hidden, hidden_norm=True)
    tensors.update({"fc.weight": w.matrix(shape.hidden, aux * verifier["hidden_size"]), "norm.weight": w.vector(shape.hidden)})
    if config.get("fc_norm"):
        tensors.update({f"fc_norm.{i}.weight": w.vector(verifier["hidden_size"]) for i in range(aux)})
    tensors["lm_head.weight"] = w.matrix(config["draft_vocab_size"], shape.hidden)
    return {**tensors, **w.vocab_maps(config["vocab_size"], config["draft_vocab_size"])}


def zlab_dflash_tensors(config: dict, verifier: dict, w: RandomWeights) -> dict:
    """z-lab DFlash (model.safetensors): fc over the target layers, hidden_norm, Qwen3 layers; embedding and head are the verifier's."""
    shape = LayerShape.of(config)
    targets = len(config["dflash_config"]["target_layer_ids"])
    tensors = {"fc.weight": w.matrix(shape.hidden, targets * verifier["hidden_size"]), "hidden_norm.weight": w.vector(shape.hidden), "norm.weight": w.vector(shape.hidden)}
    for index in range(config["num_hidden_layers"]):
        tensors.update(decoder_layer(w, f"layers.{index}.", shape, shape.hidden, qk_norm=True, qkv_bias=bool(config.get("attention_bias"))))
    return tensors


def safeailab_eagle1_tensors(config: dict, verifier: dict, w: RandomWeights) -> dict:
    """SafeAILab EAGLE-1 (pytorch_model.bin): fc over [embedding, feature] with a bias, layer 0 without input_layernorm."""
    shape = LayerShape.of(config)
    tensors = {"fc.weight": w.matrix(shape.hidden, 2 * shape.hidden), "embed_tokens.weight": w.matrix(config["vocab_size"], shape.hidden)}
    if config.get("bias", True):
        tensors["fc.bias"] = w.vector(shape.hidden, around=0.0, spread=0.5)
    for index in range(config["num_hidden_layers"]):
        tensors.update(decoder_layer(w, f"layers.{index}.", shape, shape.hidden, input_norm=index > 0, qkv_bias=bool(config.get("qkv_bias"))))
    return tensors


def speculators_eagle3_tensors(config: dict, verifier: dict, w: RandomWeights) -> dict:
    """speculators' Eagle3 layout (0.1-0.9): `layers.N`, optional input_norm/fc_norm, its own head and vocab maps."""
    from libspec.algorithms.eagle3.config import num_aux_layers  # a spec-tools checkpoint's names are speculators'

    tl = config["transformer_layer_config"]
    shape, aux, target = LayerShape.of(tl), num_aux_layers(config), config.get("target_hidden_size") or verifier["hidden_size"]
    tensors = {"fc.weight": w.matrix(shape.hidden, aux * target), "norm.weight": w.vector(shape.hidden)}
    if config.get("norm_before_fc"):
        tensors["input_norm.weight"] = w.vector(aux * target)
    if config.get("fc_norm"):
        tensors.update({f"fc_norm.{i}.weight": w.vector(target) for i in range(aux)})
    for index in range(tl["num_hidden_layers"]):
        first = index == 0
        tensors.update(decoder_layer(w, f"layers.{index}.", shape, 2 * shape.hidden if first else shape.hidden, hidden_norm=first))
    tensors.update({"lm_head.weight": w.matrix(config["draft_vocab_size"], shape.hidden), "embed_tokens.weight": w.matrix(tl["vocab_size"], shape.hidden)})
    if config["draft_vocab_size"] != tl["vocab_size"]:
        tensors.update(w.vocab_maps(tl["vocab_size"], config["draft_vocab_size"]))
    return tensors


# source format -> (tensor builder, the file the publisher stores them in)
LAYOUTS = {
    "safeailab-eagle3": (safeailab_eagle3_tensors, "pytorch_model.bin"),
    "specforge-eagle3": (specforge_eagle3_tensors, "model.safetensors"),
    "zlab-dflash": (zlab_dflash_tensors, "model.safetensors"),
    "safeailab-eagle": (safeailab_eagle1_tensors, "pytorch_model.bin"),
    "speculators-legacy": (speculators_eagle3_tensors, "model.safetensors"),
    "speculators": (speculators_eagle3_tensors, "model.safetensors"),
}


def _refuse_existing(directory: Path) -> Path:
    directory = Path(directory)
    if directory.exists():
        raise SpecError(f"{directory}: already exists; refusing to write over it (name a new folder)")
    return directory


def build_source(layout: str, directory: Path, scale: str = "tiny", seed: int = 0) -> Path:
    """Write `layout`'s draft (its config.json and random weights in the publisher's layout) into a new `directory`."""
    if scale not in SCALES:
        raise SpecError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    config, verifier = draft_config(layout, scale), verifier_config(layout, scale)
    builder, weights_file = LAYOUTS[_entry(layout)["source_format"]]
    tensors = builder(config, verifier, RandomWeights(seed, _dtype(config)))
    with atomic_directory(_refuse_existing(directory)) as staging:
        if weights_file.endswith(".bin"):
            torch.save(tensors, staging / weights_file)  # the publisher's own pickle format (tensors only)
        else:
            import safetensors.torch

            safetensors.torch.save_file({n: t.contiguous() for n, t in tensors.items()}, str(staging / weights_file))
        # Full size: the checked-in bytes themselves, so the converter reads exactly what was published.
        text = (CORPUS / layout / "config.json").read_text() if scale == "full" else json.dumps(config, indent=2)
        (staging / "config.json").write_text(text)
    return Path(directory)


def build_verifier(layout: str, directory: Path, scale: str = "tiny", seed: int = 0) -> Path:
    """Write the verifier stand-in into a new `directory`: its config.json and a word-level tokenizer;
    at tiny scale also random weights (upstream's loader and the numerical check read the verifier's
    embedding and lm_head). spec-convert needs only the config, so the full-size stand-in has no weights."""
    if scale not in SCALES:
        raise SpecError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    config = verifier_config(layout, scale)
    with atomic_directory(_refuse_existing(directory)) as staging:
        if scale == "tiny":
            _save_random_model(config, staging, seed)
        else:
            (staging / "config.json").write_text((CORPUS / "verifiers" / _entry(layout)["verifier"] / "config.json").read_text())
        _save_word_tokenizer(config["vocab_size"], staging)
    return Path(directory)


def _save_random_model(config: dict, directory: Path, seed: int) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from libspec.verifier import quiet_transformers

    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version")}
    with quiet_transformers():
        hf_config = AutoConfig.for_model(config["model_type"], **fields)
        hf_config.architectures = config.get("architectures")
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(hf_config).save_pretrained(directory)


def _save_word_tokenizer(vocab: int, directory: Path) -> None:
    """A tokenizer over `vocab` word tokens t0..t{vocab-1}: enough for loaders that open one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=f"t{vocab - 1}", pad_token="t0").save_pretrained(directory)
