"""Write small EAGLE-3 checkpoints with upstream speculators' own classes (run with the gate venv's python).

    .venv-gates/bin/python tests/upstream_writer.py OUT_DIR

Writes OUT_DIR/verifier (a tiny random Llama) and one checkpoint per entry of KINDS, built the way
upstream's trainer builds them (`create_transformer_layer_config` + `Eagle3DraftModel.from_training_args`
+ `save_pretrained`), then prints the checkpoint names, one per line.
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


def write_verifier(directory: Path) -> None:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)


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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
