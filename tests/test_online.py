"""Online mode: our OpenAI-compatible server over the offline engine, vLLM's /metrics counters, and
`spec-bench online` driving GuideLLM against two live servers (skipped without guidellm)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import TINY_LLAMA, random_checkpoint_tensors
from libspec.format import checkpoint as ckpt
from libspec.bench import metrics_page as sdm
from libspec.algorithms.eagle3 import config as eagle3
from libspec.bench.decoding import DecodingVerifier, autoregressive_generate, speculative_generate
from libspec.errors import SpecError
from libspec.verifier import eos_token_ids
from libspec.bench.online import OnlineSettings, _data_source, derive_row, endpoint_flags, find_guidellm, replay_steps
from libspec.bench.server import ServerConfig, TextStream, load_engine, make_server
from libspec.bench.prompts import encode_prompt

K = 3
PROMPTS = [{"prompt": "t4 t5 t6 t7"}, {"prompt": "t9 t8"}, {"messages": [{"role": "user", "content": "t5 t6 t7"}]}]


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny verifier + EAGLE-3 draft on disk, and two live servers (baseline, speculative)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A saved tiny verifier with a word-level tokenizer and chat template, and a random EAGLE-3 draft."""
    path = tmp_path_factory.mktemp("online")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")}))
    model.save_pretrained(path / "verifier")
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t63", pad_token="t0")
    fast.chat_template = "{% for m in messages %}t1 {{ m['content'] }} t2 {% endfor %}{% if add_generation_prompt %}t3{% endif %}"
    fast.save_pretrained(path / "verifier")
    verifier_config = json.loads((path / "verifier" / "config.json").read_text())
    config = eagle3.make_config(verifier_config, str(path / "verifier"), eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3)))
    ckpt.write_checkpoint(path / "draft", config, random_checkpoint_tensors(config))
    # More rows than any test requests: GuideLLM 0.8.1 can drop a request when its data and its
    # max_requests run out together (seen at concurrency 2: 12 created, 11 processed, 0 errored).
    (path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS * 8))
    return path


