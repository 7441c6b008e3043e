"""spec-convert: bring an external draft checkpoint into the spec-tools format, checked."""

from __future__ import annotations

import argparse
from typing import Sequence

from rich.markup import escape

from libspec.convert import ALIASES, FORMATS
from libspec.convert.common import ConvertOptions, pretty
from libspec.convert.pipeline import ConvertRequest, ConvertResult, convert
from libspec.errors import SpecError
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr, stdout

DESCRIPTION = """\
Convert a draft (speculator) checkpoint from a research or vendor layout into a folder that
`vllm serve` runs and spec-tools checks, then prove it: the result is validated against SPEC.md
and the verifier (shapes, vocabulary maps, layer ids), and its logits are compared with a
forward pass written from the SOURCE's own code on the same random inputs. Nothing is written
when a check fails. A non-empty OUT is refused unless it holds a checkpoint and --overwrite is
given; then only its checkpoint files are replaced.

INPUT is a folder, one .safetensors/.bin/.pt file (its config.json beside it, or --config),
sharded weights with an index, or a Hugging Face Hub id (needs the network or the local cache).
Pickled weights are read with torch.load(weights_only=True) only. Only files inside INPUT are
read: an index naming an absolute path, a `..` path or a link leading out of the folder is refused.

Formats (detected from config keys and tensor names; force one with --from NAME):
""" + "\n".join(f"  {name:<19} {module.SIGNATURE}" for name, module in FORMATS.items()) + f"""
  aliases: {", ".join(f"{a}={c}" for a, c in ALIASES.items())}
Not convertible: Medusa and MLP speculators (vLLM 0.33 removed both methods).

Values a source does not record default to what its own code assumes; the output lists every
default it applied and why. Layer ids follow SPEC.md §4 (id k = input of decoder layer k)."""

EPILOG = """\
examples:
  spec-convert yuhuili-EAGLE3-LLaMA3.1-8B/ --verifier meta-llama/Llama-3.1-8B-Instruct -o out/eagle3
  spec-convert z-lab-Qwen3-8B-DFlash-b16/ --verifier Qwen/Qwen3-8B -o out/dflash --json
  spec-convert pytorch_model.bin --config config.json --verifier V --from hass -o out/hass
  spec-convert nvidia-export/ --verifier V -o out/ --layers 2,24,45 --speculative-tokens 4"""


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated layer ids such as 2,16,29") from None


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")


def build_parser():
    parser = make_parser("spec-convert", DESCRIPTION, EPILOG)
    parser.add_argument("input", metavar="INPUT", help="source checkpoint: folder, weights file, or Hub id")
    parser.add_argument("--verifier", required=True, help="the verifier: folder or Hub id (its config.json is needed; weights optional)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write (atomically; never the source; a non-empty OUT is refused unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="OUT may hold a checkpoint already: replace its checkpoint files (config.json, weights, index) and leave its other files (notes, optimizer states) in place")
    parser.add_argument("--from", dest="source_format", metavar="FORMAT", help="source format (default: detect)")
    parser.add_argument("--config", metavar="FILE", help="the source's config.json when INPUT is a lone weights file elsewhere")
    parser.add_argument("--layers", type=parse_layers, metavar="IDS", help="aux layer ids of the verifier (EAGLE-3/DFlash), e.g. 2,16,29")
    parser.add_argument("--norm-before-residual", type=parse_bool, metavar="BOOL", help="EAGLE-3: layer 0 takes its residual after hidden_norm")
    parser.add_argument("--speculative-tokens", type=int, metavar="K", help="tokens drafted per step written into the config")
    parser.add_argument("--check-acceptance", action="store_true", help="also measure a quick τ with spec-bench's engine (verifier weights must be local)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs of the numerical check (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.speculative_tokens is not None and args.speculative_tokens < 1:
        raise SpecError("--speculative-tokens must be at least 1")
    request = ConvertRequest(
        input=args.input,
        verifier=args.verifier,
        output=args.output,
        source_format=args.source_format,
        config_path=args.config,
        options=ConvertOptions(args.layers, args.norm_before_residual, args.speculative_tokens),
        check_acceptance=args.check_acceptance,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    try:
        with stderr.status("converting") as status:
            result = convert(request, lambda message: status.update(message))
    except SpecError as error:
        if args.json:  # a machine reading stdout gets a document either way; the error line still goes to stderr
            print_json({"ok": False, "error": str(error), "input": args.input, "output": args.output})
        raise
    if args.json:
        print_json({"ok": True, **result.to_dict()})
    else:
        print_result(result)
    return EXIT_OK


def print_result(result: ConvertResult) -> None:
    """The verdict, where every value came from, the checks, and how to serve it."""
    stdout.print(f"[green]✓ converted[/]  {escape(result.format)} → {escape(result.algorithm)}  [bold]{escape(result.output)}[/]")
    for decision in result.decisions:
        origin = decision["origin"]
        colour = {"default": "yellow", "derived": "cyan"}.get(origin, "dim")
        why = f" — {decision['reason']}" if decision["reason"] and origin != "recorded" else ""
        stdout.print(f"    {escape(decision['setting'])} = {escape(pretty(decision['value']))}  [{colour}]({origin}{escape(why)})[/]")
    for note in result.notes:
        stdout.print(f"    [dim]note: {escape(note)}[/]")
    facts = result.validation["facts"]
    stdout.print(f"  [green]✓[/] spec-validate: valid ({facts.get('num_tensors')} tensors, {facts.get('parameters'):,} parameters)")
    check = result.numeric_check
    if check is None:
        stdout.print("  [dim]– numerical check: not needed (the source is already in this format, tensors copied byte for byte)[/]")
    else:
        stdout.print(
            f"  [green]✓[/] logits match the {escape(check['reference'])} reference: max |difference| {check['max_abs_diff']:.2e} "
            f"(largest |logit| {check['max_abs_logit']:.2f}; {escape(check['compared'])}; {escape(check['shared_weights'])})"
        )
    if result.acceptance is not None:
        if "skipped" in result.acceptance:
            stdout.print(f"  [yellow]– acceptance: skipped: {escape(result.acceptance['skipped'])}[/]")
        else:
            a = result.acceptance
            stdout.print(f"  [green]✓[/] acceptance: τ = {a['tau']:.2f} at k = {a['k']} over {a['prompts']} prompts ({escape(a['engine'])})")
    stdout.print(f"  serve: {escape(result.serve)}")


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
