"""build-verifier: train (or find in the cache) the built-in small verifier and print its folder.

    V=$(python -m tools.build_verifier)          # full preset, ~8 min the first time, then instant
    python -m tools.build_verifier --preset tiny --json
"""

from __future__ import annotations

import os

# Must be set before torch starts its OpenMP threads: spinning threads are ~5x slower on a busy core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Callable, Iterator, Sequence  # noqa: E402

from rich.progress import (  # noqa: E402
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from libspec import cpu  # noqa: E402
from libspec.demo import tiny_verifier  # noqa: E402
from libspec.format.json_files import read_json_object  # noqa: E402
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr, stdout  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Build or look up the verifier; its path goes to stdout, progress to stderr."""
    parser = make_parser(
        "build-verifier",
        "Train the built-in small verifier (a Llama on the Python stdlib) or reuse the cached one.",
        epilog=f"Cache: $SPEC_TOOLS_CACHE, else $XDG_CACHE_HOME/spec-tools, else ~/.cache/spec-tools "
        f"(now {tiny_verifier.default_cache_dir()}).",
    )
    parser.add_argument("--preset", choices=sorted(tiny_verifier.PRESETS), default="full",
                        help="full: the real verifier (~8 min on 2 cores); tiny: seconds, for tests")
    parser.add_argument("--cache-dir", help="where verifiers are cached (default: see below)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has this recipe")
    args = parser.parse_args(argv)

    # A killed build should still delete its temp folder: turn SIGTERM into an ordinary exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    _keep_freed_memory()
    with _progress_bar() as show:
        folder = tiny_verifier.build_verifier(args.preset, args.cache_dir, args.force, on_progress=show)
    if not args.json:
        threads = tiny_verifier.PRESETS[args.preset].threads
        stderr.print(f"{cpu.describe(threads)} (part of the cache key: {folder.name})", style="dim")
    if args.json:
        recipe = read_json_object(folder / "recipe.json")
        print_json({"path": str(folder), "recipe": recipe})
    else:
        stdout.print(str(folder), soft_wrap=True)
    return EXIT_OK


def _keep_freed_memory() -> None:
    """Make glibc reuse freed memory instead of handing it back to the kernel (Linux/glibc only).

    Each training step allocates and frees the same ~64 MB logits buffers; glibc serves them with
    fresh mmaps whose page faults cost ~15-20% of the CPU time of a step on our 2-core VM.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: serve large blocks from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[tiny_verifier.BuildProgress], None]]:
    """Yield a callback that draws the library's progress reports on stderr, one line per stage.

    The bar starts with the first report, so a cache hit prints nothing.
    """
    bar = Progress(
        TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[figures]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=stderr,
    )
    stages = {}  # stage name -> rich task id, in the order they began

    def finish_stages() -> None:
        for task in bar.tasks:
            if not task.finished:
                done = max(int(task.completed), 1)
                bar.update(task.id, total=done, completed=done)

    def show(report: tiny_verifier.BuildProgress) -> None:
        if not stages:
            bar.start()
        if report.stage not in stages:
            finish_stages()
            stages[report.stage] = bar.add_task(report.stage, total=report.total, figures="")
        figures = ""
        if report.loss is not None:
            figures = f"loss {report.loss:.3f}  {report.tokens_per_s:,.0f} tok/s"
        bar.update(stages[report.stage], completed=report.done, figures=figures)

    try:
        yield show
        finish_stages()
    finally:
        if stages:
            bar.stop()


if __name__ == "__main__":
    run(main)
