"""What every spec-* front door shares: --version, exit codes, --json, errors as one line.

Exit status: 0 ok, 1 failure (bad input, failed check), 2 usage error.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from typing import Callable, NoReturn, Sequence

from rich.console import Console
from rich.markup import escape

import libspec
from libspec.errors import SpecError

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


def print_json(document) -> None:
    """Write a JSON document to stdout (machine-readable output)."""
    json.dump(document, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


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
    sys.exit(status)
