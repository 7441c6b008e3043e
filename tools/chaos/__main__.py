"""chaos: rerun the fault campaign (kill -9 and resume, disk full, read-only output, concurrent load).

    python -m tools.chaos                  # 100 kill trials per tool and the rest: 13-20 min on a shared 2-core CPU
    python -m tools.chaos --trials 5 --json

Exit status: 0 when every trial ended identical to its reference (or refused as it should) and every
request got an answer, 1 otherwise, 2 usage error. Progress goes to stderr and WORK/chaos.log.
"""

from __future__ import annotations

import os

# Before torch is imported (warm mode imports it here, once): one thread, waiting passively, so
# runs are deterministic and do not fight the other users of a shared machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

from libspec.options import option  # noqa: E402
from tools._cli import EXIT_FAILURE, EXIT_OK, add_options, make_parser, options_from_args, print_json, run, stdout  # noqa: E402
from tools.chaos.campaign import Campaign, fresh_work_folder  # noqa: E402
from tools.chaos.summary import summary_rows, summary_table  # noqa: E402

TOOLS = ("spec-gen-hidden", "spec-train")


@dataclass(frozen=True)
class ChaosOptions:
    """What `chaos` runs; every field is a command-line option."""

    trials: int = option(100, "kill -9 trials per tool (spec-gen-hidden, spec-train)", minimum=0, metavar="N")
    space_trials: int = option(5, "disk-full trials per tool, with room for 5% to 95% of the reference output", minimum=0, metavar="N")
    bursts: int = option(4, "bursts of concurrent requests against spec-bench serve (0: no load trial)", minimum=0, metavar="N")
    burst_size: int = option(32, "concurrent requests per burst (a fifth of them malformed)", minimum=1, metavar="N")
    work: str = option("out/chaos", "working folder for references, trial outputs and logs; emptied first", metavar="DIR")
    tools: str = option("spec-gen-hidden,spec-train", "the tools that get kill, disk-full and read-only trials, comma-separated", metavar="LIST")
    seed: int = option(0, "seed of the kill moments", metavar="N")
    cold: bool = option(False, "start every run as a fresh `python -m` interpreter (imports included: each run seconds longer) instead of forking a warm one")
    timeout_s: float = option(600.0, "a run still going after this long counts as hung", minimum=1, metavar="S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("chaos", __doc__.split("\n\n")[0])
    add_options(parser, ChaosOptions)
    args = parser.parse_args(argv)
    options = options_from_args(ChaosOptions, args)
    unknown = set(options.tools.split(",")) - set(TOOLS)
    if unknown:
        parser.error(f"--tools: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(TOOLS)}")
    if options.bursts and "spec-train" not in options.tools.split(","):
        parser.error("--bursts needs spec-train among --tools: the server speculates with its reference checkpoint (or give --bursts 0)")
    work = fresh_work_folder(Path(options.work))
    started = time.monotonic()
    campaign = Campaign(options, work)
    campaign.run()
    rows = summary_rows(campaign)
    failed = any(row["different"] or row["lost"] or row["bad_error"] for row in rows)
    wall_s = round(time.monotonic() - started, 1)
    machine = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}"
    if args.json:
        print_json({"ok": not failed, "wall_s": wall_s, "machine": machine, "options": dataclasses.asdict(options),
                    "reference_s": campaign.reference_s, "rows": rows, "trials": [dataclasses.asdict(t) for t in campaign.trials],
                    "load": campaign.load_document()})  # fmt: skip
    else:
        stdout.print(summary_table(rows))
        stdout.print(f"wall time {wall_s} s on {machine}; logs in {work}; {'FAILED' if failed else 'all trials passed'}")
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    run(main)
