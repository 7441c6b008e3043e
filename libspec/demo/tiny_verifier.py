"""The built-in small verifier: a ~10M-parameter Llama trained on the Python standard library.

Demos, tests and benchmarks need a real causal LM with a chat template that loads offline and runs
on a CPU. `build_verifier` trains one deterministically (fixed seed, fixed step count) and caches the
Hugging Face folder under a hash of its recipe, so every later call is a directory lookup.

End of sequence: the tokenizer's (and config.json's) eos is `<|endoftext|>`, the separator between
training documents, so plain code completion stops where a file would end. Chat replies end with
`<|im_end|>`, so generation_config.json lists both ids and `generate` stops at either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from libspec.format.atomic import fsync_dir
from libspec import cpu
from libspec.errors import SpecError
from libspec.verifier import quiet_transformers

EOS_TOKEN, IM_START, IM_END, PAD_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END, PAD_TOKEN)  # ids 0..3
THINK_TOKENS = ("<think>", "</think>")  # the last two ids; plain (not skipped on decode), as in Qwen3
CHAT_INSTRUCTION = "Continue this Python code:\n"
SYSTEM_PROMPT = "You are a helpful Python coding assistant."

# ChatML. The {% generation %} markers let apply_chat_template(return_assistant_tokens_mask=True)
# mark the reply and its <|im_end|> as the tokens a model is trained to produce.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}{{- message['content'] + '<|im_end|>' -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class VerifierPreset:
    """Everything that decides the verifier's weights; its fields are part of the cache key."""

    name: str
    max_files: int | None  # None: the whole stdlib; otherwise the first N files by path
    validation_every: int  # every Nth file (sorted by path) is held out
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    seq_len: int
    batch_size: int
    steps: int
    warmup_steps: int
    peak_lr: float
    final_lr_fraction: float  # cosine decays to peak_lr * this
    weight_decay: float
    grad_clip: float
    chat_fraction: float  # share of training characters rendered as ChatML conversations
    validation_batches: int
    threads: int  # torch threads; results are bit-identical only for the same count
    seed: int


PRESETS: dict[str, VerifierPreset] = {
    # 8 layers of width 256: a 1-token KV-cached forward costs a few ms, 8 tokens well under twice
    # that, and a 1-layer draft is ~1/8 of the verifier's layers. 512-token rows fit a chat prompt
    # plus its reply. Batches of 4 rows learn more per token than 8 in a budget this short (measured).
    # ~1.2M tokens: about 7-8 min on 2 free cores, ~600 CPU-seconds.
    "full": VerifierPreset(
        name="full", max_files=None, validation_every=50, vocab_size=8192,
        hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2, intermediate_size=768,
        seq_len=512, batch_size=4, steps=600, warmup_steps=30, peak_lr=3e-3, final_lr_fraction=0.1,
        weight_decay=0.1, grad_clip=1.0, chat_fraction=0.22, validation_batches=16, threads=2, seed=0,
    ),
    # For tests: builds in seconds on a prefix of the corpus.
    "tiny": VerifierPreset(
        name="tiny", max_files=60, validation_every=20, vocab_size=512,
        hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
        seq_len=128, batch_size=4, steps=30, warmup_steps=5, peak_lr=3e-3, final_lr_fraction=0.1,
        weight_decay=0.1, grad_clip=1.0, chat_fraction=0.22, validation_batches=2, threads=1, seed=0,
    ),
}


@dataclass(frozen=True)
class CorpusSplit:
    """The stdlib files a preset trains on and the held-out ones (for validation and prompt sets)."""

    root: Path
    train: tuple[Path, ...]
    validation: tuple[Path, ...]


@dataclass(frozen=True)
class BuildProgress:
    """One progress report: a stage name, how far it is, and training figures when training."""

    stage: str  # "tokenizer", "data", "train", "validate", "save"
    done: int = 0
    total: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None


ProgressCallback = Callable[[BuildProgress], None]


