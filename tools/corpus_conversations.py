"""Write training conversations cut from the built-in verifier's training files (the Python stdlib).

    python -m tools.corpus_conversations -o conversations.jsonl --limit 2000
"""

from __future__ import annotations

from typing import Sequence

from libspec.corpus_conversations import CorpusOptions, verifier_training_files, write_corpus_conversations
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("corpus-conversations", "JSONL conversations (and plain text records) from the stdlib files the built-in verifier trains on, for spec-gen-hidden.")
    parser.add_argument("-o", "--output", required=True, help="JSONL file to write")
    parser.add_argument("--preset", default="full", help="which verifier preset's file split (default: full)")
    parser.add_argument("--split", choices=["train", "validation"], default="train", help="its training files (default) or held-out ones")
    parser.add_argument("--limit", type=int, help="at most this many records")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root, files = verifier_training_files(args.preset, args.split)
    count = write_corpus_conversations(args.output, files, root, args.limit, CorpusOptions(seed=args.seed))
    summary = {"output": args.output, "records": count, "files": len(files), "split": args.split}
    if args.json:
        print_json(summary)
    else:
        stderr.print(f"wrote {count} records from {len(files)} {args.split} files to {args.output}")
    return EXIT_OK


if __name__ == "__main__":
    run(main)
