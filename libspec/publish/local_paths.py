"""Keeping this machine's paths out of what is published: a card or config.json naming
/home/me/.cache/... tells readers nothing they can use and leaks how the machine is laid out.

Given names (the local verifier folder) are replaced by what the publisher chose for them; any other
absolute or home-relative path left in a text is cut down to its last component.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# An absolute (/x...) or home-relative (~/x...) path: not inside a word, a URL or a relative path
# (so "org/name", "bench/report.json", "tokens/s" and "https://host/x" are left alone).
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])~?/[\w.@+-][^\s'\"`<>|,;()\[\]{}]*")


@dataclass(frozen=True)
class LocalPaths:
    """Exact replacements for known local names, then every other absolute path shortened to its base name."""

    replacements: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_names(cls, names: dict[str, str]) -> "LocalPaths":
        """Replacements for each local path as written, expanded (~) and resolved (links, relative parts)."""
        table = {}
        for name, replacement in names.items():
            for spelling in {name, name.rstrip("/"), os.path.expanduser(name), str(Path(name).expanduser().resolve())}:
                if spelling and spelling != ".":
                    table[spelling] = replacement
        return cls(table)

    def text(self, text: str) -> str:
        """`text` with every known local name replaced and every other absolute path cut to its base name."""
        for name in sorted(self.replacements, key=len, reverse=True):
            text = text.replace(name, self.replacements[name])
        return ABSOLUTE_PATH.sub(lambda match: Path(match.group(0).rstrip("/")).name or ".", text)

    def json(self, value):
        """The same for every string in a JSON value (keys are file names of the folder and stay)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, dict):
            return {key: self.json(item) for key, item in value.items()}
        return value


def local_paths_in(text: str) -> list[str]:
    """The absolute or home-relative paths left in `text` (what the tests and the final check look for)."""
    return ABSOLUTE_PATH.findall(text)