def stdlib_sources() -> tuple[Path, list[Path]]:
    """The stdlib root and its `.py` files that decode as UTF-8, sorted by path (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    candidates = []
    for directory, subdirectories, names in os.walk(root):
        # Pruned rather than filtered: walking a big site-packages would dominate a cache hit.
        subdirectories[:] = [d for d in subdirectories if d not in ("site-packages", "dist-packages", "__pycache__")]
        candidates += [Path(directory, name) for name in names if name.endswith(".py")]
    return root, [path for path in sorted(candidates) if _read_utf8(path) is not None]


def corpus_split(preset: VerifierPreset | str = "full") -> CorpusSplit:
    """Deterministic train/validation split: every `validation_every`-th file is held out."""
    preset = _preset(preset)
    root, files = stdlib_sources()
    files = files[: preset.max_files]
    if len(files) < 2 * preset.validation_every:
        raise SpecError(f"{root}: found {len(files)} UTF-8 .py files, need {2 * preset.validation_every}")
    held_out = set(range(preset.validation_every - 1, len(files), preset.validation_every))
    return CorpusSplit(
        root=root,
        train=tuple(f for i, f in enumerate(files) if i not in held_out),
        validation=tuple(f for i, f in enumerate(files) if i in held_out),
    )


def recipe_hash(preset: VerifierPreset | str, split: CorpusSplit | None = None) -> str:
    """Hash of the preset, the precision this CPU trains in, this module's source and the corpus contents: the cache key.

    Contents rather than mtimes: identical Python installs have different mtimes but build identical
    weights, and hashing ~30 MB costs well under a second next to a build of minutes.
    """
    preset = _preset(preset)
    split = split or corpus_split(preset)
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(preset), sort_keys=True).encode())
    digest.update(cpu.training_precision(preset.threads).encode())  # bf16 and fp32 builds differ
    digest.update(Path(__file__).read_bytes())
    for kind, files in (("train", split.train), ("validation", split.validation)):
        for path in files:
            digest.update(f"{kind}\0{path.relative_to(split.root)}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """$SPEC_TOOLS_CACHE, else $XDG_CACHE_HOME/spec-tools, else ~/.cache/spec-tools."""
    if os.environ.get("SPEC_TOOLS_CACHE"):
        return Path(os.environ["SPEC_TOOLS_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "spec-tools"


def verifier_folder(
    preset: VerifierPreset | str = "full", cache_dir: str | os.PathLike | None = None, key: str | None = None
) -> Path:
    """Where `build_verifier` puts (or finds) this preset's verifier; it may not exist yet."""
    preset = _preset(preset)
    key = key or recipe_hash(preset)
    return Path(cache_dir or default_cache_dir()) / "verifiers" / f"{preset.name}-{key[:16]}"


def build_verifier(
    preset: VerifierPreset | str = "full",
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Return the verifier folder for `preset`, training it first unless the cache has it.

    The build happens in a temp folder that is renamed into place when complete, so an interrupted
    build never leaves a folder that looks finished.
    """
    preset = _preset(preset)
    split = corpus_split(preset)
    key = recipe_hash(preset, split)
    final = verifier_folder(preset, cache_dir, key)
    if final.is_dir() and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        _build_into(work, preset, split, key, on_progress or (lambda progress: None))
        _publish(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _preset(preset: VerifierPreset | str) -> VerifierPreset:
    if isinstance(preset, VerifierPreset):
        return preset
    if preset not in PRESETS:
        raise SpecError(f"unknown verifier preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _build_into(work: Path, preset: VerifierPreset, split: CorpusSplit, key: str, report: ProgressCallback) -> None:
    started = time.perf_counter()
    with _torch_threads(preset.threads):
        tokenizer, train_rows, val_rows, chat_share = _prepare_data(preset, split, report)
        torch.manual_seed(preset.seed)
        model = LlamaForCausalLM(_model_config(preset, tokenizer))
        precision = cpu.training_precision(preset.threads)
        train_loss = _train(model, train_rows, preset, precision, report)
        report(BuildProgress("validate"))
        val_loss = _mean_loss(model, val_rows, preset.batch_size, precision)
    report(BuildProgress("save"))
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
    )
    with quiet_transformers():
        model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    recipe = {
        "preset": dataclasses.asdict(preset),
        "recipe_hash": key,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_trained": train_rows.numel() - len(train_rows),
        "chat_char_fraction": round(chat_share, 4),
        "final_train_loss": round(train_loss, 4),  # mean of the last 10% of steps
        "validation_loss": round(val_loss, 4),  # raw code from the first held-out files
        "validation_tokens": val_rows.numel() - len(val_rows),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "threads": preset.threads,
        "precision": precision,
        "bf16_speedup_measured": round(cpu.bf16_speedup(preset.threads), 2),
        "corpus": {"root": str(split.root), "train_files": len(split.train), "validation_files": len(split.validation)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }
    (work / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")


def _prepare_data(preset: VerifierPreset, split: CorpusSplit, report: ProgressCallback):
    """Train the tokenizer on every training file, then encode only the tokens training will use."""
    report(BuildProgress("tokenizer"))
    train_texts = [_read_utf8(path) for path in split.train]
    tokenizer = train_tokenizer(train_texts, preset)
    report(BuildProgress("data"))
    rows_needed = preset.steps * preset.batch_size
    documents = _Documents(train_texts, tokenizer, preset)
    train_rows = _token_rows(tokenizer, documents, rows_needed, preset.seq_len)
    # Consecutive rows come from the same file; shuffled, each batch samples the whole stream.
    train_rows = train_rows[torch.randperm(rows_needed, generator=torch.Generator().manual_seed(preset.seed))]
    val_texts = (_read_utf8(path) for path in split.validation)
    val_rows = _token_rows(tokenizer, val_texts, preset.validation_batches * preset.batch_size, preset.seq_len)
    return tokenizer, train_rows, val_rows, documents.chat_chars / max(documents.total_chars, 1)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_tokenizer(texts: list[str], preset: VerifierPreset) -> PreTrainedTokenizerFast:
    """Byte-level BPE over `texts`, wrapped for transformers with the ChatML template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=preset.vocab_size - len(THINK_TOKENS),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=preset.seq_len,
    )


