"""Front doors of the spec-* executables: argument parsing and printing only; the work is in libspec."""
