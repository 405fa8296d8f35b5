#!/usr/bin/env python3
"""llmfleet endpoint probe: is a served model really answering? (runs on the host, stdlib only)

    python3 verify_endpoint.py --config /etc/llmfleet/<name>.verify.json [--wait SECONDS]

The config (written by tasks/service.py, no secrets in it) names the port, the served model
name, the env file holding VLLM_API_KEY and what the recipe promises. Within the wait (default:
the recipe's start-up budget), in order:

1. ``GET /health`` answers 200 (polled every 2 s; gives up early when the systemd unit failed).
   While it waits, the replica's start-up phase, read from the container's log (:data:`PHASES`),
   is kept in ``/run/llmfleet/progress/replica-<unit>.json`` (config ``progress_dir``) for the
   run's and ``deploys/status.py``'s progress lines (``tasks/progress.py``); gone when the wait ends;
2. ``GET /v1/models`` (with the API key) lists the served model name;
3. a real chat completion with the API key. Its size proves the recipe's promise:
   - any recipe: one token (``max_tokens`` 1) comes back;
   - non-thinking recipes: ``max_tokens`` 16 and neither ``<think>`` nor ``</think>`` in the
     content and no reasoning field. Qwen3 emits ``<think>`` (one token) first when thinking,
     so a handful of tokens sees it even behind a leading newline;
4. tool-calling recipes: a request offering one function with ``tool_choice`` "auto" (thinking
   off, room for the call) must come back with ``tool_calls`` parsed by the server: the
   function's name and JSON arguments.

Prints one JSON line (``{"host", "name", "ok", "checks", "error", ...}``) on stdout; on failure
also a message naming the host and the last 30 lines of the container's log on stderr (and
in the JSON as ``log_tail``). Exit 0 when every check passed, 1 otherwise, 2 on a bad config.
The API key is read from the env file (never argv) and never printed. Side-effect free.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

LOG_LINES = 30
HEALTH_POLL_S = 2.0
PROGRESS_DIR = "/run/llmfleet/progress"
#: Lines vLLM logs while a replica starts, in the order an engine reaches them, and the phase each
#: begins; the last such line in the container's log names the phase. Where vLLM logs each:
PHASES = (
    ("Starting to load model", "loading weights"),  # v1/worker/gpu_model_runner.py, worker/model_runner.py: load_model
    ("Loading safetensors checkpoint shards", "loading weights"),  # model_loader/weight_utils.py: the tqdm bar
    ("Loading weights took", "weights loaded"),  # model_executor/model_loader/default_loader.py: load_weights
    ("Model loading took", "weights loaded"),  # v1/worker/gpu_model_runner.py: load_model
    ("Dynamo bytecode transform time", "compiling (torch.compile)"),  # compilation/backends.py: VllmBackend
    ("Memory profiling takes", "profiling memory"),  # v1/worker/gpu_worker.py, worker/worker.py: profiling
    ("Available KV cache memory", "allocating the KV cache"),  # v1/worker/gpu_worker.py: determine_available_memory
    ("GPU KV cache size", "allocating the KV cache"),  # v1/core/kv_cache_utils.py: _report_kv_cache_config
    ("# GPU blocks", "allocating the KV cache"),  # executor/executor_base.py (V0): initialize_cache
    ("# cpu blocks", "allocating the KV cache"),  # the same line, CPU backend
    ("Capturing CUDA graph", "capturing CUDA graphs"),  # v1/worker/gpu_model_runner.py: capture_model (tqdm)
    ("Capturing cudagraphs", "capturing CUDA graphs"),  # worker/model_runner.py (V0): capture_model
    ("Graph capturing finished", "graphs captured"),  # gpu_model_runner.py / model_runner.py: capture_model
    ("init engine (profile, create kv cache, warmup model) took", "engine ready"),  # v1/engine/core.py
    ("Starting vLLM API server", "starting the API server"),  # entrypoints/openai/api_server.py
    ("Application startup complete", "API server up"),  # uvicorn
)
_SHARDS = re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)%")
PROMPT = "Reply with one word: hello."
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class CheckFailed(Exception):
    pass


def read_key(env_file: str | None) -> str | None:
    if not env_file:
        return None
    try:
        with open(env_file, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VLLM_API_KEY="):
                    return line.rstrip("\r\n").split("=", 1)[1]
    except OSError as exc:
        raise CheckFailed(f"cannot read the env file {env_file} ({exc.strerror}); run as root") from None
    raise CheckFailed(f"{env_file} holds no VLLM_API_KEY")


class Client:
    def __init__(self, port: int, key: str | None, address: str = "127.0.0.1") -> None:
        self.base = f"http://{address}:{port}"
        self.key = key

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.key and path.startswith("/v1"):
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw.strip() else None)
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300].decode("utf-8", "replace")
            return exc.code, {"error_text": self.redact(text)}

    def redact(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key else text


def unit_state(unit: str) -> tuple[str, int]:
    """(ActiveState, NRestarts) of the unit; ("unknown", 0) without systemd."""
    try:
        out = subprocess.run(["systemctl", "show", "-p", "ActiveState", "-p", "NRestarts", unit],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", 0
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        restarts = int(props.get("NRestarts") or 0)
    except ValueError:
        restarts = 0
    return props.get("ActiveState", "unknown"), restarts


def phase_of(lines: list[str]) -> str | None:
    """The start-up phase the last phase line of a vLLM log names (None: no such line yet)."""
    for line in reversed(lines):
        shards = _SHARDS.search(line)
        if shards:
            return f"loading weights {shards.group(1)}%"
        for marker, phase in PHASES:
            if marker in line:
                return phase
    return None


def container_log(container: str, lines: int = 200) -> list[str]:
    """The container's last log lines ([] without Docker or before the container exists).
    Progress bars end their lines with carriage returns: each becomes a line."""
    if not container:
        return []
    try:
        proc = subprocess.run(["docker", "logs", "--tail", str(lines), container],
                              capture_output=True, text=True, timeout=10, errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return []
    return (proc.stdout + proc.stderr).replace("\r", "\n").splitlines() if proc.returncode == 0 else []


class StartProgress:
    """The replica's start-up as a progress state file (``tasks/progress.py`` reads it): phase,
    seconds waited of the budget. Written atomically, world-readable (no secret in it), removed by
    :meth:`close`. A file that cannot be written costs the probe nothing."""

    def __init__(self, name: str, unit: str, budget_s: float, directory: str = PROGRESS_DIR) -> None:
        self.path = os.path.join(directory, f"replica-{unit}.json")
        self.name, self.budget_s, self.started = name, budget_s, time.monotonic()

    def write(self, phase: str | None) -> None:
        entry = {"kind": "progress", "work": f"replica {self.name}", "phase": phase or "starting",
                 "done": round(time.monotonic() - self.started), "total": round(self.budget_s), "unit": "s",
                 "pid": os.getpid(), "at": round(time.time(), 1)}
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(entry, fh)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError:
            pass

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def wait_health(client: Client, unit: str, deadline: float, progress: StartProgress | None = None,
                container: str = "") -> float:
    """Poll /health until 200; fail early when the container died (systemd restarted it or
    gave up): a crash during start-up is not waited out for the whole budget. Each poll that
    finds it not yet healthy records the start-up phase in ``progress``."""
    started = time.monotonic()
    last = "no answer"
    _, restarts0 = unit_state(unit)
    for _ in range(int(max(0.0, deadline - started) / HEALTH_POLL_S) + 2):  # bounded by the budget
        try:
            status, _ = client.request("GET", "/health", timeout=5)
            if status == 200:
                return round(time.monotonic() - started, 1)
            last = f"HTTP {status}"
        except (OSError, ValueError) as exc:
            last = exc.__class__.__name__
        active, restarts = unit_state(unit)
        if active == "failed":
            raise CheckFailed(f"/health: the unit {unit} failed while starting (last answer: {last})")
        if restarts > restarts0:
            raise CheckFailed(f"/health: the container exited during start-up and systemd restarted it "
                              f"({restarts - restarts0}x; last answer: {last})")
        if time.monotonic() + HEALTH_POLL_S > deadline:
            raise CheckFailed(f"/health: not healthy within the wait ({last})")
        if progress is not None:
            progress.write(phase_of(container_log(container)))
        time.sleep(HEALTH_POLL_S)
    raise CheckFailed(f"/health: not healthy within the wait ({last})")


def check_models(client: Client, served: str) -> list[str]:
    status, body = client.request("GET", "/v1/models")
    if status != 200:
        raise CheckFailed(f"/v1/models: HTTP {status} {body}")
    ids = [m.get("id") for m in (body or {}).get("data", [])]
    if served not in ids:
        raise CheckFailed(f"/v1/models lists {ids}, not the served name {served!r}")
    return ids


def _reasoning(message: dict) -> str:
    return "".join(str(message.get(k) or "") for k in ("reasoning_content", "reasoning"))


def check_chat(client: Client, served: str, non_thinking: bool) -> dict:
    max_tokens = 16 if non_thinking else 1
    status, body = client.request("POST", "/v1/chat/completions", {
        "model": served, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens, "temperature": 0}, timeout=300)
    if status != 200:
        raise CheckFailed(f"chat completion: HTTP {status} {body}")
    choices = (body or {}).get("choices") or []
    if not choices or not isinstance(choices[0].get("message"), dict):
        raise CheckFailed(f"chat completion: no choice in the answer {body}")
    message = choices[0]["message"]
    content = message.get("content") or ""
    tokens = ((body or {}).get("usage") or {}).get("completion_tokens")
    if tokens is not None and tokens < 1:
        raise CheckFailed("chat completion: no token generated")
    result = {"max_tokens": max_tokens, "completion_tokens": tokens, "finish_reason": choices[0].get("finish_reason")}
    if non_thinking:
        if "<think>" in content or "</think>" in content:
            raise CheckFailed(f"non-thinking recipe, but the answer thinks: {content[:80]!r}")
        if _reasoning(message):
            raise CheckFailed(f"non-thinking recipe, but the answer carries reasoning: {_reasoning(message)[:80]!r}")
        result["thinking"] = False
    return result


def check_tools(client: Client, served: str) -> dict:
    status, body = client.request("POST", "/v1/chat/completions", {
        "model": served, "messages": [{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        "tools": [TOOL], "tool_choice": "auto", "max_tokens": 256, "temperature": 0,
        "chat_template_kwargs": {"enable_thinking": False}}, timeout=300)
    if status != 200:
        raise CheckFailed(f"tool call: HTTP {status} {body}")
    message = (((body or {}).get("choices") or [{}])[0]).get("message") or {}
    calls = message.get("tool_calls") or []
    if not calls:
        raise CheckFailed(f"tool call: no parsed tool_calls; content was {str(message.get('content'))[:120]!r}")
    fn = calls[0].get("function") or {}
    try:
        args = json.loads(fn.get("arguments") or "")
    except ValueError:
        raise CheckFailed(f"tool call: arguments are not JSON: {fn.get('arguments')!r}") from None
    if fn.get("name") != TOOL["function"]["name"] or not isinstance(args, dict):
        raise CheckFailed(f"tool call: unexpected call {fn}")
    return {"name": fn["name"], "arguments": args}


def log_tail(container: str, unit: str, key: str | None) -> list[str]:
    """Last lines of the container's log; from the journal when the container is gone (--rm)."""
    for cmd in (["docker", "logs", "--tail", str(LOG_LINES), container],
                ["journalctl", "-u", unit, "-n", str(LOG_LINES), "--no-pager", "-o", "cat"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = (proc.stdout + proc.stderr).splitlines()[-LOG_LINES:]
        if proc.returncode == 0 and lines and lines != ["-- No entries --"]:
            return [ln.replace(key, "***") if key else ln for ln in lines]
    return ["(no container log available)"]


def run(config: dict, wait: float | None) -> dict:
    host = socket.gethostname()
    budget = float(wait if wait is not None else config.get("startup_budget_s", 1200))
    result: dict = {"host": host, "name": config["name"], "port": config["port"],
                    "served_model_name": config["served_model_name"], "ok": False, "checks": {}}
    started = time.monotonic()
    key = None
    try:
        key = read_key(config.get("env_file"))
        # A headless worker of a multi-node replica serves no HTTP: its health is its own unit
        # running and the head healthy, which the head is only once every member joined.
        head = config.get("head")
        client = Client(int(config["port"]), key, head or "127.0.0.1")
        progress = StartProgress(config["name"], config["unit"], budget, config.get("progress_dir", PROGRESS_DIR))
        try:
            result["checks"]["health_s"] = wait_health(client, config["unit"], started + budget, progress,
                                                       config.get("container", ""))
        finally:
            progress.close()
        if head:
            result["checks"]["joined_head"] = head
            result["ok"] = True
            return _done(result, started)
        result["checks"]["models"] = check_models(client, config["served_model_name"])
        result["checks"]["chat"] = check_chat(client, config["served_model_name"], bool(config.get("non_thinking")))
        if config.get("tool_calls"):
            result["checks"]["tool_call"] = check_tools(client, config["served_model_name"])
        result["ok"] = True
    except (CheckFailed, OSError, ValueError) as exc:
        text = str(exc)
        result["error"] = text.replace(key, "***") if key else text
        result["log_tail"] = log_tail(config.get("container", ""), config["unit"], key)
    return _done(result, started)


def _done(result: dict, started: float) -> dict:
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the service's verify.json")
    parser.add_argument("--wait", type=float, default=None, help="seconds to wait for /health "
                        "(default: the recipe's start-up budget)")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as fh:
            config = json.load(fh)
        for field in ("name", "unit", "port", "served_model_name"):
            if field not in config:
                raise ValueError(f"missing {field!r}")
    except (OSError, ValueError) as exc:
        print(json.dumps({"host": socket.gethostname(), "config": args.config, "ok": False,
                          "error": f"bad config: {exc}"}))
        return 2
    result = run(config, args.wait)
    print(json.dumps(result, sort_keys=True), flush=True)
    if not result["ok"]:
        print(f"llmfleet verify FAILED on host {result['host']}: {result['name']} (port {result['port']}): "
              f"{result['error']}", file=sys.stderr)
        print(f"--- last {LOG_LINES} lines of the log of {config.get('container')} ---", file=sys.stderr)
        for line in result["log_tail"]:
            print(line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
