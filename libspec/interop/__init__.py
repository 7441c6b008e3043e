"""Interop gates: run the code of the programs that consume our checkpoints on them, on CPU.

- `vllm`: vLLM's speculators parser, SpeculativeConfig and draft weight loader (`vllm_gate`).
- `upstream`: upstream `speculators` loading the folder, compared tensor by tensor (`upstream_gate`).

Both need packages that do not fit the main environment (vLLM's wheel pins a CUDA torch and
transformers < 5.21, upstream pins transformers <= 5.19), so `./just gates` installs them into
their own venv, `.venv-gates`. A gate runs in this process when its package imports here, and
otherwise in a child process of that venv (`gates.GateSession`), which keeps running between calls so
that vLLM's ~15 s import is paid once.
"""
