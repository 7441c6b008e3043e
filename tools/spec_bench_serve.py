"""spec-bench serve: an OpenAI-compatible server over the offline engine, for GuideLLM and friends."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Sequence

import torch
from rich.logging import RichHandler

from libspec.bench.server import ENGINE_NOTE, ServerConfig, ServerLimits, load_engine, make_server
from tools._cli import EXIT_OK, add_options, make_parser, options_from_args, print_json, stderr

DESCRIPTION = f"""\
Serve a verifier, alone or with a speculator at a fixed k, over an OpenAI-compatible HTTP API on
loopback, so that online benchmarks (GuideLLM, `spec-bench online`) can load our engine like a
`vllm serve` endpoint:

  GET  /health, /v1/models, /metrics (vLLM's vllm:spec_decode_* counters when speculating)
  POST /v1/completions, /v1/chat/completions (stream: true for Server-Sent Events, one chunk per
       verification round)

The engine is the {ENGINE_NOTE}. Sampling supports temperature (default 1.0, as OpenAI and vLLM;
0 for greedy, else 0.01 to 2) and seed (a 64-bit signed integer); requests asking for anything
else (top_p, stop strings, n > 1, ...) get a 400 naming the field. Every refusal is an OpenAI
error document: 400 bad JSON or field, 408 body too slow, 413 body too large, 503 queue full.
Runs on uvicorn until interrupted (Ctrl-C)."""

EPILOG = """\
examples:
  spec-bench serve --verifier V --port 8001                              the baseline
  spec-bench serve --verifier V --speculator out/best --k 3 --port 8002  speculative decoding
  spec-bench online --baseline http://127.0.0.1:8001 --speculative http://127.0.0.1:8002"""


def build_parser():
    parser = make_parser("spec-bench serve", DESCRIPTION, EPILOG)
    parser.add_argument("--verifier", required=True, help="verifier folder or cached Hub id")
    parser.add_argument("--speculator", help="speculator checkpoint folder (omit to serve the verifier alone)")
    parser.add_argument("--k", type=int, help="drafted tokens per step (default: the checkpoint's speculative_tokens)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--served-model-name", help="model id in the API (default: the --verifier argument, as vLLM)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    add_options(parser.add_argument_group("limits"), ServerLimits)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k is not None and not args.speculator:
        parser.error("--k needs --speculator")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", handlers=[RichHandler(console=stderr, show_path=False)])
    limits = options_from_args(ServerLimits, args)
    config = ServerConfig(args.verifier, args.speculator, args.k, args.host, args.port, args.served_model_name, args.device, args.dtype, limits)
    with stderr.status("loading the model"):
        engine = load_engine(config)
    server = make_server(engine, config.host, config.port, config.limits)
    ready = {"url": server.url, "model": engine.model_name, "speculator": config.speculator, "k": engine.k, "engine": ENGINE_NOTE, "limits": asdict(limits)}
    if args.json:
        print_json(ready)  # one document a script can wait for, then the server runs
    else:
        what = f"with {config.speculator}, k={engine.k}" if config.speculator else "verifier alone"
        stderr.print(f"serving [bold]{engine.model_name}[/] ({what}) on {server.url}  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the normal way to stop a server
        stderr.print("stopped")
    finally:
        server.server_close()
        engine.close()
    return EXIT_OK
