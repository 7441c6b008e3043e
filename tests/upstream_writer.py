"""Write small checkpoints with upstream speculators' own code (run with the gate venv's python).

    .venv-gates/bin/python tests/upstream_writer.py OUT_DIR

Writes OUT_DIR/verifier (a tiny random Llama) and one EAGLE-3 checkpoint per entry of KINDS, built
the way upstream's trainer builds them (`create_transformer_layer_config` +
`Eagle3DraftModel.from_training_args` + `save_pretrained`); then, against OUT_DIR/verifier-8 (8
layers), one DFlash checkpoint per entry of DFLASH_KINDS the same way, and `up-converted-eagle3`:
a SafeAILab EAGLE-3 folder put through upstream's own `Eagle3Converter` (which writes
`eagle_aux_hidden_state_layer_ids: null`). Prints the checkpoint names, one per line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from speculators.models.eagle3 import Eagle3DraftModel
from speculators.train.cli import create_transformer_layer_config
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 64
# name: (draft arch, layers, draft vocab, extra from_training_args options)
KINDS = {
    "up-llama-1-full": ("llama", 1, VOCAB, {}),
    "up-llama-2-reduced": ("llama", 2, 32, {}),
    "up-qwen3-1-reduced": ("qwen3", 1, 48, {}),
    "up-qwen3-2-full": ("qwen3", 2, VOCAB, {}),
    # upstream's train CLI defaults for eagle3: norm_before_fc and norm_output on
    "up-llama-1-cli-defaults": ("llama", 1, 32, {"norm_before_fc": True, "norm_output": True}),
    "up-llama-1-fc-norm": ("llama", 1, VOCAB, {"fc_norm": True}),
}


# name: (layers that use full attention instead of upstream's default sliding window)
DFLASH_KINDS = {
    "up-dflash-sliding": [],  # upstream's trainer default: every layer sliding, causal in both vLLM and upstream
    "up-dflash-full": [0, 1],  # full attention with sliding_window_non_causal false: vLLM and upstream differ
}


def write_verifier(directory: Path, num_layers: int = 4) -> None:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)


def write_dflash(out: Path, verifier: Path) -> None:
    from speculators.models.dflash import DFlashDraftModel

    for name, full_attention in DFLASH_KINDS.items():
        layer_config = create_transformer_layer_config(str(verifier), 2, "qwen3", None, 2048, full_attention)
        model = DFlashDraftModel.from_training_args(
            layer_config, verifier_name_or_path=str(verifier), draft_vocab_size=VOCAB, block_size=4,
            target_layer_ids=[2, 4, 6], mask_token_id=VOCAB - 1, draft_attn_impl="sdpa",
        )  # fmt: skip
        model.save_pretrained(out / name)
        print(name)


def write_converted_eagle3(out: Path, verifier: Path) -> None:
    """A SafeAILab EAGLE-3 folder (midlayer.*, no layer ids) through upstream's own converter."""
    import json
    import math

    from safetensors.torch import save_file
    from speculators.convert.eagle.eagle3_converter import Eagle3Converter

    def matrix(*shape):
        return torch.randn(*shape) / math.sqrt(shape[-1])

    hidden, inter, draft_vocab = 16, 32, 32
    tensors = {"fc.weight": matrix(hidden, 3 * hidden), "norm.weight": 1 + 0.1 * torch.randn(hidden), "lm_head.weight": matrix(draft_vocab, hidden)}
    for part, shape in {
        "self_attn.q_proj.weight": (16, 2 * hidden), "self_attn.k_proj.weight": (8, 2 * hidden), "self_attn.v_proj.weight": (8, 2 * hidden),
        "self_attn.o_proj.weight": (hidden, 16), "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
    }.items():  # fmt: skip
        tensors[f"midlayer.{part}"] = matrix(*shape)
    for norm in ("input_layernorm", "post_attention_layernorm", "hidden_norm"):
        tensors[f"midlayer.{norm}.weight"] = 1 + 0.1 * torch.randn(hidden)
    tensors.update(vocab_maps(draft_vocab))
    source = out / "safeailab-eagle3"
    source.mkdir()
    save_file(tensors, str(source / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "num_hidden_layers": 1, "vocab_size": VOCAB,
        "draft_vocab_size": draft_vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "hidden_act": "silu", "torch_dtype": "float32", "tie_word_embeddings": False,
    }  # fmt: skip
    (source / "config.json").write_text(json.dumps(config))
    Eagle3Converter().convert(source, out / "up-converted-eagle3", base_model=str(verifier), validate=True)
    print("up-converted-eagle3")


def vocab_maps(draft_vocab: int) -> dict:
    if draft_vocab == VOCAB:
        return {}
    chosen = torch.randperm(VOCAB)[:draft_vocab].sort().values
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[chosen] = True
    return {"t2d": t2d, "d2t": chosen - torch.arange(draft_vocab)}


def main(out: Path) -> None:
    torch.manual_seed(0)
    verifier = out / "verifier"
    write_verifier(verifier)
    for name, (arch, layers, draft_vocab, options) in KINDS.items():
        layer_config = create_transformer_layer_config(str(verifier), layers, arch, None, 2048, [])
        model = Eagle3DraftModel.from_training_args(
            layer_config, verifier_name_or_path=str(verifier), draft_vocab_size=draft_vocab, norm_before_residual=True,
            ttt_steps=3, target_layer_ids=[1, 2, 3], draft_attn_impl="sdpa", **vocab_maps(draft_vocab), **options,
        )  # fmt: skip
        model.save_pretrained(out / name)
        print(name)
    write_verifier(out / "verifier-8", num_layers=8)
    write_dflash(out, out / "verifier-8")
    write_converted_eagle3(out, out / "verifier-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
