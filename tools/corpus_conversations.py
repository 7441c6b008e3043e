"""Write training conversations (or benchmark prompts) cut from the built-in verifier's corpus (the Python stdlib).

    python -m tools.corpus_conversations -o conversations.jsonl --limit 2000
    python -m tools.corpus_conversations -o code.jsonl --split validation --prompts code --limit 20
"""

from __future__ import annotations

from typing import Sequence

from libspec.demo.corpus import PROMPT_KINDS, CorpusOptions, corpus_prompts, verifier_training_files, write_corpus_conversations, write_jsonl
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("corpus-conversations", "JSONL conversations (and plain text records) from the stdlib files the built-in verifier trains on, for spec-gen-hidden.")
    parser.add_argument("-o", "--output", required=True, help="JSONL file to write")
    parser.add_argument("--preset", default="full", help="which verifier preset's file split (default: full)")
    parser.add_argument("--split", choices=["train", "validation"], default="train", help="its training files (default) or held-out ones")
    parser.add_argument("--limit", type=int, help="at most this many records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", choices=PROMPT_KINDS, help="write benchmark prompts (no answers) instead: code = raw completion, chat = one user turn")
    args = parser.parse_args(argv)
    root, files = verifier_training_files(args.preset, args.split)
    options = CorpusOptions(seed=args.seed)
    if args.prompts:
        count = write_jsonl(args.output, corpus_prompts(files, args.prompts, root, options), args.limit)
    else:
        count = write_corpus_conversations(args.output, files, root, args.limit, options)
    summary = {"output": args.output, "records": count, "files": len(files), "split": args.split}
    if args.json:
        print_json(summary)
    else:
        stderr.print(f"wrote {count} records from {len(files)} {args.split} files to {args.output}")
    return EXIT_OK


if __name__ == "__main__":
    run(main)
