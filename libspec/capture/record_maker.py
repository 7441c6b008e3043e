"""Input items to records: normalise, regenerate (with --regenerate), tokenize with loss masks, truncate.

    raw items -> Examples -> (regenerated turns) -> TokenizedSamples -> records ready for capture

Every input that yields no record is counted in `GenCounts.dropped` under a reason; with
`skip_bad` malformed inputs are counted too, otherwise the first one stops the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from libspec.capture.chat import (
    ChatRenderer,
    ChatTemplateError,
    TokenizedSample,
    UnstableTemplate,
    prompt_completion_sample,
    samples_from_turns,
    text_sample,
    truncate,
)
from libspec.capture.inputs import Example, RawItem, normalise
from libspec.capture.regenerate import Regenerated, Regenerator
from libspec.errors import SpecError
from libspec.verifier import LoadedVerifier

MAX_ERRORS_KEPT = 5  # first messages of skipped inputs kept in the summary (--skip-bad errors, no_assistant_turn)


@dataclass
class GenCounts:
    """What happened to the inputs. `dropped` counts inputs, except no_supervised_tokens, which counts records."""

    inputs_read: int = 0  # items of this shard's partition that were processed
    records_written: int = 0
    tokens_written: int = 0
    supervised_tokens: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def drop(self, reason: str, message: str | None = None, count: int = 1) -> None:
        """Count `count` inputs dropped for `reason`, keeping the first few messages for the summary."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        if message and len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(message)

    def to_dict(self) -> dict:
        """The counts as the manifest's progress and the summary store them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenCounts":
        """Counts read back from a manifest (a resumed or already complete run)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class PreparedRecord:
    """A record ready for capture, with the tokenized sample it was made from."""

    record: dict
    sample: TokenizedSample


@dataclass
class RecordMaker:
    """Turns windows of input items into records ready for capture, counting what it drops."""

    verifier: LoadedVerifier  # its tokenizer and vocab size (the weights only through `regenerator`)
    renderer: ChatRenderer
    max_len: int
    turn_policy: str
    skip_bad: bool
    regenerator: Regenerator | None  # set with --regenerate
    counts: GenCounts

    def prepare(self, window: list[RawItem]) -> list[PreparedRecord]:
        """Records (token ids + loss masks) for a window of input items, in input order; drops are counted."""
        examples = self._normalise(window)
        regenerated = self._regenerate(examples)
        prepared = []
        for example in examples:
            try:
                samples, extra = self._tokenize(example, regenerated.get(example.index))
            except UnstableTemplate as error:
                self.counts.drop("unstable_template", str(error))
                continue
            except ChatTemplateError as error:
                self._bad_input("template_error", error)
                continue
            if samples is not None:
                prepared += self._records(example, samples, extra)
        return prepared

    def _normalise(self, window: list[RawItem]) -> list[Example]:
        """Every item as an Example; malformed ones stop the run, or are counted with skip_bad."""
        examples = []
        for item in window:
            self.counts.inputs_read += 1
            try:
                examples.append(normalise(item, prompt_only=self.regenerator is not None))
            except SpecError as error:
                self._bad_input("bad_input", error)
        return examples

    def _regenerate(self, examples: list[Example]) -> dict[int, Regenerated]:
        """The verifier's own replies for the chat and prompt examples, by input index (none without a regenerator)."""
        if self.regenerator is None:
            return {}
        chat_like = [e for e in examples if e.kind in ("messages", "prompt_completion")]
        try:
            return {r.example.index: r for r in self.regenerator.regenerate(chat_like)}
        except ChatTemplateError:
            if not self.skip_bad:
                raise
        results = {}  # one input's template failed: regenerate one by one to isolate it
        for example in chat_like:
            try:
                results.update((r.example.index, r) for r in self.regenerator.regenerate([example]))
            except ChatTemplateError as error:
                self._bad_input("template_error", error)
        return results

    def _bad_input(self, reason: str, error: SpecError) -> None:
        """A malformed input stops the run unless skip_bad, which counts it and goes on."""
        if not self.skip_bad:
            raise error
        self.counts.drop(reason, str(error))

    def _tokenize(self, example: Example, regenerated: Regenerated | None) -> tuple[list[TokenizedSample] | None, dict]:
        """Token samples for one example (None when dropped), and record metadata to add."""
        tokenizer = self.verifier.tokenizer
        if regenerated is not None:
            if regenerated.dropped:
                self.counts.drop(regenerated.dropped)
                return None, {}
            extra = {"regenerated": True, "finish_reasons": regenerated.finish_reasons}
            return samples_from_turns(regenerated.turns, self.turn_policy), extra
        if example.kind == "messages":
            turns = self.renderer.assistant_turns(example.messages, example.tools, example.location)
            if not turns:
                self.counts.drop("no_assistant_turn", _no_assistant_turn(example))
                return None, {}
            return samples_from_turns(turns, self.turn_policy), {}
        if example.kind == "prompt_completion":
            return [prompt_completion_sample(tokenizer, example.prompt, example.completion)], {}
        if example.kind == "text":
            return [text_sample(tokenizer, example.text)], {}
        return [TokenizedSample(list(example.input_ids), list(example.loss_mask))], {}

    def _records(self, example: Example, samples: list[TokenizedSample], extra: dict) -> list[PreparedRecord]:
        """Truncated, checked records of one example's samples; those left with nothing supervised are counted."""
        vocab = self.verifier.fingerprint.vocab_size
        prepared = []
        for k, sample in enumerate(samples):
            sample = truncate(sample, self.max_len)
            if sample.num_supervised == 0:
                self.counts.drop("no_supervised_tokens")
                continue
            top = max(sample.input_ids)
            if top >= vocab:
                self._bad_input("bad_input", SpecError(f"{example.location}: token id {top} >= the verifier's vocab size {vocab}"))
                continue
            metadata = {"source": example.source, "line": example.line, "kind": example.kind, **extra}
            if sample.turns and example.kind == "messages":
                metadata["turns"] = list(sample.turns)
            record_id = str(example.index) if len(samples) == 1 else f"{example.index}.{k}"
            record = {"id": record_id, "input_ids": sample.input_ids, "loss_mask": sample.loss_mask, "metadata": metadata}
            self.counts.records_written += 1
            self.counts.tokens_written += len(sample.input_ids)
            self.counts.supervised_tokens += sample.num_supervised
            prepared.append(PreparedRecord(record, sample))
        return prepared


def _no_assistant_turn(example: Example) -> str:
    """Why a conversation gives no record without --regenerate, and how a prompt-only one would."""
    message = f"{example.location}: no assistant turn to learn from"
    if example.messages and example.messages[-1]["role"] == "user":
        message += "; --regenerate has the verifier answer a conversation that ends in a user turn"
    return message
