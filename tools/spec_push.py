"""spec-push: publish a validated speculator to the Hugging Face Hub with a card whose numbers were measured."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from rich.markup import escape
from rich.table import Table

from libspec.errors import SpecError
from libspec.bench.floors import parse_floor
from libspec.format.checkpoint import refuse_to_replace
from libspec.publish.push import PushOptions, PushPlan, plan_push, upload, write_folder
from tools._cli import EXIT_FAILURE, EXIT_OK, make_parser, print_json, run, stderr, stdout

DESCRIPTION = """\
Publish a speculator checkpoint to the Hugging Face Hub (or another hub) in one commit, with a
generated model card (README.md).

First the gate: the folder must pass spec-validate, and every bench report given with --bench must
match its schema, hold figures equal to what its raw counts give, carry no sanity flag, have raw
counts that add up, and have been measured on these weights and this verifier. Any problem refuses
the push (exit 1) and is listed; --force publishes anyway, says loudly what it skipped and records
it in the card.

The card states what the speculator is (algorithm, draft layers, draft vocabulary, aux layer ids,
k, dtype, parameters), the exact `vllm serve` commands, the measured table of every report (τ,
per-position acceptance, speedup measured and predicted, tokens/s, lossless, with the hardware and
the bench command) and the provenance recorded in config.json. Every number is copied from the
files by code; with no report the card says that nothing was measured.

A speculator trained against a local verifier folder names that folder in config.json; published,
that path would mean nothing elsewhere: --verifier-id ORG/NAME puts the verifier's Hub id in the
published config.json and the card's base_model (checked against the recorded fingerprint when the
Hub copy is in the local cache). Without it the folder's base name is published as `./NAME` and the
card warns that `vllm serve REPO` will not find the verifier. No published file names an absolute
path of this machine: any other is cut to its base name.