@pytest.fixture(scope="module")
def servers(tiny):
    """Two running servers on ephemeral loopback ports: {"baseline": server, "speculative": server}."""
    running = {}
    for role, speculator in (("baseline", None), ("speculative", str(tiny / "draft"))):
        engine = load_engine(ServerConfig(str(tiny / "verifier"), speculator, K if speculator else None, served_model_name="tiny"))
        server = make_server(engine, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running[role] = server
    yield running
    for server in running.values():
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_stream(url: str, body: dict) -> list:
    """The `data:` payloads of a Server-Sent Events response, parsed; "[DONE]" kept as a string."""
    request = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(), headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response:
            line = line.decode().strip()
            if line.startswith("data:"):
                payload = line[len("data:") :].strip()
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def offline(tiny, item: dict, speculative: bool, max_tokens: int, temperature: float = 0.0, seed: int | None = None, ignore_eos=False):
    """What the offline engine generates for a prompt item: (Generation, tokenizer, eos ids)."""
    from libspec.algorithms import load_proposer
    from libspec.verifier import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(tiny / "verifier"), torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(str(tiny / "verifier"))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    prompt = encode_prompt(tokenizer, item)
    eos = set() if ignore_eos else eos_token_ids(model, tokenizer)
    if not speculative:
        return autoregressive_generate(DecodingVerifier(model), prompt, max_tokens, eos, temperature, generator), tokenizer, eos
    proposer = load_proposer(str(tiny / "draft"), model)
    verifier = DecodingVerifier(model, proposer.aux_layer_ids)
    return speculative_generate(verifier, proposer, prompt, K, max_tokens, eos, temperature, generator), tokenizer, eos


def scrape(server) -> sdm.SpecDecodeCounters | None:
    return sdm.parse_counters(get(f"{server.url}/metrics")[2])


# ---------------------------------------------------------------------------------------------
# Pieces


def test_text_stream_never_releases_half_a_character():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))  # no merges: one token per byte
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_level)
    ids = tokenizer("aé€b", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 + 2 + 3 + 1  # one token per UTF-8 byte
    stream = TextStream(tokenizer)
    pieces = [stream.add([token]) for token in ids]
    assert pieces == ["a", "", "é", "", "", "€", "b"]
    assert stream.finish() == ""


VLLM_PAGE = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 5.0
vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7e+09
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 30.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 15.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 12.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="m"} 6.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 8.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 3.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 1.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="0"} 4.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="1"} 2.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="2"} 0.0
vllm:generation_tokens_total{engine="0",model_name="a \\"quoted\\", odd} name"} 99.0
"""


def test_vllm_metrics_page_is_read_summed_over_engines_and_diffed():
    counters = sdm.parse_counters(VLLM_PAGE)
    assert (counters.drafts, counters.draft_tokens, counters.accepted_tokens) == (15, 45, 18)
    assert counters.accepted_per_position == [12, 5, 1]
    assert sdm.parse_samples(VLLM_PAGE)[-1][1]["model_name"] == 'a "quoted", odd} name'
    later = sdm.SpecDecodeCounters(25, 75, 38, [22, 12, 4])
    figures = sdm.acceptance(later.minus(counters))  # 10 steps, 20 accepted: 10 at pos 0, 7 at pos 1, 3 at pos 2
    assert figures == {"k": 3, "tau": 3.0, "acceptance_rate": pytest.approx(20 / 30), "per_position_acceptance": [1.0, 0.7, 0.3]}
    assert sdm.parse_counters("vllm:generation_tokens_total 5\n") is None  # a server without a speculator


def test_our_counters_round_trip_through_the_page():
    counters = sdm.SpecDecodeCounters()
    for accepted in (0, 3, 1, 2):
        counters.observe(3, accepted)
    assert (counters.drafts, counters.draft_tokens, counters.accepted_tokens, counters.accepted_per_position) == (4, 12, 6, [3, 2, 1])
    page = sdm.render(sdm.spec_decode_metrics(counters, {"engine": "0", "model_name": "x"}))
    assert 'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="x",position="2"} 1.0' in page
    assert sdm.parse_counters(page) == counters


# ---------------------------------------------------------------------------------------------
# The server, endpoint by endpoint


def test_health_models_and_metrics(servers):
    base, spec = servers["baseline"], servers["speculative"]
    assert get(f"{base.url}/health")[0] == 200
    status, kind, body = get(f"{spec.url}/v1/models")
    card = json.loads(body)["data"][0]
    assert (status, card["id"], card["max_model_len"]) == (200, "tiny", TINY_LLAMA["max_position_embeddings"])
    assert card["spec_tools"]["num_speculative_tokens"] == K and "batch 1" in card["spec_tools"]["engine"]
    status, kind, page = get(f"{spec.url}/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert len(scrape(spec).accepted_per_position) == K  # every position shown from the start, as vLLM
    assert scrape(base) is None  # like vLLM: no spec-decode counters without a speculator
    assert "vllm:generation_tokens_total" in get(f"{base.url}/metrics")[2]


@pytest.mark.parametrize("role", ["baseline", "speculative"])
def test_completion_equals_the_offline_greedy_output(servers, tiny, role):
    item = PROMPTS[0]
    status, body = post(f"{servers[role].url}/v1/completions", {"model": "tiny", "prompt": item["prompt"], "max_tokens": 20, "temperature": 0})
    generation, tokenizer, eos = offline(tiny, item, role == "speculative", 20)
    assert status == 200 and body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["text"] == tokenizer.decode(generation.tokens, skip_special_tokens=True)
    assert body["usage"]["completion_tokens"] == len(generation.tokens)
    assert body["usage"]["prompt_tokens"] == len(encode_prompt(tokenizer, item))
    assert choice["finish_reason"] == ("stop" if generation.tokens[-1] in eos else "length")
    if role == "speculative":
        assert body["metrics"]["speculative_decoding"]["num_spec_steps"] == len(generation.accepted_per_round)


def test_streamed_chat_equals_offline_and_arrives_one_chunk_per_verification_round(servers, tiny):
    item = PROMPTS[2]
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "t5 t6 t7"}]}], "max_completion_tokens": 24,
            "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    events = post_stream(f"{servers['speculative'].url}/v1/chat/completions", body)
    generation, tokenizer, _ = offline(tiny, item, True, 24, ignore_eos=True)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"][0]["delta"] == {}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert "".join(contents) == tokenizer.decode(generation.tokens, skip_special_tokens=True)
    visible_steps = 1 + sum(1 for _ in generation.accepted_per_round)  # the prefill's token, then one chunk per round
    special = sum(1 for t in generation.tokens if t in tokenizer.all_special_ids)
    assert visible_steps - special <= len(contents) <= visible_steps
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 24 == len(generation.tokens)
    assert usage["metrics"]["speculative_decoding"]["acceptance_histogram"] == [
        generation.accepted_per_round.count(n) for n in range(K + 1)
    ]


def test_streamed_completion_and_continuous_usage(servers, tiny):
    body = {"prompt": "t9 t8", "max_tokens": 10, "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    events = post_stream(f"{servers['baseline'].url}/v1/completions", body)
    generation, tokenizer, _ = offline(tiny, PROMPTS[1], False, 10, ignore_eos=True)
    chunks = [e for e in events[:-1] if e["choices"]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == tokenizer.decode(generation.tokens, skip_special_tokens=True)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 10  # running totals, as vLLM's continuous_usage_stats
    assert events[-2]["usage"]["completion_tokens"] == 10 and "metrics" not in events[-2]  # no speculator, no spec metrics


def test_metrics_counters_equal_the_engines_rounds(servers, tiny):
    """A greedy request (the random draft is never accepted) and a sampled one at a temperature where
    rounds accept 1, 2 or all 3 drafts: every counter and position must move exactly as the engine's rounds."""
    spec = servers["speculative"]
    before = scrape(spec)
    requests = [{"temperature": 0.0, "seed": None}, {"temperature": 0.3, "seed": 7}]
    rounds, bodies = [], []
    for options in requests:
        body = {"prompt": "t4 t5 t6 t7", "max_tokens": 40, "ignore_eos": True, **{k: v for k, v in options.items() if v is not None}}
        status, response = post(f"{spec.url}/v1/completions", body)
        assert status == 200 and response["usage"]["completion_tokens"] == 40
        bodies.append(response)
        rounds += offline(tiny, PROMPTS[0], True, 40, options["temperature"], options["seed"], ignore_eos=True)[0].accepted_per_round
    delta = scrape(spec).minus(before)
    assert len(set(rounds)) >= 3  # the test's own power: zero, partial and full acceptance all occur
    assert delta.drafts == len(rounds)
    assert delta.draft_tokens == K * len(rounds)
    assert delta.accepted_tokens == sum(rounds)
    assert delta.accepted_per_position == [sum(1 for n in rounds if n > i) for i in range(K)]
    assert sum(b["metrics"]["speculative_decoding"]["num_accepted_draft_tokens"] for b in bodies) == sum(rounds)


