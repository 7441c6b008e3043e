"""Bursts of concurrent requests, good and bad, against a real `spec-bench serve` process.

Every request must get an HTTP answer: 200, or an explicit refusal (4xx/5xx carrying OpenAI's
error document). A timeout, a reset connection or an error without that document is "no answer".
The server runs with a small queue so that bursts overflow it and 503s are exercised.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from libspec.errors import SpecError

REQUEST_TIMEOUT_S = 120.0
START_TIMEOUT_S = 300.0
MAX_QUEUE, MAX_BODY_BYTES, MAX_TOKENS = 8, 64 * 1024, 32
PROMPT = "Continue this Python code:\nimport os\n\ndef list_files(path):\n"

# (name, path, body): a fifth of each burst is one of the bad ones
GOOD = [
    ("completion", "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}),
    ("chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}),
    ("streamed", "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "stream": True, "temperature": 0.7, "seed": 3}),
]
BAD = [
    ("not JSON", "/v1/completions", b"{not json"),
    ("unsupported field", "/v1/completions", {"prompt": PROMPT, "top_p": 0.5}),
    ("max_tokens over the limit", "/v1/completions", {"prompt": PROMPT, "max_tokens": MAX_TOKENS + 1}),
    ("body over the limit", "/v1/completions", {"prompt": "x" * (MAX_BODY_BYTES + 1)}),
    ("no such route", "/v1/embeddings", {"input": "x"}),
]


@dataclass
class LoadResult:
    """Counts over every request sent, by how it was answered."""

    answered: int = 0  # 200
    refused: int = 0  # an explicit 4xx/5xx with an OpenAI error document
    no_answer: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # the first few no-answers, for the report
    healthy_after: bool = False


def load_trial(verifier: Path, speculator: Path, folder: Path, bursts: int, burst_size: int) -> LoadResult:
    """Start the server, send `bursts` bursts of `burst_size` concurrent requests, check it still answers."""
    folder.mkdir(parents=True, exist_ok=True)
    server, port = _start_server(verifier, speculator, folder / "server.log")
    result, lock = LoadResult(), threading.Lock()
    try:
        for burst in range(bursts):
            requests = [_request(burst * burst_size + i) for i in range(burst_size)]
            with ThreadPoolExecutor(max_workers=burst_size) as pool:
                for name, outcome in zip((r[0] for r in requests), pool.map(lambda r: _send(port, r[1], r[2]), requests)):
                    with lock:
                        _count(result, name, outcome)
        result.healthy_after = _send(port, "/health", None, method="GET")[0] == 200
    finally:
        _stop_server(server)
    return result


def _request(number: int) -> tuple[str, str, bytes]:
    name, path, body = BAD[number // 5 % len(BAD)] if number % 5 == 4 else GOOD[number % len(GOOD)]
    return name, path, body if isinstance(body, bytes) else json.dumps(body).encode()


def _send(port: int, path: str, body: bytes | None, method: str = "POST") -> tuple[int | None, str]:
    """(status, "") for an HTTP answer, counting only an error document as an answer for statuses >= 400; (None, why) otherwise."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        payload = response.read()
        if response.status >= 400 and not _is_error_document(payload):
            return None, f"{response.status} without an error document: {payload[:80]!r}"
        return response.status, ""
    except (OSError, http.client.HTTPException) as error:
        return None, f"{type(error).__name__}: {error}"
    finally:
        connection.close()


def _is_error_document(payload: bytes) -> bool:
    try:
        return isinstance(json.loads(payload).get("error"), dict)
    except (ValueError, AttributeError):
        return False


def _count(result: LoadResult, name: str, outcome: tuple[int | None, str]) -> None:
    status, why = outcome
    result.statuses[str(status)] += 1
    if status is None:
        result.no_answer += 1
        if len(result.failures) < 5:
            result.failures.append(f"{name}: {why}")
    elif status == 200:
        result.answered += 1
    else:
        result.refused += 1


def _start_server(verifier: Path, speculator: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """`python -m tools.spec_bench serve` on a free port, small limits; returns it once it prints its ready document."""
    command = [sys.executable, "-m", "tools.spec_bench", "serve", "--verifier", str(verifier), "--speculator", str(speculator),
               "--port", "0", "--json", "--quiet", "--max-queue", str(MAX_QUEUE), "--max-body-bytes", str(MAX_BODY_BYTES),
               "--max-tokens-per-request", str(MAX_TOKENS), "--body-timeout-s", "5"]  # fmt: skip
    with open(log, "wb") as errors:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
    text, deadline = "", time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = server.stdout.readline().decode()
        if not line:
            break
        text += line
        try:
            return server, int(json.loads(text)["url"].rsplit(":", 1)[1])
        except ValueError:
            continue
    _stop_server(server)
    raise SpecError(f"spec-bench serve did not start; see {log}")


def _stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # how a person stops it: Ctrl-C
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
    server.stdout.close()
