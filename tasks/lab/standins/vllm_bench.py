#!/usr/bin/env python3
"""STAND-IN for ``vllm bench serve`` (llmfleet lab). This is NOT vLLM's benchmark.

Run by the stand-in image's ``vllm`` launcher (``vllm bench serve ...`` -> vllm_server.py ->
here). It takes the subset of vLLM's ``vllm bench serve`` flags llmfleet uses, sends real
streaming requests to the endpoint, measures them on the client side the way vLLM does
(TTFT = first chunk, ITL = gaps between chunks, TPOT = (latency - TTFT) / (tokens - 1),
throughputs over the wall-clock duration) and writes vLLM's result JSON keys with
``--save-result``. Differences, because the stand-in has no tokenizer: prompts of the
``random`` dataset are N words and tokens are counted from the server's ``usage``.

Bounded: at most MAX_PROMPTS requests, MAX_WORKERS in flight, MAX_SECONDS in total; the API
key comes from ``OPENAI_API_KEY`` as in vLLM (never from argv). Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from urllib.parse import urlsplit

MAX_PROMPTS = 2000
MAX_WORKERS = 64
MAX_SECONDS = 300.0
REQUEST_TIMEOUT_S = 60.0
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm bench serve",
                                description="Benchmark online serving throughput (llmfleet stand-in).")
    p.add_argument("--backend", default="openai", choices=["openai", "vllm", "openai-chat"])
    p.add_argument("--base-url", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default="/v1/completions")
    p.add_argument("--model", default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--label", default=None)
    p.add_argument("--dataset-name", default="random", choices=["random"])
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=None)
    p.add_argument("--output-len", type=int, default=None)
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--save-detailed", action="store_true")
    p.add_argument("--result-dir", default=None)
    p.add_argument("--result-filename", default=None)
    p.add_argument("--metadata", metavar="KEY=VALUE", nargs="*")
    p.add_argument("--percentile-metrics", default="ttft,tpot,itl")
    p.add_argument("--metric-percentiles", default="99")
    p.add_argument("--ready-check-timeout-sec", type=int, default=0)
    return p


class Output:
    """What one request measured (vLLM's RequestFuncOutput, the fields used here)."""

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len
        self.success = False
        self.ttft = 0.0
        self.itl: list[float] = []
        self.latency = 0.0
        self.output_tokens = 0
        self.error = ""


def request_once(base: str, path: str, payload: dict, key: str | None, prompt_len: int) -> Output:
    out = Output(prompt_len)
    parts = urlsplit(base)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    start = last = time.perf_counter()
    try:
        conn.request("POST", (parts.path.rstrip("/") or "") + path, body=json.dumps(payload), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            out.error = f"HTTP {resp.status} {resp.reason}"
            resp.read()
            return out
        first = True
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            chunk = line[len("data: "):]
            if chunk == "[DONE]":
                break
            data = json.loads(chunk)
            now = time.perf_counter()
            if data.get("choices"):
                if first:
                    out.ttft, first = now - start, False
                else:
                    out.itl.append(now - last)
                last = now
            elif data.get("usage"):
                out.output_tokens = int(data["usage"].get("completion_tokens") or 0)
                out.prompt_len = int(data["usage"].get("prompt_tokens") or prompt_len)
        out.success = not first
        out.error = "" if out.success else "Never received a valid chunk to calculate TTFT."
        out.latency = last - start
    except (OSError, http.client.HTTPException, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return out


def _stats(values: list[float], percentiles: list[float]) -> tuple[float, float, float, list[tuple[float, float]]]:
    if not values:
        values = [0.0]
    ordered = sorted(values)

    def pct(p: float) -> float:  # numpy's default (linear) percentile
        k = (len(ordered) - 1) * p / 100
        lo = int(k)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    return (statistics.fmean(values) * 1000, statistics.median(values) * 1000,
            statistics.pstdev(values) * 1000, [(p, pct(p) * 1000) for p in percentiles])


def run(args: argparse.Namespace) -> dict:
    if args.num_prompts < 1 or args.num_prompts > MAX_PROMPTS:
        raise SystemExit(f"vllm bench serve (stand-in): --num-prompts must be 1..{MAX_PROMPTS}")
    input_len = args.input_len or args.random_input_len
    output_len = args.output_len or args.random_output_len
    base = args.base_url.rstrip("/") if args.base_url else f"http://{args.host}:{args.port}"
    key = os.environ.get("OPENAI_API_KEY")
    chat = args.backend == "openai-chat"
    endpoint = "/v1/chat/completions" if chat and args.endpoint == "/v1/completions" else args.endpoint
    model_id = args.model
    if model_id is None:
        conn = http.client.HTTPConnection(urlsplit(base).hostname, urlsplit(base).port, timeout=10)
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {})
        model_id = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
    name = args.served_model_name or model_id
    rng = random.Random(args.seed)
    ratio = max(0.0, min(args.random_range_ratio, 1.0))
    jobs = []
    for _ in range(args.num_prompts):
        n_in = rng.randint(int(input_len * (1 - ratio)), int(input_len * (1 + ratio))) or 1
        n_out = rng.randint(int(output_len * (1 - ratio)), int(output_len * (1 + ratio))) or 1
        prompt = " ".join(rng.choice(WORDS) for _ in range(n_in))
        payload: dict = {"model": name, "stream": True, "stream_options": {"include_usage": True}}
        if chat:
            payload.update(messages=[{"role": "user", "content": prompt}], max_completion_tokens=n_out)
        else:
            payload.update(prompt=prompt, max_tokens=n_out)
        # vLLM ignores EOS for the random dataset so each request generates its output length.
        payload["ignore_eos"] = True
        if args.temperature is not None:
            payload["temperature"] = args.temperature
        jobs.append((payload, n_in))

    workers = min(args.max_concurrency or MAX_WORKERS, MAX_WORKERS, len(jobs))
    deadline = time.monotonic() + MAX_SECONDS
    gap = 0.0 if args.request_rate == float("inf") else 1.0 / args.request_rate

    def one(job: tuple[dict, int]) -> Output:
        if time.monotonic() > deadline:
            out = Output(job[1])
            out.error = f"stand-in time budget of {MAX_SECONDS:.0f}s spent"
            return out
        return request_once(base, endpoint, job[0], key, job[1])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = []
        for job in jobs:
            futures.append(pool.submit(one, job))
            if gap:
                time.sleep(gap)
        outputs = [f.result() for f in futures]
    duration = time.perf_counter() - started

    ok = [o for o in outputs if o.success]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(o.output_tokens for o in ok)
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    percentiles = [float(p) for p in args.metric_percentiles.split(",")]
    result: dict = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": args.backend, "backend": args.backend, "label": args.label,
        "model_id": model_id, "tokenizer_id": args.tokenizer or model_id, "num_prompts": args.num_prompts,
    }
    for item in args.metadata or []:
        k, _, v = item.partition("=")
        result[k.strip()] = v.strip()
    result.update({
        "request_rate": args.request_rate if args.request_rate < float("inf") else "inf",
        "burstiness": 1.0, "max_concurrency": args.max_concurrency,
        "duration": duration, "completed": len(ok), "failed": len(outputs) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration, "request_goodput": None,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
    })
    if args.save_detailed:
        result.update({"input_lens": [o.prompt_len for o in outputs],
                       "output_lens": [o.output_tokens for o in outputs],
                       "ttfts": [o.ttft for o in outputs], "itls": [o.itl for o in outputs],
                       "errors": [o.error for o in outputs]})
    series = {"ttft": [o.ttft for o in ok], "tpot": tpots, "itl": [x for o in ok for x in o.itl],
              "e2el": [o.latency for o in ok]}
    for metric in args.percentile_metrics.split(","):
        if metric not in series:
            continue
        mean, median, std, pcts = _stats(series[metric], percentiles)
        result[f"mean_{metric}_ms"], result[f"median_{metric}_ms"], result[f"std_{metric}_ms"] = mean, median, std
        for p, value in pcts:
            result[f"p{int(p) if int(p) == p else p}_{metric}_ms"] = value
    return result


def print_summary(r: dict) -> None:
    print("{s:{c}^{n}}".format(s=" Serving Benchmark Result (llmfleet stand-in) ", n=50, c="="))
    rows = [("Successful requests:", r["completed"]), ("Failed requests:", r["failed"]),
            ("Benchmark duration (s):", f"{r['duration']:.2f}"), ("Total input tokens:", r["total_input_tokens"]),
            ("Total generated tokens:", r["total_output_tokens"]),
            ("Request throughput (req/s):", f"{r['request_throughput']:.2f}"),
            ("Output token throughput (tok/s):", f"{r['output_throughput']:.2f}")]
    for metric in ("ttft", "tpot", "itl"):
        if f"mean_{metric}_ms" in r:
            rows += [(f"Mean {metric.upper()} (ms):", f"{r[f'mean_{metric}_ms']:.2f}"),
                     (f"Median {metric.upper()} (ms):", f"{r[f'median_{metric}_ms']:.2f}")]
    for label, value in rows:
        print("{:<40} {:<10}".format(label, value))
    print("=" * 50, flush=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print_summary(result)
    if args.save_result:
        base_model = str(result["model_id"]).split("/")[-1]
        name = args.result_filename or (f"{args.label or args.backend}-{result['request_rate']}qps-"
                                        f"{base_model}-{result['date']}.json")
        if args.result_dir:
            os.makedirs(args.result_dir, exist_ok=True)
            name = os.path.join(args.result_dir, name)
        with open(name, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
