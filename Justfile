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

# build (or find in the cache) the built-in small verifier; prints its folder
verifier *ARGS:
    python -m tools.build_verifier --preset full {{ARGS}}
