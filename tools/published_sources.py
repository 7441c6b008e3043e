"""Write a random-weight draft in one published layout, built from its real config, plus its verifier stand-in.

    python -m tools.published_sources zlab-dflash-qwen3-8b /tmp/zlab                # tiny: seconds
    python -m tools.published_sources safeailab-eagle3-llama3.1-8b /tmp/e3 --scale full
    spec-convert /tmp/e3/source --verifier /tmp/e3/verifier -o /tmp/e3/converted

The layouts and where each config came from: tests/data/published_configs/SOURCES.md. The full-size
verifier stand-in is its real config.json and a word-level tokenizer, without weights: spec-convert
reads only the config (its numerical check then uses random stand-ins for the verifier's embedding
and lm_head, vocab x hidden each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tools import published_layouts as published
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "published-sources",
        "Random-weight source in a published draft layout (real config, publisher's tensor names and file) and its verifier stand-in.",
        epilog=f"Layouts: {', '.join(published.corpus())}.",
    )
    parser.add_argument("layout", help="a folder name of tests/data/published_configs")
    parser.add_argument("output", type=Path, help="new folder: gets source/ and verifier/")
    parser.add_argument("--scale", choices=published.SCALES, default="tiny", help="tiny: widths scaled down, structure kept (default); full: the published sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source = published.build_source(args.layout, args.output / "source", args.scale, args.seed)
    verifier = published.build_verifier(args.layout, args.output / "verifier", args.scale, args.seed)
    summary = {"layout": args.layout, "scale": args.scale, "source": str(source), "verifier": str(verifier)}
    if args.json:
        print_json(summary)
    else:
        stderr.print(f"wrote {args.layout} ({args.scale}) to {source}, its verifier stand-in to {verifier}")
    return EXIT_OK


if __name__ == "__main__":
    run(main)