Published: config.json, the weights (and their index), README.md, and the reports as bench/*.json.
Other files in the folder are not uploaded, and neither is any file outside it: a weights index
naming an absolute path, a `..` path or a link leading out of the folder is refused, even with
--force. --to-dir refuses a non-empty DIR; with --overwrite, over a checkpoint folder only, it
replaces only what spec-push writes (the checkpoint files, README.md, the bench reports) and
leaves the other files there.
The token comes from HF_TOKEN or the saved login (`hf auth login`) and is never printed."""

EPILOG = """\
examples:
  spec-push out/best me/Llama-3.2-1B-speculator.eagle3 --bench report.json --dry-run
  spec-push out/best me/Llama-3.2-1B-speculator.eagle3 --bench report.json --to-dir hub-ready/
  spec-push out/best me/Llama-3.2-1B-speculator.eagle3 --bench report.json --private --license apache-2.0
  spec-bench ... --json | spec-push out/best me/spec --bench - --dry-run"""


def build_parser():
    parser = make_parser("spec-push", DESCRIPTION, EPILOG)
    parser.add_argument("checkpoint", metavar="CKPT_DIR", help="speculator checkpoint folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, e.g. me/Llama-3.1-8B-speculator.eagle3")
    parser.add_argument("--bench", action="extend", nargs="+", default=[], metavar="BENCH.json", help="spec-bench report(s) to publish in the card (- reads one from stdin)")
    parser.add_argument("--private", action="store_true", help="create the repository private (refused if it exists and is public)")
    parser.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit-message", help="commit title (default: 'Upload speculator with spec-push VERSION')")
    parser.add_argument("--license", help="license id for the card's metadata, e.g. apache-2.0 (the verifier's terms may bind you too)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dry-run", action="store_true", help="print the files, sizes, checksums and the card; upload nothing")
    where.add_argument("--to-dir", metavar="DIR", help="write the Hub-ready folder to DIR (atomically) instead of uploading")
    parser.add_argument("--force", action="store_true", help="publish even if the gate finds problems (they are printed and put in the card); never allows files from outside CKPT_DIR nor --to-dir over a non-empty DIR")
    parser.add_argument("--require", action="append", default=[], metavar="FLOOR",
                        help="a floor the --bench reports must show at the best k, e.g. humaneval:tau>=2.5 or mt-bench/math:speedup>=1.1 "
                             "(repeatable); a floor missed refuses the push, each floor met is listed in the card")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="with --to-dir: DIR may hold a checkpoint already; its checkpoint files (config.json, weights, index) and README.md and the bench reports written now are replaced, its other files (notes, optimizer states) stay. Without it a non-empty DIR is refused")
    parser.add_argument("--verifier-id", metavar="ORG/NAME",
                        help="the verifier's Hub id, for a speculator trained against a local copy: the published config.json names it "
                             "(so `vllm serve REPO` finds it) and the card's base_model is it; checked against the trained-for verifier's "
                             "fingerprint when its Hub copy is in the local Hugging Face cache (never downloaded), else said to be unchecked")  # fmt: skip
    parser.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.overwrite and not args.to_dir:
        parser.error("--overwrite applies to --to-dir only")
    try:  # a malformed floor is a usage error (exit 2), not a failed push
        floors = tuple(parse_floor(text) for text in args.require)
    except SpecError as error:
        parser.error(str(error))
    _check_repo_id(args.repo_id)
    if args.to_dir:
        refuse_to_replace(args.to_dir, args.overwrite)  # before the gate: it can take a while
    options = PushOptions(args.repo_id, args.revision, args.private, args.commit_message, args.license, args.force, floors, args.verifier_id)
    with tempfile.TemporaryDirectory(prefix="spec-push-") as scratch:
        bench_paths = [_stdin_to_file(Path(scratch)) if path == "-" else path for path in args.bench]
        plan = plan_push(args.checkpoint, bench_paths, options)
        if plan.verifier_warning:
            stderr.print(f"[bold yellow]⚠ {escape(plan.verifier_warning)}[/]")
        if not plan.allowed:
            return _refuse(plan, args.json)
        if not args.json:
            print_gate(plan)
        result = _act(plan, args)
    if args.json:
        print_json({**plan_document(plan), **result})
    return EXIT_OK


def _act(plan: PushPlan, args) -> dict:
    """Do what was asked (show, write or upload) and return the JSON fields that describe it."""
    if args.dry_run:
        if not args.json:
            print_dry_run(plan)
        return {"action": "dry-run"}
    if args.to_dir:
        directory = write_folder(plan, args.to_dir, overwrite=args.overwrite)
        if not args.json:
            stdout.print(f"[green]wrote[/] {len(plan.items)} files to [bold]{escape(str(directory))}[/]")
        return {"action": "to-dir", "path": str(directory)}
    commit_url = upload(plan, endpoint=args.endpoint)
    if not args.json:
        stdout.print(f"[green]uploaded[/] {len(plan.items)} files to [bold]{escape(plan.options.repo_id)}[/]: {escape(commit_url)}")
    return {"action": "upload", "commit_url": commit_url}


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise SpecError(f"REPO_ID {repo_id!r}: {error}") from None


def _stdin_to_file(scratch: Path) -> Path:
    """A report piped in (`--bench -`) is kept as bench/stdin.json."""
    path = scratch / "stdin.json"
    with open(path, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    return path


def _refuse(plan: PushPlan, as_json: bool) -> int:
    if as_json:
        print_json({**plan_document(plan), "action": "refused"})
    else:
        print_gate(plan)
        stdout.print("[bold red]refusing to publish[/]: fix the problems above, or pass --force to publish anyway (the card will say so)")
    return EXIT_FAILURE


def plan_document(plan: PushPlan) -> dict:
    """The plan as JSON: gate, files and card (the token never appears here)."""
    gate = plan.gate
    return {
        "ok": gate.ok,
        "forced": plan.options.force and not gate.ok,
        "checkpoint": str(plan.checkpoint),
        "repo_id": plan.options.repo_id,
        "revision": plan.options.revision or "main",
        "private": plan.options.private,
        "gate": {"problems": gate.problems, "checks": gate.checks, "notes": gate.notes},
        "files": [{"path": i.path_in_repo, "bytes": i.num_bytes, "sha256": i.sha256, "source": str(i.source) if i.source else None} for i in plan.items],
        "left_out": plan.left_out,
        "card": plan.card,
    }


def print_gate(plan: PushPlan) -> None:
    """Verdict, the checks that ran, every problem, the notes; --force is announced on stderr, loudly."""
    gate = plan.gate
    mark = "[green]✓ passed[/]" if gate.ok else f"[red]✗ {len(gate.problems)} problem(s)[/]"
    stdout.print(f"{mark}  gate for [bold]{escape(str(plan.checkpoint))}[/] → {escape(plan.options.repo_id)}")
    for line in gate.checks:
        stdout.print(f"    {escape(line)}", style="dim")
    for problem in gate.problems:
        stdout.print(f"  [red]-[/] {escape(problem)}")
    for note in gate.notes:
        stdout.print(f"  [yellow]note:[/] {escape(note)}")
    if plan.options.force and not gate.ok:
        stderr.print(f"[bold red]⚠ --force: publishing despite {len(gate.problems)} problem(s) listed above; the card records them[/]")


def print_dry_run(plan: PushPlan) -> None:
    """The exact files with sizes and checksums, what stays home, then the card as it will be uploaded."""
    table = Table(title=f"would upload to {escape(plan.options.repo_id)} (revision {escape(plan.options.revision or 'main')}, "
                        f"{'private' if plan.options.private else 'public unless the namespace defaults to private'})", title_justify="left")
    for column, justify in (("file", "left"), ("bytes", "right"), ("sha256", "left"), ("from", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    for item in plan.items:
        table.add_row(escape(item.path_in_repo), f"{item.num_bytes:,}", item.sha256, escape(str(item.source) if item.source else "generated"))
    stdout.print(table)
    if plan.left_out:
        stdout.print(f"not uploaded (not part of a checkpoint): {escape(', '.join(plan.left_out))}")
    stdout.print(f"\n[bold]--- {escape('README.md')} ---[/]")
    stdout.out(plan.card, highlight=False)


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
