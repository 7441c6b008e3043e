"""Capture through vLLM (`spec-gen-hidden --backend vllm`): for production runs on GPUs. Optional.

Needs `pip install vllm` (>= 0.17, where vLLM PR #33736 added both pieces used here); nothing
else in spec-tools imports vLLM, and no test needs it. What it uses of vLLM, exactly:

- the speculative method `extract_hidden_states`, with
  `draft_model_config.hf_config.eagle_aux_hidden_state_layer_ids` = our layer ids: a weightless
  "draft" that stores the verifier's residual stream at those ids into a cache-only attention
  layer. vLLM's ids follow SPEC.md §4 exactly (id k = after k decoder layers, id n = the last
  layer's output before the final norm), so the data set is the same as the hf backend's;
- the KV connector `ExampleHiddenStatesConnector` (role `kv_producer`,
  `shared_storage_path` = a private temp directory), which writes each finished request's
  `hidden_states` [T, L, H] and `token_ids` [T] to one safetensors file and returns its path as
  `kv_transfer_params["hidden_states_path"]`;
- `LLM.generate` on token-id prompts with `max_tokens=1` (a prefill per sample), with chunked
  prefill off (the connector requires whole prompts).

Every file is checked (its token ids equal the prompt, shape [T, L, H]) before use, then deleted.
Regeneration (`--regenerate`) is not offered on this backend.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch

from libspec.errors import SpecError


def _load_hidden_states(path: str) -> dict[str, torch.Tensor]:
    """Read a connector file, waiting on its lock file where this vLLM version writes one."""
    try:
        from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import load_hidden_states
    except ImportError:  # older vLLM: the file is complete once the request is reported finished
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return load_hidden_states(path)


def _transfer_config(**fields):
    """vLLM's KVTransferConfig (as its own example builds it), or the plain dict where it cannot be imported."""
    try:
        from vllm.config.kv_transfer import KVTransferConfig
    except ImportError:
        try:
            from vllm.config import KVTransferConfig
        except ImportError:
            return fields
    return KVTransferConfig(**fields)


class VllmCapture:
    """The hidden states of token sequences, computed by a vLLM engine on the verifier."""

    def __init__(self, verifier, layer_ids: list[int], dtype: str = "auto", **engine_options):
        try:
            import vllm
        except ImportError:
            raise SpecError("--backend vllm needs vLLM (pip install 'vllm>=0.17' on a GPU machine); the default --backend hf needs nothing more") from None
        self.layer_ids = list(layer_ids)
        self.hidden_size = verifier.fingerprint.hidden_size
        self.storage = tempfile.mkdtemp(prefix="spec-gen-hidden-vllm-")
        self.llm = vllm.LLM(
            model=str(verifier.directory),
            dtype=dtype,
            enable_chunked_prefill=False,
            speculative_config={
                "method": "extract_hidden_states",
                "num_speculative_tokens": 1,
                "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": self.layer_ids}},
            },
            kv_transfer_config=_transfer_config(
                kv_connector="ExampleHiddenStatesConnector",
                kv_role="kv_producer",
                kv_connector_extra_config={"shared_storage_path": self.storage},
            ),
            **engine_options,
        )
        self.sampling = vllm.SamplingParams(max_tokens=1)

    def capture(self, sequences: list[list[int]], pad_id: int = 0, out_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Hidden states [len(seq), len(layer_ids), hidden] for each sequence (vLLM batches them itself)."""
        prompts = [{"prompt_token_ids": list(tokens)} for tokens in sequences]
        outputs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        results = []
        for tokens, output in zip(sequences, outputs):
            path = (getattr(output, "kv_transfer_params", None) or {}).get("hidden_states_path")
            if not path:
                raise SpecError("vLLM returned no hidden_states_path: is this vLLM >= 0.17 with ExampleHiddenStatesConnector?")
            try:
                tensors = _load_hidden_states(path)
            finally:
                for leftover in (path, path + ".lock"):
                    if os.path.exists(leftover):
                        os.remove(leftover)
            results.append(self._checked(tensors, tokens, out_dtype))
        return results

    def _checked(self, tensors: dict[str, torch.Tensor], tokens: list[int], out_dtype: torch.dtype | None) -> torch.Tensor:
        hidden, token_ids = tensors.get("hidden_states"), tensors.get("token_ids")
        if hidden is None or token_ids is None:
            raise SpecError(f"vLLM hidden-states file lacks hidden_states/token_ids (has {sorted(tensors)})")
        if token_ids.tolist() != list(tokens):
            raise SpecError(f"vLLM captured {len(token_ids)} tokens that differ from the {len(tokens)}-token prompt")
        expected = (len(tokens), len(self.layer_ids), self.hidden_size)
        if tuple(hidden.shape) != expected:
            raise SpecError(f"vLLM hidden states have shape {list(hidden.shape)}, expected {list(expected)}")
        return hidden.to(out_dtype) if out_dtype is not None else hidden

    def close(self) -> None:
        shutil.rmtree(self.storage, ignore_errors=True)
