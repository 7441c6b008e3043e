"""What every spec-* front door shares: --version, exit codes, --json, errors as one line.

Exit status: 0 ok, 1 failure (bad input, failed check), 2 usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from typing import Callable, NoReturn, Sequence

from rich.console import Console
from rich.markup import escape

import libspec
from libspec.errors import SpecError
from libspec.options import field_flag, option_fields

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Human output goes to stdout; progress, warnings and errors to stderr so pipes stay clean.
# Piped or logged output gets a wide page so tables are never cut to 80 columns.
stdout = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class Parser(argparse.ArgumentParser):
    """argparse that exits 2 on usage errors and suggests the nearest option for a typo."""

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments:" in message:
            known = [s for a in self._actions for s in a.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def make_parser(prog: str, description: str, epilog: str | None = None) -> Parser:
    """A parser with the options every tool has: --version and --json."""
    parser = Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {libspec.__version__}")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of tables")
    return parser


def add_options(target, options_class, title: str | None = None) -> dict:
    """Command-line options for every `option` field of an options dataclass (libspec/options.py):
    its flag, default, help, choices and parser; booleans get --x/--no-x. Fields that name a
    `group` go into that --help section of the parser `target`, the others into `title`'s section
    (or `target` itself). Returns the sections by name, for the tool's own options."""
    groups: dict[str | None, object] = {None: target.add_argument_group(title) if title else target}
    for field in option_fields(options_class):
        name = field.metadata["group"]
        if name not in groups:
            groups[name] = target.add_argument_group(name)
        groups[name].add_argument(field_flag(field), **_argument(field))
    return groups


def _argument(field) -> dict:
    """argparse keywords for one option field."""
    meta = field.metadata
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    shown = "on" if default is True else "off" if default is False else default
    text = meta["help"] if default in (None, {}, ()) else f"{meta['help']} (default {shown})"
    kwargs = {"default": default, "help": text.replace("%", "%%"), "dest": field.name}
    if meta["choices"] is not None:
        kwargs["choices"] = meta["choices"]
    if meta["metavar"] is not None:
        kwargs["metavar"] = meta["metavar"]
    if isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = _usage_errors(meta["parse"]) if meta["parse"] else _value_type(str(field.type))
    return kwargs


def _usage_errors(parse):
    """A library parser whose ValueError becomes argparse's usage error with the same message (exit 2)."""

    def parse_argument(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse_argument


def options_from_args(options_class, args: argparse.Namespace, **given):
    """An options object from parsed arguments (its fields), plus fields given directly."""
    values = {f.name: getattr(args, f.name) for f in option_fields(options_class)}
    return options_class(**values, **given)


def _value_type(annotation: str):
    if annotation.startswith("tuple[int"):
        return _int_tuple
    for name, kind in (("int", int), ("float", float)):
        if annotation == name or annotation.startswith(f"{name} |"):
            return kind
    return str


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def print_json(document) -> None:
    """Write a JSON document to stdout (machine-readable output)."""
    json.dump(document, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def os_error_text(error: OSError) -> str:
    """`PATH: No space left on device (errno 28)`: which file and what the system said, for one error line."""
    reason = f"{error.strerror} (errno {error.errno})" if error.strerror else str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> NoReturn:
    """Call a tool's main and turn library errors into a one-line message and exit status 1."""
    prog = os.path.basename(sys.argv[0]) or "spec-tools"
    try:
        status = main(argv)
    except SpecError as error:
        stderr.print(f"[bold red]{prog}: error:[/] {escape(str(error))}", soft_wrap=True)
        status = EXIT_FAILURE
    except KeyboardInterrupt:
        stderr.print(f"{prog}: interrupted")
        status = 130
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_OK
    except OSError as error:  # (after its subclass BrokenPipeError) a full disk, a read-only folder: one line
        stderr.print(f"[bold red]{prog}: error:[/] {escape(os_error_text(error))}", soft_wrap=True)
        status = EXIT_FAILURE
    sys.exit(status)
