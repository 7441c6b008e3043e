# spec-tools recipes. Run them through ./just, which installs everything on first use.

# Torch spins its OpenMP threads by default; on a shared 2-core machine a busy second core
# then slows everything about 5x. Passive waiting costs nothing when the machine is idle.
export OMP_WAIT_POLICY := env_var_or_default("OMP_WAIT_POLICY", "PASSIVE")
export TOKENIZERS_PARALLELISM := env_var_or_default("TOKENIZERS_PARALLELISM", "false")

# list the recipes
default:
    @just --list

# run the test suite (what CI runs)
test *ARGS: online-extra
    python -m pytest -q {{ARGS}}

# GuideLLM for the online-mode test, an optional extra: installed once into the venv (~40 s,
# ~340 MB), then a no-op. Outside a virtual environment (just called without ./just) it installs
# nothing and that test skips.
online-extra:
    @python -c "import importlib.util as u, sys; venv = sys.prefix != sys.base_prefix; \
        venv or print('online-extra: not in a virtual environment (use ./just); not installing guidellm', file=sys.stderr); \
        sys.exit(venv and u.find_spec('guidellm') is None)" \
        || python -m pip install --quiet --disable-pip-version-check -e '.[online]'

# rewrite formats/examples from the current code (after a format change)
format-examples:
    python tests/format_examples.py formats/examples

# the main job, end to end (grows with the pipeline: verifier -> gen-hidden -> train -> bench)
demo:
    spec-validate formats/examples/dataset formats/examples/stream.spst formats/examples/checkpoint-eagle3
