"""spec-validate: check data sets, shards, streams and speculator checkpoints against SPEC.md."""

from __future__ import annotations

from typing import Sequence

from rich.markup import escape

from libspec.validate import KINDS, Report, validate
from tools._cli import EXIT_FAILURE, EXIT_OK, make_parser, print_json, run, stdout

DESCRIPTION = f"""\
Check spec-tools artifacts and list every problem found.

PATH may be a data set directory, a speculator checkpoint folder, a single record shard
(*.msgpack.zst), a single tensor shard (*.safetensors), a stream file, or - for a stream on
stdin. The kind is recognised automatically (one of: {", ".join(KINDS)}).

Exit status: 0 when everything is valid, 1 when any problem was found, 2 on usage errors."""

EPILOG = """\
examples:
  spec-validate data/                  a data set: schema, checksums, counts, token ids, NaNs
  spec-validate out/checkpoint-best    a checkpoint: config schema, weight names and shapes
  spec-gen-hidden ... -o - | spec-validate -
  spec-validate --json data/ | jq .[0].facts"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("spec-validate", DESCRIPTION, EPILOG)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="artifact(s) to check; - reads a stream from stdin")
    args = parser.parse_args(argv)
    if args.paths.count("-") > 1:
        parser.error("stdin (-) can be given only once")
    reports = [validate(path) for path in args.paths]
    if args.json:
        print_json([r.to_dict() for r in reports])
    else:
        for report in reports:
            print_report(report)
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILURE


def print_report(report: Report) -> None:
    """One line of verdict, the facts, then every problem on its own line."""
    mark = "[green]✓ valid[/]" if report.ok else f"[red]✗ {len(report.problems)} problem(s)[/]"
    stdout.print(f"{mark}  {report.kind}  [bold]{escape(report.path)}[/]")
    for key, value in report.facts.items():
        stdout.print(f"    {key}: {escape(str(value))}", style="dim")
    for problem in report.problems:
        stdout.print(f"  [red]-[/] {escape(problem)}")


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
