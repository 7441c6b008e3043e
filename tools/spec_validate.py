"""spec-validate: check data sets, shards, streams and speculator checkpoints against SPEC.md."""

from __future__ import annotations

from typing import Sequence

from rich.markup import escape

from libspec.validate.gates import run_gates
from libspec.validate.artifacts import KINDS, Report, validate
from tools._cli import EXIT_FAILURE, EXIT_OK, make_parser, print_json, run, stderr, stdout

DESCRIPTION = f"""\
Check spec-tools artifacts and list every problem found.

PATH may be a data set directory, a speculator checkpoint folder, a single record shard
(*.msgpack.zst), a single tensor shard (*.safetensors), a stream file, or - for a stream on
stdin. The kind is recognised automatically (one of: {", ".join(KINDS)}).

For a checkpoint, --vllm and --upstream also run the consumers' own code on it (on CPU): vLLM's
config parser, SpeculativeConfig and weight loader, and upstream speculators' loader. They need
the gate environment (./just gates); the vLLM gate also prints the `vllm serve` command line.

Exit status: 0 when everything is valid, 1 when any problem was found, 2 on usage errors."""

EPILOG = """\
examples:
  spec-validate data/                  a data set: schema, checksums, counts, token ids, NaNs
  spec-validate out/checkpoint-best    a checkpoint: config schema, weight names and shapes
  spec-validate --vllm --upstream out/checkpoint-best   ... and vLLM's and upstream's loaders
  spec-gen-hidden ... -o - | spec-validate -
  spec-validate --json data/ | jq .[0].facts"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("spec-validate", DESCRIPTION, EPILOG)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="artifact(s) to check; - reads a stream from stdin")
    parser.add_argument("--vllm", action="store_true", help="also run vLLM's own parser and weight loader on checkpoints")
    parser.add_argument("--upstream", action="store_true", help="also load checkpoints with upstream speculators and compare")
    args = parser.parse_args(argv)
    if args.paths.count("-") > 1:
        parser.error("stdin (-) can be given only once")
    reports = [validate(path) for path in args.paths]
    gates = [gate for gate in ("vllm", "upstream") if getattr(args, gate)]
    checkpoints = [r.path for r in reports if r.kind == "checkpoint"]
    if gates and checkpoints:
        with stderr.status(f"running the {' and '.join(gates)} gate(s) on {len(checkpoints)} checkpoint(s)"):
            gate_reports = run_gates(checkpoints, gates)
        reports = _interleave(reports, gate_reports)
    if args.json:
        print_json([r.to_dict() for r in reports])
    else:
        for report in reports:
            print_report(report)
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILURE


def _interleave(reports: list[Report], gate_reports: list[Report]) -> list[Report]:
    """Each checkpoint's own report followed by its gate reports."""
    merged = []
    for report in reports:
        merged.append(report)
        merged.extend(g for g in gate_reports if g.path == report.path)
    return merged


def print_report(report: Report) -> None:
    """One line of verdict, the facts, then every warning and every problem on its own line."""
    mark = "[green]✓ valid[/]" if report.ok else f"[red]✗ {len(report.problems)} problem(s)[/]"
    if report.warnings:
        mark += f" [yellow]({len(report.warnings)} warning(s))[/]"
    stdout.print(f"{mark}  {report.kind}  [bold]{escape(report.path)}[/]")
    for key, value in report.facts.items():
        stdout.print(f"    {key}: {escape(str(value))}", style="dim")
    for warning in report.warnings:
        stdout.print(f"  [yellow]! {escape(warning)}[/]")
    for problem in report.problems:
        stdout.print(f"  [red]-[/] {escape(problem)}")


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
