"""Online benchmark: GuideLLM against a baseline and a speculative OpenAI-compatible endpoint, side by side.

Both endpoints get the same workload at the same load levels, one after the other (baseline
first), through GuideLLM run as a subprocess (`guidellm run -c SCENARIO.json`); its JSON output is
reduced to latency and throughput figures per load level. Acceptance comes from the servers
themselves: vLLM's spec-decode counters at `/metrics`, scraped before and after each endpoint's
runs and diffed (libspec/bench/metrics_page.py), which is what `vllm bench serve` does. A sweep
runs GuideLLM's own sweep on the baseline (synchronous, throughput, then constant rates between)
and replays exactly those rates on the speculative endpoint, so every row compares equal offered
load. Figures are derived from the stored summaries by `derive_row`; impossible ones are flagged.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import libspec
from libspec.bench import metrics_page as sdm
from libspec.format.atomic import write_text_atomic
from libspec.format.json_files import read_json_object
from libspec.errors import SpecError
from libspec.bench.prompts import load_prompt_set

MIN_GUIDELLM = (0, 7)  # the `guidellm run` CLI and scenario format arrived in 0.7.0
MIN_REQUESTS_FOR_STABLE_FIGURES = 10
LOAD_KINDS = ("sweep", "concurrent", "constant", "poisson", "synchronous")
INSTALL_HINT = "pip install 'spec-tools[online]' (or install guidellm>=0.8 anywhere and pass --guidellm PATH)"


@dataclass(frozen=True)
class OnlineSettings:
    """One online comparison: endpoints, workload and load; recorded in the report."""

    baseline_url: str
    speculative_url: str
    load: str = "sweep"  # one of LOAD_KINDS
    levels: tuple[float, ...] = ()  # streams (concurrent) or requests/s (constant, poisson)
    sweep_size: int = 6  # sweep: synchronous + throughput + sweep_size-2 rates
    max_seconds: float | None = 30.0  # per load level
    max_requests: int | None = None  # per load level
    prompts: str | None = None  # a JSONL prompt set (prompt / messages); None = synthetic text
    prompt_tokens: int = 256  # synthetic prompts
    output_tokens: int = 128  # generated per request (GuideLLM then sends ignore_eos)
    request_format: str = "chat"  # chat | completions
    temperature: float | None = None  # None = each server's default
    model: str | None = None  # None = each endpoint's first model in /v1/models
    tokenizer: str | None = None  # for synthetic data; None = the baseline's /v1/models root
    guidellm: str | None = None  # the guidellm executable; None = beside python, then PATH


# ---------------------------------------------------------------------------------------------
# Talking to the endpoints


def http_get(url: str, timeout_s: float = 10.0) -> str:
    """The body of a GET; SpecError naming the URL when it fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        raise SpecError(f"GET {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SpecError(f"GET {url}: cannot connect ({reason})") from None


def probe_endpoint(url: str, model: str | None) -> dict:
    """Check an OpenAI-compatible endpoint answers; its model id and root (what it serves)."""
    url = url.rstrip("/").removesuffix("/v1")
    http_get(f"{url}/health")
    try:
        cards = json.loads(http_get(f"{url}/v1/models"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise SpecError(f"GET {url}/v1/models: expected an OpenAI model list") from None
    if not cards:
        raise SpecError(f"GET {url}/v1/models: the server lists no model")
    ids = [card.get("id") for card in cards]
    if model is not None and model not in ids:
        raise SpecError(f"{url} does not serve model {model!r} (it serves {', '.join(map(str, ids))})")
    card = cards[ids.index(model)] if model is not None else cards[0]
    return {"url": url, "model": card.get("id"), "root": card.get("root"), "card": card}


def scrape_counters(url: str) -> tuple[sdm.SpecDecodeCounters | None, str | None]:
    """The endpoint's spec-decode counters (None when it shows none) and why they are missing."""
    try:
        page = http_get(f"{url}/metrics")
    except SpecError as error:
        return None, str(error)
    counters = sdm.parse_counters(page)
    return counters, None if counters is not None else f"{url}/metrics shows no vllm:spec_decode_* counters"


# ---------------------------------------------------------------------------------------------
# Running GuideLLM


def find_guidellm(command: str | None = None) -> tuple[str, str]:
    """The guidellm executable and its version; SpecError with the install hint when there is none."""
    if command:
        path = shutil.which(command)
    else:
        beside = Path(sys.executable).parent / "guidellm"
        path = str(beside) if beside.is_file() else shutil.which("guidellm")
    if not path:
        raise SpecError(f"guidellm {'not found: ' + command if command else 'is not installed'}; {INSTALL_HINT}")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
    except OSError as error:
        raise SpecError(f"{path}: cannot run ({error}); {INSTALL_HINT}") from None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if out.returncode != 0 or not match:
        raise SpecError(f"{path} --version failed (exit {out.returncode}); {INSTALL_HINT}")
    version = match.group(0)
    if (int(match[1]), int(match[2])) < MIN_GUIDELLM:
        raise SpecError(f"{path} is guidellm {version}; spec-bench needs >= {'.'.join(map(str, MIN_GUIDELLM))} (`guidellm run`)")
    return path, version


def profile_steps(settings: OnlineSettings) -> list[tuple[dict, list[dict]]]:
    """GuideLLM (profile, per-benchmark overrides) steps for the configured load (not the sweep replay)."""
    if settings.load == "sweep":
        return [({"kind": "sweep", "sweep_size": settings.sweep_size}, [])]
    if settings.load == "synchronous":
        return [({"kind": "synchronous"}, [])]
    if not settings.levels:
        raise SpecError(f"load {settings.load}: give at least one level")
    if settings.load == "concurrent":
        return [({"kind": "concurrent"}, [{"profile.streams": int(s)} for s in settings.levels])]
    return [({"kind": settings.load}, [{"profile.rate": float(r)} for r in settings.levels])]


def replay_steps(baseline_rows: list[dict]) -> list[tuple[dict, list[dict]]]:
    """Steps that give the speculative endpoint exactly the load levels the baseline's sweep ran."""
    steps: list[tuple[dict, list[dict]]] = []
    for kind in ("synchronous", "throughput", "constant", "poisson"):
        levels = [row["strategy"] for row in baseline_rows if row["strategy"]["type"] == kind]
        if not levels:
            continue
        profile = {"kind": kind} | ({"max_concurrency": levels[0]["max_concurrency"]} if "max_concurrency" in levels[0] else {})
        steps.append((profile, [{"profile.rate": level["rate"]} for level in levels if "rate" in level]))
    return steps


def scenario(settings: OnlineSettings, endpoint: dict, profile: dict, overrides: list[dict], data: dict, tokenizer: str | None, output: Path) -> dict:
    """A GuideLLM scenario document (`guidellm run -c`): backend, profile, constraints, data, output."""
    backend = {
        "kind": "openai_http",
        "target": endpoint["url"],
        "model": endpoint["model"],
        "request_format": "/v1/chat/completions" if settings.request_format == "chat" else "/v1/completions",
    }
    if settings.temperature is not None:
        backend["extras"] = {"body": {"temperature": settings.temperature}}
    constraints = []
    if settings.max_seconds:
        constraints.append({"kind": "max_duration", "seconds": settings.max_seconds})
    if settings.max_requests:
        constraints.append({"kind": "max_requests", "count": settings.max_requests})
    spec = {"backend": backend, "profile": profile, "constraints": constraints, "data": [data], "outputs": [{"kind": "json", "path": str(output)}]}
    if tokenizer:
        spec["tokenizer"] = {"kind": "huggingface_auto", "model": tokenizer}
    document = {"spec": spec}
    if overrides:
        document["benchmarks"] = overrides
    return document


def run_guidellm(executable: str, document: dict, workdir: Path, name: str) -> dict:
    """Run one GuideLLM scenario; its JSON report. The console log stays in workdir/NAME.log."""
    scenario_path, log_path = workdir / f"{name}.scenario.json", workdir / f"{name}.log"
    output = Path(document["spec"]["outputs"][0]["path"])
    write_text_atomic(scenario_path, json.dumps(document, indent=2) + "\n")
    with open(log_path, "w") as log:
        status = subprocess.run([executable, "run", "-c", str(scenario_path), "--disable-console-interactive"], stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0 or not output.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-12:]
        detail = " | ".join(line.strip() for line in tail if line.strip())
        raise SpecError(f"guidellm run failed for {document['spec']['backend']['target']} (exit {status}; log {log_path}): {detail}")
    return read_json_object(output, expected="a guidellm report (a JSON object)")


# ---------------------------------------------------------------------------------------------
# Reducing GuideLLM's report


def _distribution(metrics: dict, name: str, scope: str = "successful") -> dict:
    values = (metrics.get(name) or {}).get(scope) or {}
    percentiles = values.get("percentiles") or {}
    return {"median": values.get("median"), "p90": percentiles.get("p90"), "p99": percentiles.get("p99"), "mean": values.get("mean"), "count": values.get("count")}


def strategy_of(benchmark: dict) -> dict:
    """A load level as {type, rate | streams, max_concurrency}: the key that pairs baseline and speculative rows."""
    strategy = benchmark["config"]["strategy"]
    kind = strategy["type_"]
    key = {"type": kind}
    if kind in ("constant", "poisson"):
        key["rate"] = float(strategy["rate"])
    elif kind == "concurrent":
        key["streams"] = int(strategy["streams"])
    if kind in ("throughput", "constant", "poisson") and strategy.get("max_concurrency") is not None:
        key["max_concurrency"] = int(strategy["max_concurrency"])  # a sweep's cap, replayed as is
    return key


def strategy_label(strategy: dict) -> str:
    """A load level in words: `concurrency 4`, `2.5 req/s`, `synchronous`."""
    if "rate" in strategy:
        return f"{strategy['rate']:.3g} req/s" + (" (poisson)" if strategy["type"] == "poisson" else "")
    if "streams" in strategy:
        return f"concurrency {strategy['streams']}"
    return strategy["type"]


def summarize(benchmark: dict) -> dict:
    """What one GuideLLM benchmark (one load level) measured, as the report keeps it."""
    metrics = benchmark["metrics"]
    totals = metrics.get("request_totals") or {}
    return {
        "requests": {key: totals.get(key, 0) for key in ("successful", "errored", "incomplete")},
        "duration_s": benchmark.get("duration"),
        "request_rate": _distribution(metrics, "requests_per_second")["mean"],
        "concurrency": _distribution(metrics, "request_concurrency")["mean"],
        "output_tokens_per_s": _distribution(metrics, "output_tokens_per_second")["mean"],
        "output_tokens_per_request": _distribution(metrics, "output_token_count")["mean"],
        "tokens_per_chunk": _distribution(metrics, "iter_tokens_per_iteration")["mean"],
        "itl_ms": _distribution(metrics, "inter_token_latency_ms"),
        "ttft_ms": _distribution(metrics, "time_to_first_token_ms"),
        "tpot_ms": _distribution(metrics, "time_per_output_token_ms"),
        "request_latency_s": _distribution(metrics, "request_latency"),
    }


def rows_of(report: dict) -> list[dict]:
    """One {strategy, summary} per benchmark of a GuideLLM JSON report."""
    if not isinstance(report.get("benchmarks"), list):
        raise SpecError("guidellm report: no 'benchmarks' list (an unsupported guidellm version?)")
    return [{"strategy": strategy_of(b), "summary": summarize(b)} for b in report["benchmarks"]]


# ---------------------------------------------------------------------------------------------
# Comparing


def _ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def derive_row(strategy: dict, baseline: dict | None, speculative: dict | None, acceptance: dict | None) -> dict:
    """Speedups of one load level (latency: baseline / speculative; throughput: speculative / baseline) and its flags."""
    b, s = baseline or {}, speculative or {}
    speedup = {
        "itl_median": _ratio((b.get("itl_ms") or {}).get("median"), (s.get("itl_ms") or {}).get("median")),
        "itl_p90": _ratio((b.get("itl_ms") or {}).get("p90"), (s.get("itl_ms") or {}).get("p90")),
        "ttft_median": _ratio((b.get("ttft_ms") or {}).get("median"), (s.get("ttft_ms") or {}).get("median")),
        "tpot_median": _ratio((b.get("tpot_ms") or {}).get("median"), (s.get("tpot_ms") or {}).get("median")),
        "output_tokens_per_s": _ratio(s.get("output_tokens_per_s"), b.get("output_tokens_per_s")),
    }
    flags = []
    for name, summary in (("baseline", baseline), ("speculative", speculative)):
        if summary is None:
            flags.append(f"no {name} measurement at this load level")
            continue
        requests = summary["requests"]
        failed = requests["errored"] + requests["incomplete"]
        if failed:
            flags.append(f"{name}: {failed} of {failed + requests['successful']} requests failed or were cut off")
        if requests["successful"] < MIN_REQUESTS_FOR_STABLE_FIGURES:
            flags.append(f"{name}: only {requests['successful']} successful requests: too few for stable figures")
    # One request at a time, a verification step costs at least one decoding step, so ITL cannot
    # improve by more than τ. Under load a batching server's steps slow down with its queue, and
    # the bound no longer holds; there we do not check it.
    tau = (acceptance or {}).get("tau")
    one_at_a_time = strategy.get("type") == "synchronous" or strategy.get("streams") == 1
    if one_at_a_time and tau is not None and speedup["itl_median"] is not None and speedup["itl_median"] > tau * 1.05:
        flags.append(
            f"ITL speedup {speedup['itl_median']:.2f} > τ {tau:.2f} one request at a time: impossible for the same model on the "
            "same hardware (a verification step costs at least one decoding step); the endpoints differ"
        )  # fmt: skip
    out_b, out_s = b.get("output_tokens_per_request"), s.get("output_tokens_per_request")
    if out_b and out_s and abs(out_b - out_s) > 0.1 * max(out_b, out_s):
        flags.append(f"output tokens per request differ ({out_b:.0f} vs {out_s:.0f}): the workloads are not the same")
    return {"speedup": speedup, "flags": flags}


def endpoint_flags(role: str, spec_decode: dict) -> list[str]:
    """Why an endpoint's acceptance figures cannot be trusted (or a baseline that is not one)."""
    flags = []
    delta, acceptance = spec_decode.get("delta"), spec_decode.get("acceptance") or {}
    drafts = delta["num_drafts"] if delta else 0
    if role == "speculative":
        if spec_decode.get("missing"):
            flags.append(f"acceptance unknown: {spec_decode['missing']}")
        elif not drafts:
            flags.append("acceptance unknown: no verification step was counted during the run (is /metrics from this server?)")
    elif drafts:
        flags.append(f"the baseline endpoint speculates ({drafts:.0f} verification steps counted): it is not a baseline")
    k, tau = acceptance.get("k"), acceptance.get("tau")
    if tau is not None and k and tau > k + 1 + 1e-9:
        flags.append(f"{role}: τ {tau:.2f} > k+1 = {k + 1}: impossible; the counters are miscounted")
    rates = [r for r in acceptance.get("per_position_acceptance") or [] if r is not None]
    if (acceptance.get("acceptance_rate") or 0) > 1 or any(r > 1 for r in rates):
        flags.append(f"{role}: acceptance above 1: impossible; the counters are miscounted")
    if any(later > earlier + 1e-9 for earlier, later in zip(rates, rates[1:])):
        flags.append(f"{role}: per-position acceptance rises with position: impossible for chain drafts")
    return flags


def _spec_decode(before, after, missing) -> dict:
    if before is None or after is None:
        return {"before": None, "after": None, "delta": None, "acceptance": None, "missing": missing or "counters appeared or vanished during the run"}
    delta = after.minus(before)
    return {"before": before.to_dict(), "after": after.to_dict(), "delta": delta.to_dict(), "acceptance": sdm.acceptance(delta), "missing": None}


# ---------------------------------------------------------------------------------------------
# The whole comparison


def _data_source(settings: OnlineSettings, workdir: Path) -> dict:
    """GuideLLM's data config: synthetic text, or our prompt set with the output length on every row."""
    if settings.prompts is None:
        return {"kind": "synthetic_text", "prompt_tokens": settings.prompt_tokens, "output_tokens": settings.output_tokens}
    prompt_set = load_prompt_set(settings.prompts)  # checks the file; GuideLLM reads `prompt` / `messages` itself
    if settings.request_format == "completions" and any("prompt" not in item for item in prompt_set.items):
        raise SpecError(f"{settings.prompts}: /v1/completions needs a 'prompt' on every line (some have only 'messages'); use --request-format chat")
    rows = [{**item, "output_tokens_count": settings.output_tokens} for item in prompt_set.items]
    path = workdir / "prompts.jsonl"
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
    return {"kind": "json_file", "path": str(path)}


def _run_endpoint(role, endpoint, steps, settings, executable, data, tokenizer, workdir, progress) -> tuple[list[dict], dict, list[dict]]:
    before, missing_before = scrape_counters(endpoint["url"])
    rows, runs = [], []
    for index, (profile, overrides) in enumerate(steps):
        name = f"{role}-{index}"
        progress(f"guidellm: {role} endpoint, {profile['kind']} ({index + 1}/{len(steps)})")
        document = scenario(settings, endpoint, profile, overrides, data, tokenizer, workdir / f"{name}.json")
        rows += rows_of(run_guidellm(executable, document, workdir, name))
        runs.append({"name": name, "scenario": document})
    after, missing_after = scrape_counters(endpoint["url"])
    return rows, _spec_decode(before, after, missing_before or missing_after), runs


def run_online_bench(settings: OnlineSettings, workdir: str | Path | None = None, command: str = "", progress: Callable[[str], None] = lambda message: None) -> dict:
    """Benchmark both endpoints with GuideLLM and return the side-by-side report (SPEC.md §15).

    `workdir` keeps GuideLLM's scenarios, logs and raw JSON reports; None uses a temporary folder.
    """
    if settings.load not in LOAD_KINDS:
        raise SpecError(f"unknown load {settings.load!r}; expected one of {', '.join(LOAD_KINDS)}")
    if settings.request_format not in ("chat", "completions"):
        raise SpecError(f"request format {settings.request_format!r}: expected chat or completions")
    executable, version = find_guidellm(settings.guidellm)
    baseline = probe_endpoint(settings.baseline_url, settings.model)
    speculative = probe_endpoint(settings.speculative_url, settings.model)
    tokenizer = settings.tokenizer or (baseline["root"] if baseline["root"] and Path(baseline["root"]).is_dir() else None)
    if settings.prompts is None and tokenizer is None:
        raise SpecError("synthetic prompts need a tokenizer: pass --tokenizer DIR (the verifier's folder)")
    with tempfile.TemporaryDirectory(prefix="spec-bench-online-") as scratch:
        folder = Path(workdir) if workdir else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        data = _data_source(settings, folder)
        base_rows, base_spec, base_runs = _run_endpoint("baseline", baseline, profile_steps(settings), settings, executable, data, tokenizer, folder, progress)
        steps = replay_steps(base_rows) if settings.load == "sweep" else profile_steps(settings)
        spec_rows, spec_spec, spec_runs = _run_endpoint("speculative", speculative, steps, settings, executable, data, tokenizer, folder, progress)

    rows = _pair(base_rows, spec_rows, spec_spec["acceptance"])
    flags = endpoint_flags("baseline", base_spec) + endpoint_flags("speculative", spec_spec)
    if baseline["root"] and speculative["root"] and baseline["root"] != speculative["root"]:
        flags.append(f"the endpoints serve different models ({baseline['root']} vs {speculative['root']})")
    return {
        "format": "spec-tools/online-bench-report",
        "format_version": libspec.FORMAT_VERSION,
        "created_by": {"tool": "spec-bench online", "version": libspec.__version__},
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "guidellm_version": version,
        "settings": {**asdict(settings), "levels": list(settings.levels), "tokenizer": tokenizer},
        "endpoints": {
            "baseline": {**_public(baseline), "spec_decode": base_spec, "guidellm_runs": base_runs},
            "speculative": {**_public(speculative), "spec_decode": spec_spec, "guidellm_runs": spec_runs},
        },
        "rows": rows,
        "flags": flags,
    }


def _public(endpoint: dict) -> dict:
    return {"url": endpoint["url"], "model": endpoint["model"], "root": endpoint["root"]}


def _pair(base_rows: list[dict], spec_rows: list[dict], acceptance: dict | None) -> list[dict]:
    """Rows keyed by load level, in the baseline's order, then any level only the speculative side ran."""

    def key(row: dict) -> str:
        return json.dumps(row["strategy"], sort_keys=True)

    base, spec = {key(r): r["summary"] for r in base_rows}, {key(r): r["summary"] for r in spec_rows}
    rows = []
    for level in dict.fromkeys(key(r) for r in base_rows + spec_rows):
        strategy = json.loads(level)
        rows.append({"strategy": strategy, "label": strategy_label(strategy), "baseline": base.get(level), "speculative": spec.get(level),
                     **derive_row(strategy, base.get(level), spec.get(level), acceptance)})  # fmt: skip
    return rows
