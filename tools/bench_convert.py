"""Peak memory of spec-convert and of upstream speculators' converter on published draft layouts.

    ./just bench-convert                                  # every layout, full size
    python -m tools.bench_convert --layouts zlab-dflash-qwen3-8b --scale 0.5 --json

For each layout (tools/convert_sources.py: the published shapes, dtype and file kind, random
weights) it writes the source and a stand-in verifier folder (config.json + embed_tokens,
lm_head and final norm at full size), then runs each converter in a child process of its own and
reads that child's own peak resident memory from the kernel (wait4's ru_maxrss: every page it
touched, mapped files included; tools/child_memory.py keeps this process's out of it). Upstream
is `python -m speculators convert` from the gate venv (`./just gates`); it converts EAGLE-3
(SafeAILab/SpecForge layouts) and DFlash, not EAGLE-1.
Also measured: the peak of a child that only imports each converter (the Python + torch floor).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rich.table import Table

from tools import convert_sources
from tools._cli import EXIT_OK, make_parser, print_json, run, stdout
from tools.child_memory import MeasuredChild

REPO = Path(__file__).resolve().parents[1]
# How a layout's source is made: layout name -> (folder -> (source folder, verifier folder)).
# To use other builders (e.g. published configs), replace this one line.
SourceBuilder = Callable[[str, float, Path], tuple[Path, Path]]
build_source: SourceBuilder = lambda name, scale, folder: convert_sources.write_layout(convert_sources.LAYOUTS[name].scaled(scale), folder)  # noqa: E731
# Upstream's `--algorithm` per source format; formats not listed are not supported by upstream.
UPSTREAM_ALGORITHM = {"safeailab-eagle3": "eagle3", "specforge-eagle3": "eagle3", "zlab-dflash": "dflash"}


@dataclass
class ChildRun:
    """One child process: exit status, peak resident memory, wall time, and its output (stdout + stderr)."""

    returncode: int
    peak_rss_bytes: int
    wall_s: float
    output: str

    def to_dict(self) -> dict:
        return {"returncode": self.returncode, "peak_rss_bytes": self.peak_rss_bytes, "wall_s": round(self.wall_s, 1), "output_tail": self.output[-1500:]}


def run_measured(command: Sequence[str], env: dict | None = None, cwd: Path = REPO) -> ChildRun:
    """Run `command` and read its own peak RSS (tools/child_memory.py: not inflated by this process's)."""
    start = time.perf_counter()
    with open(os.devnull, "rb") as stdin:
        child = MeasuredChild(command, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode("utf-8", "replace")
    child.stdout.close()
    returncode, peak_rss_bytes = child.wait()
    return ChildRun(returncode, peak_rss_bytes, time.perf_counter() - start, output)


def child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("PYTHONSTARTUP", None)
    return env


def ours_command(source: Path, verifier: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "tools.spec_convert", str(source), "--verifier", str(verifier), "-o", str(output), "--json"]


def upstream_command(python: Path, algorithm: str, source: Path, verifier: Path, output: Path) -> list[str]:
    return [str(python), "-m", "speculators", "convert", str(source), "--verifier", str(verifier), "--algorithm", algorithm, "--output-path", str(output)]


def upstream_python() -> Path | None:
    from libspec.validate.gates import gate_python

    return gate_python()


def measure_layout(name: str, scale: float, work: Path, python: Path | None, upstream_wanted: bool = True) -> dict:
    """Build one layout's source (reused when already built) and convert it with each converter."""
    source, verifier = build_source(name, scale, work / f"{name}@{scale:g}")
    row = {"layout": name, "published_as": convert_sources.LAYOUTS[name].published_as, "source_bytes": convert_sources.source_bytes(source)}
    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)
    row["ours"] = run_measured(ours_command(source, verifier, output), child_env()).to_dict()
    shutil.rmtree(output, ignore_errors=True)
    algorithm = UPSTREAM_ALGORITHM.get(convert_sources.LAYOUTS[name].kind)
    if algorithm is None:
        row["upstream"] = {"skipped": "not supported by upstream"}
    elif not upstream_wanted:
        row["upstream"] = {"skipped": "not run (--no-upstream)"}
    elif python is None:
        row["upstream"] = {"skipped": "upstream not installed (./just gates)"}
    else:
        row["upstream"] = run_measured(upstream_command(python, algorithm, source, verifier, output), child_env()).to_dict()
        shutil.rmtree(output, ignore_errors=True)
    return row


def import_floors(python: Path | None) -> dict:
    """Peak RSS of a child that only imports each converter."""
    floors = {"ours": run_measured([sys.executable, "-c", "import tools.spec_convert, libspec.convert.check"], child_env()).peak_rss_bytes}
    if python is not None:
        floors["upstream"] = run_measured([str(python), "-c", "import speculators.convert.entrypoints"], child_env()).peak_rss_bytes
    return floors


def _gb(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB"


def _cells(result: dict, source_bytes: int) -> list[str]:
    if "skipped" in result:
        return [result["skipped"], "", ""]
    if result["returncode"] != 0:
        last = result["output_tail"].strip().splitlines()[-1:] or ["?"]
        return [f"failed (exit {result['returncode']}): {last[0][:60]}", "", f"{result['wall_s']:.0f} s"]
    return [_gb(result["peak_rss_bytes"]), f"{result['peak_rss_bytes'] / source_bytes:.2f}", f"{result['wall_s']:.0f} s"]


def print_table(rows: list[dict], floors: dict, machine: str, scale: float) -> None:
    table = Table(title=f"spec-convert vs upstream converter: peak RSS / source bytes (scale {scale:g}; {machine})")
    for column in ("layout", "source", "ours peak", "ours ×src", "ours wall", "upstream peak", "upstream ×src", "upstream wall"):
        table.add_column(column, justify="left" if column == "layout" else "right")
    for row in rows:
        table.add_row(row["layout"], _gb(row["source_bytes"]), *_cells(row["ours"], row["source_bytes"]), *_cells(row["upstream"], row["source_bytes"]))
    stdout.print(table)
    stdout.print("import-only floor (peak RSS of a child that imports the converter): " + ", ".join(f"{k} {_gb(v)}" for k, v in floors.items()))


def machine_description() -> str:
    import torch

    from libspec.bench.measure import hardware_description

    load = os.getloadavg()[0]
    return f"{os.cpu_count()}-core {hardware_description(torch.device('cpu'))}, load average {load:.1f} at start"


def parse_scale(text: str) -> float:
    value = 1.0 if text == "full" else float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def build_parser():
    parser = make_parser("bench-convert", __doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--layouts", nargs="+", choices=sorted(convert_sources.LAYOUTS), default=list(convert_sources.LAYOUTS), metavar="LAYOUT", help=f"layouts to run (default: all: {', '.join(convert_sources.LAYOUTS)})")
    parser.add_argument("--scale", type=parse_scale, default=1.0, help="'full' (default) or a factor in (0, 1] for hidden size, vocabularies and intermediate size")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "spec-tools" / "bench-convert", help="where sources are built (and reused) and outputs written (default: %(default)s)")
    parser.add_argument("--no-upstream", action="store_true", help="run only spec-convert")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    python = None if args.no_upstream else upstream_python()
    machine = machine_description()
    floors = import_floors(python)
    rows = [measure_layout(name, args.scale, args.work, python, not args.no_upstream) for name in args.layouts]
    if args.json:
        print_json({"machine": machine, "scale": args.scale, "import_floor_bytes": floors, "layouts": rows})
    else:
        print_table(rows, floors, machine, args.scale)
    return EXIT_OK


if __name__ == "__main__":
    run(main)
