# spec-tools recipes. Run them through ./just, which installs everything on first use.

# Torch spins its OpenMP threads by default; on a shared 2-core machine a busy second core
# then slows everything about 5x. Passive waiting costs nothing when the machine is idle.
export OMP_WAIT_POLICY := env_var_or_default("OMP_WAIT_POLICY", "PASSIVE")
export TOKENIZERS_PARALLELISM := env_var_or_default("TOKENIZERS_PARALLELISM", "false")

# list the recipes
default:
    @just --list

# run the test suite (what CI runs)
test *ARGS:
    python -m pytest -q {{ARGS}}

# rewrite formats/examples from the current code (after a format change)
format-examples:
    python tests/format_examples.py formats/examples

# the main job, end to end (grows with the pipeline: verifier -> gen-hidden -> train -> bench)
demo:
    spec-validate formats/examples/dataset formats/examples/stream.spst formats/examples/checkpoint-eagle3

# spec-gen-hidden time per token vs a bare verifier forward, and bytes per token on disk
bench-gen *ARGS:
    python -m tools.bench_gen_hidden {{ARGS}}

# training conversations cut from the built-in verifier's training files (stdlib sources)
conversations OUT="out/conversations.jsonl" *ARGS:
    python -m tools.corpus_conversations -o {{OUT}} {{ARGS}}
