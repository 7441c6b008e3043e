"""Options objects: frozen dataclasses whose fields carry their default, help, choices and bounds.

One place per setting: the tools build their command-line options from these fields
(tools/_cli.py `add_options`), the library checks values against them (`check_options`), and the
objects are recorded as they are in the outputs they produce.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from libspec.errors import SpecError


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    metavar: str | None = None,
    group: str | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with what a command line needs to offer it and what a check needs to refuse a bad value.

    `group`: the --help section it appears in; `flag`: its spelling when not --field-name; `parse`:
    how the command line's text becomes the value (argparse `type`); `default_factory` for mutable defaults.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "minimum": minimum,
                "metavar": metavar, "group": group, "flag": flag, "parse": parse}  # fmt: skip
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(options_class) -> list[dataclasses.Field]:
    """The fields of an options class that were declared with `option` (those with help text)."""
    return [f for f in dataclasses.fields(options_class) if "help" in f.metadata]


def flag(name: str) -> str:
    """The command-line spelling of a field name: ttt_steps -> --ttt-steps."""
    return "--" + name.replace("_", "-")


def field_flag(field: dataclasses.Field) -> str:
    """The command-line spelling of an option field (its `flag`, else from its name)."""
    return field.metadata.get("flag") or flag(field.name)


def check_options(options) -> None:
    """Refuse a value outside its field's choices or below its minimum, naming the option as typed."""
    for field in option_fields(type(options)):
        value, choices, minimum = getattr(options, field.name), field.metadata["choices"], field.metadata["minimum"]
        if choices is not None and value not in choices:
            raise SpecError(f"{field_flag(field)} {value!r}: expected one of {', '.join(map(str, choices))}")
        if minimum is not None and value is not None and value < minimum:
            raise SpecError(f"{field_flag(field)} {value}: expected at least {minimum}")


def known_values(options_class, values: dict) -> dict:
    """The entries of `values` that are fields of `options_class` (a recorded dict may hold others)."""
    names = {f.name for f in dataclasses.fields(options_class)}
    return {k: v for k, v in values.items() if k in names}
