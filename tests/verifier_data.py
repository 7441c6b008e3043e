"""Test helpers: a tiny real verifier (random weights, saved as a HF folder) and data sets captured from it.

Hidden states are computed here the way SPEC.md §4 defines layer ids: id k < n is HF's
`output_hidden_states[k]`, id n is the last layer's output before the final norm.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from conftest import TINY_LLAMA, write_fake_verifier
from libspec.format.dataset import DatasetWriter
from libspec.verifier import fingerprint_verifier
from libspec.format.sample import make_header


def make_verifier(directory: Path, config: dict | None = None, seed: int = 0, head_scale: float = 1.0) -> Path:
    """Save a randomly initialised causal LM; `head_scale` sharpens the lm_head so its argmax is meaningful."""
    config = dict(config or TINY_LLAMA)
    torch.manual_seed(seed)
    hf_config = (Qwen3Config if config["model_type"] == "qwen3" else LlamaConfig)(**{k: v for k, v in config.items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(hf_config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
        model.get_output_embeddings().weight.mul_(head_scale)
    write_fake_verifier(directory, config)
    model.save_pretrained(directory)
    # save_pretrained rewrites config.json; the fingerprint hashes whatever is there now
    return directory


def load_verifier(directory: Path):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def capture(model, input_ids: list[int], layer_ids: list[int]) -> torch.Tensor:
    """float [T, len(layer_ids), H]: the residual stream after k layers for each requested id k."""
    captured = {}
    norm = model.model.norm
    handle = norm.register_forward_pre_hook(lambda module, args: captured.__setitem__("last", args[0]))
    try:
        out = model(torch.tensor([input_ids]), output_hidden_states=True)
    finally:
        handle.remove()
    depth = model.config.num_hidden_layers
    layers = [captured["last"][0] if i == depth else out.hidden_states[i][0] for i in layer_ids]
    return torch.stack(layers, dim=1)


def make_dataset(
    verifier_dir: Path,
    out: Path,
    records: list[dict],
    layer_ids: list[int] | None = None,
    storage_dtype: str = "float32",
    shard_bytes: int = 1 << 20,
) -> Path:
    """Capture `records` from the verifier at `layer_ids` (default: EAGLE-3's aux + n) into a data set."""
    model = load_verifier(verifier_dir)
    depth = model.config.num_hidden_layers
    if layer_ids is None:
        from libspec.algorithms.eagle3.config import default_aux_layer_ids

        layer_ids = sorted(set(default_aux_layer_ids(depth)) | {depth})
    header = make_header(fingerprint_verifier(str(verifier_dir)), layer_ids, storage_dtype, "tests")
    writer = DatasetWriter(out, header, shard_bytes=shard_bytes)
    for record in records:
        writer.add(record, capture(model, record["input_ids"], layer_ids))
    writer.close()
    return out


def pattern_records(count: int, vocab: int, seed: int = 0, min_len: int = 12, max_len: int = 40) -> list[dict]:
    """Records with learnable structure: short repeated motifs, prompt tokens unsupervised."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for index in range(count):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        motif = torch.randint(0, vocab, (int(torch.randint(2, 5, (1,), generator=generator)),), generator=generator)
        ids = motif.repeat(length // len(motif) + 1)[:length].tolist()
        prompt = int(torch.randint(1, 4, (1,), generator=generator))
        mask = [0] * prompt + [1] * (length - prompt)
        records.append({"id": f"r{index}", "input_ids": ids, "loss_mask": mask})
    return records


@torch.no_grad()
def greedy_records(model, count: int, prompt_len: int = 4, new_tokens: int = 28, seed: int = 0) -> list[dict]:
    """Records whose replies are the verifier's own greedy continuations of random prompts (regenerated data)."""
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (count, prompt_len), generator=generator)
    ids = prompts
    if new_tokens:  # one batched, KV-cached greedy generation; eos is ignored so every reply is full length
        ids = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0)  # fmt: skip
    return [
        {"id": f"g{seed}-{index}", "input_ids": row.tolist(), "loss_mask": [0] * prompt_len + [1] * (len(row) - prompt_len)}
        for index, row in enumerate(ids)
    ]


def greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Plain greedy decoding, one full forward per token: the reference speculative decoding must equal."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]
