"""The built-in small verifier and the corpus it is trained on: fast, offline material for tests and the toy demo."""
