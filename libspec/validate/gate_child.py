"""The far end of `GateSession`: `python -m libspec.validate.gate_child`, run inside the gate venv.

Reads one JSON request per line on stdin, `{"paths": [...], "gates": [...]}`, and answers each with
one JSON line, `{"reports": [...]}` (path by path, gate by gate) or `{"error": "..."}`. Whatever
vLLM or transformers print goes to stderr: stdout carries only the answers.
"""

from __future__ import annotations

import json
import os
import sys

from libspec.errors import SpecError


def serve(requests, answers) -> None:
    """Answer each request line until stdin closes."""
    from libspec.validate.gates import run_gate_here

    for line in requests:
        request = json.loads(line)
        try:
            reports = [run_gate_here(gate, path).to_dict() for path in request["paths"] for gate in request["gates"]]
            answer = {"reports": reports}
        except SpecError as error:
            answer = {"error": str(error)}
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()


def main() -> int:
    # Keep the real stdout for answers and send everything else that writes to fd 1 to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
