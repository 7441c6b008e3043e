"""Does HASS help EAGLE-1 on the tiny test verifier? tau in the real drafting loop, per variant and seed.

    PYTHONPATH=. python tests/measure_eagle_hass.py WORK_DIR [--seeds 0,1,2] [--epochs 8]

Trains EAGLE-1 exactly as tests/test_eagle_train.py does (same verifier, records and settings), once
plain and with each HASS option (--hass-topk 10, --hass-align-steps 3, both), and EAGLE-3 (aux
layers 1-3, 3 TTT steps) without and with --hass-topk 10, for every seed, then
measures tau = 1 + accepted / rounds on the test's 10 held-out prompts (k = 3, 24 new tokens,
greedy), next to the best checkpoint's validation tau_sim. Prints one JSON line per run and one per variant with the mean over seeds. Runs already
in WORK_DIR are reused. A measurement, not a test: the real-model comparison is spec-bench's job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_eagle_train import WIDER, eagle_config, tau  # noqa: E402
from verifier_data import greedy_records, load_verifier, make_dataset, make_verifier  # noqa: E402

from libspec.algorithms import load_proposer  # noqa: E402
from libspec.train.loop import train  # noqa: E402

VARIANTS = {
    "eagle1": {},
    "hass-topk": {"hass_topk": 10},
    "hass-align": {"hass_align_steps": 3},
    "hass-both": {"hass_topk": 10, "hass_align_steps": 3},
    # EAGLE-3 on the same records (aux layers 1-3), without and with HASS's top-K loss (its TTT is HASS's alignment)
    "eagle3": {"algorithm": "eagle3", "aux_layer_ids": [1, 2, 3], "ttt_steps": 3},
    "eagle3-hass-topk": {"algorithm": "eagle3", "aux_layer_ids": [1, 2, 3], "ttt_steps": 3, "hass_topk": 10},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    verifier_dir = args.work / "verifier"
    if not (verifier_dir / "model.safetensors").is_file():
        make_verifier(verifier_dir, WIDER, head_scale=2.0)
    model = load_verifier(verifier_dir)
    data = args.work / "data"
    if not (data / "manifest.json").is_file():
        make_dataset(verifier_dir, data, greedy_records(model, 120, new_tokens=24), layer_ids=[1, 2, 3, 4])
    setup = (model, verifier_dir, data)
    prompts = [record["input_ids"][:4] for record in greedy_records(model, 10, seed=99, new_tokens=0)]
    for name, changes in VARIANTS.items():
        taus, sims = [], []
        for seed in map(int, args.seeds.split(",")):
            out = args.work / f"{name}-seed{seed}-epochs{args.epochs}"
            started = time.perf_counter()
            if not (out / "best").exists():
                train(eagle_config(setup, out, seed=seed, epochs=args.epochs, **changes))
            taus.append(tau(model, load_proposer(out / "best", model), prompts)[0])
            sims.append(json.loads((out / "best.json").read_text())["value"])  # the best checkpoint's validation tau_sim
            print(json.dumps({"variant": name, "seed": seed, "tau": round(taus[-1], 4), "val_tau_sim": round(sims[-1], 4),
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)  # fmt: skip
        print(json.dumps({"variant": name, "options": changes, "epochs": args.epochs, "mean_tau": round(sum(taus) / len(taus), 4),
                          "mean_val_tau_sim": round(sum(sims) / len(sims), 4), "taus": [round(t, 4) for t in taus]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
