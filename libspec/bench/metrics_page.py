"""vLLM's speculative-decoding counters on a Prometheus `/metrics` page: write them, read them, diff them.

vLLM (`vllm/v1/spec_decode/metrics.py`) counts, per verification step of a request:
`num_drafts += 1`, `num_draft_tokens += k`, `num_accepted_tokens += n` and, for positions
`0..n-1`, `num_accepted_tokens_per_pos{position=i} += 1`. The page shows them as counters with a
`_total` suffix and `model_name` / `engine` labels. Our server writes the same names with the same
meaning, so one scraper reads both; a benchmark diffs the counters before and after its run and
derives τ = 1 + Δaccepted / Δdrafts, as `vllm bench serve` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = "vllm:spec_decode_"
DRAFTS = "vllm:spec_decode_num_drafts"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens"
ACCEPTED_PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"

# A sample line: name{label="value",...} value [timestamp]; label values escape \\, \" and \n.
_SAMPLE = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class SpecDecodeCounters:
    """The four spec-decode counters of one server (summed over its engines and models)."""

    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted_tokens: float = 0.0
    accepted_per_position: list[float] = field(default_factory=list)  # index = draft position

    def observe(self, k: int, accepted: int) -> None:
        """Count one verification step that drafted k tokens and accepted the first `accepted`."""
        if len(self.accepted_per_position) < k:
            self.accepted_per_position.extend([0.0] * (k - len(self.accepted_per_position)))
        self.drafts += 1
        self.draft_tokens += k
        self.accepted_tokens += accepted
        for position in range(accepted):
            self.accepted_per_position[position] += 1

    def minus(self, earlier: "SpecDecodeCounters") -> "SpecDecodeCounters":
        """What was counted between `earlier` and this scrape."""
        positions = max(len(self.accepted_per_position), len(earlier.accepted_per_position))
        now = self.accepted_per_position + [0.0] * (positions - len(self.accepted_per_position))
        before = earlier.accepted_per_position + [0.0] * (positions - len(earlier.accepted_per_position))
        return SpecDecodeCounters(
            self.drafts - earlier.drafts,
            self.draft_tokens - earlier.draft_tokens,
            self.accepted_tokens - earlier.accepted_tokens,
            [a - b for a, b in zip(now, before)],
        )

    def to_dict(self) -> dict:
        """The counters under vLLM's names (without the `vllm:spec_decode_` prefix)."""
        return {
            "num_drafts": self.drafts,
            "num_draft_tokens": self.draft_tokens,
            "num_accepted_tokens": self.accepted_tokens,
            "num_accepted_tokens_per_pos": self.accepted_per_position,
        }


def acceptance(delta: SpecDecodeCounters) -> dict:
    """Figures from counted verification steps: τ (bonus included), acceptance rate, per-position rates.

    Undefined figures (no step counted) are None. `k` is the number of draft positions the server
    reports, i.e. its num_speculative_tokens.
    """
    drafts = delta.drafts
    return {
        "k": len(delta.accepted_per_position) or None,
        "tau": 1.0 + delta.accepted_tokens / drafts if drafts else None,
        "acceptance_rate": delta.accepted_tokens / delta.draft_tokens if delta.draft_tokens else None,
        "per_position_acceptance": [n / drafts if drafts else None for n in delta.accepted_per_position],
    }


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text page as (name, labels, value); comments and junk skipped."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = {key: _unescape(value_text) for key, value_text in _LABEL.findall(match["labels"] or "")}
        samples.append((match["name"], labels, value))
    return samples


def parse_counters(text: str) -> SpecDecodeCounters | None:
    """The spec-decode counters on a `/metrics` page, or None when the server shows none (no speculator)."""
    counters = SpecDecodeCounters()
    per_position: dict[int, float] = {}
    found = False
    for name, labels, value in parse_samples(text):
        if not name.startswith(PREFIX) or name.endswith("_created"):
            continue
        base = name.removesuffix("_total")
        found = True
        if base == DRAFTS:
            counters.drafts += value
        elif base == DRAFT_TOKENS:
            counters.draft_tokens += value
        elif base == ACCEPTED:
            counters.accepted_tokens += value
        elif base == ACCEPTED_PER_POSITION and labels.get("position", "").isdigit():
            position = int(labels["position"])
            per_position[position] = per_position.get(position, 0.0) + value
    if not found:
        return None
    counters.accepted_per_position = [per_position.get(i, 0.0) for i in range(max(per_position, default=-1) + 1)]
    return counters


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def render(metrics: list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]) -> str:
    """A Prometheus text page (format 0.0.4) from (name, type, help, [(labels, value)]) entries.

    Counters get the `_total` suffix on their samples, as prometheus_client (and so vLLM) writes them.
    """
    lines = []
    for name, kind, help_text, samples in metrics:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        sample_name = f"{name}_total" if kind == "counter" else name
        for labels, value in samples:
            lines.append(f"{sample_name}{_labels(labels)} {float(value)!r}")
    return "\n".join(lines) + "\n"


def spec_decode_metrics(counters: SpecDecodeCounters, labels: dict[str, str]) -> list:
    """`render` entries for the four spec-decode counters, with vLLM's names and labels."""
    per_position = [({**labels, "position": str(i)}, n) for i, n in enumerate(counters.accepted_per_position)]
    return [
        (DRAFTS, "counter", "Number of spec decoding drafts (verification steps).", [(labels, counters.drafts)]),
        (DRAFT_TOKENS, "counter", "Number of draft tokens.", [(labels, counters.draft_tokens)]),
        (ACCEPTED, "counter", "Number of accepted draft tokens.", [(labels, counters.accepted_tokens)]),
        (ACCEPTED_PER_POSITION, "counter", "Accepted draft tokens per draft position.", per_position),
    ]
