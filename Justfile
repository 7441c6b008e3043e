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

# Upstream runs in $SPEC_UPSTREAM_PYTHON (a venv with speculators 0.9.0); without it only our side runs.
# spec-train vs upstream speculators' EAGLE-3 trainer: tokens/s, peak memory, held-out tau
bench-train *ARGS:
    python -m tools.bench_train {{ARGS}}
