"""spec-gen-hidden's stage: inputs and chat templates in, verifier hidden states out."""