class _Documents:
    """Training documents in a seeded order, each raw code or a run of chat conversations.

    A file becomes chat while the chat share of characters so far is below `chat_fraction`; this
    keeps the share close to the target even though file sizes vary a thousandfold.
    """

    def __init__(self, texts: list[str], tokenizer: PreTrainedTokenizerFast, preset: VerifierPreset):
        self.texts, self.tokenizer, self.preset = texts, tokenizer, preset
        self.chat_chars = self.total_chars = 0

    def __iter__(self) -> Iterator[str]:
        for epoch in itertools.count():  # only small presets ever need a second pass
            rng = random.Random(self.preset.seed * 1000 + epoch)
            order = list(range(len(self.texts)))
            rng.shuffle(order)
            for index in order:
                as_chat = self.chat_chars < self.preset.chat_fraction * self.total_chars
                document = self._as_chat(self.texts[index], rng) if as_chat else self.texts[index]
                self.total_chars += len(document)
                self.chat_chars += len(document) if as_chat else 0
                yield document

    def _as_chat(self, text: str, rng: random.Random) -> str:
        """Cut the file into blocks of 8-32 lines; each block: user gives its head, assistant the rest."""
        lines = text.splitlines(keepends=True)
        conversations, start = [], 0
        while start < len(lines):
            block = lines[start : start + rng.randint(8, 32)]
            start += len(block)
            if len(block) < 4 or not "".join(block).strip():
                continue
            cut = rng.randint(1, len(block) - 2)
            messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
            messages += [
                {"role": "user", "content": CHAT_INSTRUCTION + "".join(block[:cut])},
                {"role": "assistant", "content": "".join(block[cut:])},
            ]
            conversations.append(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return EOS_TOKEN.join(conversations)


def _token_rows(tokenizer: PreTrainedTokenizerFast, documents, rows: int, seq_len: int) -> torch.Tensor:
    """Encode documents (joined by eos) only until `rows` rows of seq_len+1 tokens are filled."""
    needed, ids, eos = rows * (seq_len + 1), [], tokenizer.eos_token_id
    documents = iter(documents)
    while len(ids) < needed:
        batch = list(itertools.islice(documents, 16))
        if not batch:
            raise SpecError(f"corpus too small: {len(ids)} tokens, need {needed}")
        for encoding in tokenizer.backend_tokenizer.encode_batch(batch):
            ids += encoding.ids + [eos]
    return torch.tensor(ids[:needed], dtype=torch.long).view(rows, seq_len + 1)


def _model_config(preset: VerifierPreset, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.seq_len,  # trained length; RoPE degrades beyond it
        tie_word_embeddings=False,
        bos_token_id=None,  # nothing is prepended: documents are separated by eos
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _lr_at(step: int, preset: VerifierPreset) -> float:
    if step < preset.warmup_steps:
        return preset.peak_lr * (step + 1) / preset.warmup_steps
    progress = (step - preset.warmup_steps) / max(1, preset.steps - preset.warmup_steps)
    floor = preset.final_lr_fraction
    return preset.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(model: LlamaForCausalLM, rows: torch.Tensor, preset: VerifierPreset, precision: str, report: ProgressCallback) -> float:
    """AdamW with warmup + cosine; returns the mean loss of the last 10% of steps."""
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on norm gains
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": preset.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=preset.peak_lr, betas=(0.9, 0.95),
    )
    model.train()
    losses, started = [], time.perf_counter()
    for step, batch in enumerate(rows.split(preset.batch_size)):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, preset)
        loss = _batch_loss(model, batch, precision)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens_per_s = (step + 1) * batch.numel() / (time.perf_counter() - started)
        report(BuildProgress("train", step + 1, preset.steps, losses[-1], tokens_per_s))
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


def _batch_loss(model: LlamaForCausalLM, batch: torch.Tensor, precision: str) -> torch.Tensor:
    # bf16 autocast only where this CPU runs bf16 fast (libspec/cpu.py); it keeps cross_entropy in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
        logits = model(input_ids=batch[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def _mean_loss(model: LlamaForCausalLM, rows: torch.Tensor, batch_size: int, precision: str) -> float:
    losses = [_batch_loss(model, batch, precision).item() for batch in rows.split(batch_size)]
    return sum(losses) / len(losses)


def _publish(work: Path, final: Path) -> None:
    """fsync the finished folder and rename it to `final` (replacing an old one on --force)."""
    for path in work.iterdir():
        path.chmod(0o644)  # save_pretrained leaves the weights private; the cache is meant to be shared
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(work)
    work.chmod(0o755)  # mkdtemp made it private
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    try:
        work.rename(final)
    except OSError:
        if not final.is_dir():  # another process finishing the same build first is fine
            raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