def test_a_seed_makes_sampling_reproducible(servers):
    url = f"{servers['speculative'].url}/v1/completions"
    texts = [post(url, {"prompt": "t4", "max_tokens": 12, "temperature": 1.0, "seed": seed})[1]["choices"][0]["text"] for seed in (3, 3, 4)]
    assert texts[0] == texts[1] != texts[2]


def test_concurrent_requests_wait_their_turn_and_get_their_own_answers(servers):
    url = f"{servers['speculative'].url}/v1/completions"
    prompts = ["t4 t5", "t9", "t7 t7 t7", "t11 t12"]
    alone = [post(url, {"prompt": p, "max_tokens": 15, "temperature": 0})[1]["choices"][0]["text"] for p in prompts]
    together = [None] * len(prompts)

    def ask(index):
        together[index] = post(url, {"prompt": prompts[index], "max_tokens": 15, "temperature": 0})[1]["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


BAD_REQUESTS = {
    "unknown model": ("/v1/completions", {"model": "other", "prompt": "t4"}, 404, "model"),
    "top_p": ("/v1/completions", {"prompt": "t4", "top_p": 0.5}, 400, "top_p"),
    "n": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "t4"}], "n": 2}, 400, "n"),
    "stop strings": ("/v1/completions", {"prompt": "t4", "stop": ["t5"]}, 400, "stop"),
    "no prompt": ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    "empty messages": ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    "image part": ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages"),
    "negative temperature": ("/v1/completions", {"prompt": "t4", "temperature": -1}, 400, "temperature"),
    "max_tokens not int": ("/v1/completions", {"prompt": "t4", "max_tokens": "many"}, 400, "max_tokens"),
    "over the context": ("/v1/completions", {"prompt": "t4", "max_tokens": 500}, 400, "max_tokens"),
    "token id out of range": ("/v1/completions", {"prompt": [4, 999]}, 400, "prompt"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_an_openai_error_naming_the_field(servers, case):
    path, body, status, param = BAD_REQUESTS[case]
    got, document = post(f"{servers['speculative'].url}{path}", body)
    assert got == status and document["error"]["code"] == status and document["error"]["param"] == param
    assert document["error"]["message"]


def test_bad_json_and_unknown_routes(servers):
    url = servers["baseline"].url
    status, document = post(f"{url}/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in document["error"]["message"]
    assert post(f"{url}/v1/embeddings", {"input": "x"})[0] == 404
    with pytest.raises(urllib.error.HTTPError) as error:
        get(f"{url}/v2/nothing")
    assert error.value.code == 404


def test_token_id_prompts_are_accepted(servers, tiny):
    url = f"{servers['baseline'].url}/v1/completions"
    by_text = post(url, {"prompt": "t4 t5", "max_tokens": 6, "temperature": 0})[1]
    by_ids = post(url, {"prompt": [[4, 5]], "max_tokens": 6, "temperature": 0})[1]
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]


def test_a_client_that_leaves_mid_stream_does_not_stall_the_server(servers):
    url = f"{servers['speculative'].url}/v1/completions"
    request = urllib.request.Request(url, data=json.dumps({"prompt": "t4", "max_tokens": 100, "stream": True, "ignore_eos": True}).encode())
    response = urllib.request.urlopen(request, timeout=30)
    response.readline()
    response.close()
    status, body = post(url, {"prompt": "t4", "max_tokens": 5, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] <= 5


def test_serve_front_door_prints_where_it_listens(tiny):
    command = [sys.executable, "-m", "tools.spec_bench", "serve", "--verifier", str(tiny / "verifier"), "--speculator", str(tiny / "draft"),
               "--k", "2", "--port", "0", "--json", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        ready = json.loads("".join(lines))
        assert ready["k"] == 2 and ready["url"].startswith("http://127.0.0.1:")
        assert get(f"{ready['url']}/health")[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# spec-bench online


def summary(itl=10.0, ttft=50.0, tps=100.0, ok=20, errored=0, out=64.0) -> dict:
    dist = lambda m: {"median": m, "p90": m * 1.5, "p99": m * 2, "mean": m, "count": ok}  # noqa: E731
    return {"requests": {"successful": ok, "errored": errored, "incomplete": 0}, "output_tokens_per_s": tps, "output_tokens_per_request": out,
            "itl_ms": dist(itl), "ttft_ms": dist(ttft), "tpot_ms": dist(itl)}  # fmt: skip


def test_speedups_come_from_the_two_summaries():
    row = derive_row({"type": "synchronous"}, summary(itl=10, ttft=50, tps=100), summary(itl=5, ttft=40, tps=180), {"tau": 2.5})
    assert row["speedup"] == pytest.approx({"itl_median": 2.0, "itl_p90": 2.0, "ttft_median": 1.25, "tpot_median": 2.0, "output_tokens_per_s": 1.8})
    assert row["flags"] == []


SYNC, LOADED = {"type": "synchronous"}, {"type": "concurrent", "streams": 8}
ROW_FLAGS = {
    "ITL speedup above tau": ((SYNC, summary(itl=10), summary(itl=2), {"tau": 2.0}), "impossible for the same model"),
    "failed requests": ((LOADED, summary(errored=3), summary(), None), "baseline: 3 of 23 requests failed"),
    "too few requests": ((LOADED, summary(), summary(ok=4), None), "speculative: only 4 successful requests"),
    "different workloads": ((LOADED, summary(out=64), summary(out=32), None), "the workloads are not the same"),
    "missing side": ((LOADED, summary(), None, None), "no speculative measurement"),
}


@pytest.mark.parametrize("case", ROW_FLAGS)
def test_each_online_row_flag_fires(case):
    arguments, message = ROW_FLAGS[case]
    assert any(message in flag for flag in derive_row(*arguments)["flags"])


def test_the_tau_bound_is_checked_only_one_request_at_a_time():
    """A batching server under load slows its steps with its queue: ITL may then improve by more than τ."""
    assert derive_row(LOADED, summary(itl=10), summary(itl=2), {"tau": 2.0})["flags"] == []
    assert derive_row({"type": "concurrent", "streams": 1}, summary(itl=10), summary(itl=2), {"tau": 2.0})["flags"]


ENDPOINT_FLAGS = {
    "no counters": ("speculative", {"missing": "URL/metrics shows no vllm:spec_decode_* counters"}, "acceptance unknown"),
    "no steps": ("speculative", {"delta": {"num_drafts": 0}, "acceptance": {}}, "no verification step was counted"),
    "baseline speculates": ("baseline", {"delta": {"num_drafts": 12}, "acceptance": {}}, "it is not a baseline"),
    "tau above k+1": ("speculative", {"delta": {"num_drafts": 5}, "acceptance": {"k": 2, "tau": 3.5}}, "τ 3.50 > k+1 = 3"),
    "acceptance above 1": ("speculative", {"delta": {"num_drafts": 5}, "acceptance": {"acceptance_rate": 1.2}}, "acceptance above 1"),
    "rising positions": ("speculative", {"delta": {"num_drafts": 5}, "acceptance": {"per_position_acceptance": [0.5, 0.7]}}, "rises with position"),
}


@pytest.mark.parametrize("case", ENDPOINT_FLAGS)
def test_each_endpoint_flag_fires(case):
    role, spec_decode, message = ENDPOINT_FLAGS[case]
    assert any(message in flag for flag in endpoint_flags(role, spec_decode))


def test_a_sweep_is_replayed_at_the_baselines_rates():
    levels = ({"type": "synchronous"}, {"type": "throughput", "max_concurrency": 512},
              {"type": "constant", "rate": 2.5, "max_concurrency": 512}, {"type": "constant", "rate": 4.0, "max_concurrency": 512})  # fmt: skip
    assert replay_steps([{"strategy": level} for level in levels]) == [
        ({"kind": "synchronous"}, []),
        ({"kind": "throughput", "max_concurrency": 512}, []),
        ({"kind": "constant", "max_concurrency": 512}, [{"profile.rate": 2.5}, {"profile.rate": 4.0}]),
    ]


def test_prompt_files_become_guidellm_data_with_the_output_length(tiny, tmp_path):
    settings = OnlineSettings("http://a", "http://b", prompts=str(tiny / "prompts.jsonl"), output_tokens=9)
    data = _data_source(settings, tmp_path)
    rows = [json.loads(line) for line in Path(data["path"]).read_text().splitlines()]
    assert data["kind"] == "json_file" and rows[0] == {"prompt": "t4 t5 t6 t7", "output_tokens_count": 9}
    assert rows[2]["messages"] == PROMPTS[2]["messages"]
    with pytest.raises(SpecError, match="/v1/completions needs a 'prompt' on every line"):
        _data_source(OnlineSettings("http://a", "http://b", prompts=str(tiny / "prompts.jsonl"), request_format="completions"), tmp_path)
    assert _data_source(OnlineSettings("http://a", "http://b", prompt_tokens=5), tmp_path) == {"kind": "synthetic_text", "prompt_tokens": 5, "output_tokens": 128}


def test_missing_guidellm_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match=r"guidellm not found: .*pip install 'spec-tools\[online\]'"):
        find_guidellm(str(tmp_path / "no-such-guidellm"))


def test_online_front_door_exits_1_without_guidellm(tmp_path, capsys):
    from tools.spec_bench import main

    with pytest.raises(SystemExit) as exit_info:
        from tools._cli import run

        run(main, ["--online", "--baseline", "http://127.0.0.1:9", "--speculative", "http://127.0.0.1:9", "--guidellm", str(tmp_path / "none")])
    assert exit_info.value.code == 1
    assert "spec-tools[online]" in capsys.readouterr().err


def _guidellm_or_skip() -> None:
    try:
        find_guidellm()
    except SpecError as error:
        pytest.skip(f"guidellm is not installed ({error})")


@pytest.mark.slow
def test_spec_bench_online_against_two_live_servers(servers, tiny, tmp_path, capsys):
    """GuideLLM drives both servers; the table pairs load levels, acceptance equals the server's own counting."""
    _guidellm_or_skip()
    from tools.spec_bench import main
    from tools.spec_bench_online import print_report

    spec = servers["speculative"]
    before = scrape(spec)
    status = main([
        "online", "--baseline", servers["baseline"].url, "--speculative", spec.url, "--prompts", str(tiny / "prompts.jsonl"),
        "--concurrency", "1,2", "--max-requests", "12", "--output-tokens", "8", "--temperature", "0",
        "--json", "-o", str(tmp_path / "online.json"), "--keep", str(tmp_path / "raw"),
    ])  # fmt: skip
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "online.json").read_text())
    assert [row["label"] for row in report["rows"]] == ["concurrency 1", "concurrency 2"]
    for row in report["rows"]:
        for side in ("baseline", "speculative"):
            assert row[side]["requests"] == {"successful": 12, "errored": 0, "incomplete": 0}
            assert row[side]["output_tokens_per_request"] == 8
            assert row[side]["itl_ms"]["median"] > 0 and row[side]["ttft_ms"]["p99"] >= row[side]["ttft_ms"]["median"]
        assert row == {**row, **derive_row(row["strategy"], row["baseline"], row["speculative"], report["endpoints"]["speculative"]["spec_decode"]["acceptance"])}
    # GuideLLM sends each `prompt` row as a user message: the engine's own rounds for those, 8 times
    # over (the first 12 rows = 4 copies of 3 prompts, at 2 load levels), are what /metrics must have counted.
    expected = sdm.SpecDecodeCounters()
    for item in PROMPTS:
        chat = item if "messages" in item else {"messages": [{"role": "user", "content": item["prompt"]}]}
        for accepted in offline(tiny, chat, True, 8, ignore_eos=True)[0].accepted_per_round * 8:
            expected.observe(K, accepted)
    measured = report["endpoints"]["speculative"]["spec_decode"]
    assert measured["delta"] == expected.to_dict() == scrape(spec).minus(before).to_dict()
    assert measured["acceptance"] == sdm.acceptance(expected)
    assert report["endpoints"]["baseline"]["spec_decode"]["missing"]  # the baseline shows no counters
    assert report["flags"] == []
    kept = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert {"baseline-0.json", "speculative-0.json", "baseline-0.log", "speculative-0.scenario.json"} <= set(kept)

    print_report(report)
    printed = capsys.readouterr().out
    assert "concurrency 2" in printed and "τ" in printed and "baseline: no spec-decode counters" in printed
