"""spec-validate's stage: checks of every artifact, and the interop gates (vLLM's and upstream's own loaders)."""
