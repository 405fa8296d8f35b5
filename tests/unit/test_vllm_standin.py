"""The stand-in vLLM server, run as a subprocess on 127.0.0.1 (every wait is bounded)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.lab.images import harvest_record

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tasks/lab/standins/vllm_server.py"
FLAGS = ROOT / "tasks/data/vllm-flags-by-version.tsv"
START_TIMEOUT_S = 15.0


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], truncate: int = 0) -> None:
    """A valid safetensors file written by hand: u64 header length, JSON header, zero data."""
    widths = {"F16": 2, "BF16": 2, "F32": 4}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in tensors.items():
        n = widths[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    blob = struct.pack("<Q", len(raw)) + raw + bytes(offset)
    path.write_bytes(blob[: len(blob) - truncate] if truncate else blob)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"max_position_embeddings": 40960}))
    write_safetensors(d / "model-00001-of-00002.safetensors", {"a.weight": ("BF16", [4, 8])})
    write_safetensors(d / "model-00002-of-00002.safetensors", {"b.weight": ("F16", [16]), "c": ("F32", [2, 2])})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}))
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(version: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "LLMFLEET_"))}
    env.update(VLLM_STANDIN_VERSION=version, VLLM_STANDIN_FLAGS=str(FLAGS), **extra)
    record = harvest_record(version)  # as the lab images set it
    if record is not None:
        env["VLLM_STANDIN_HARVEST"] = str(record)
    return env


def run_once(version: str, args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SERVER), *args], env=env_for(version, **env),
                          capture_output=True, text=True, timeout=20)


def terminate(proc: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL after 5 s; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


class Running:
    """A started stand-in; stopped on exit."""

    def __init__(self, version: str, args: list[str], **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(SERVER), *args, "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env_for(version, **env),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("stand-in did not listen in time")

    def stop(self) -> str:
        terminate(self.proc)
        return self.proc.stdout.read()

    def request(self, method: str, path: str, body=None, key: str | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.headers, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read().decode()

    def chat(self, key: str | None = None, **body):
        body.setdefault("messages", [{"role": "user", "content": "hello there"}])
        code, _, text = self.request("POST", "/v1/chat/completions", body, key)
        return code, (json.loads(text) if text and not body.get("stream") else text)


@pytest.fixture()
def running():
    started: list[Running] = []

    def start(version: str, args: list[str], **env: str) -> Running:
        started.append(Running(version, args, **env))
        return started[-1]

    yield start
    for r in started:
        r.stop()


# --- command line -------------------------------------------------------------------------------

def test_0_10_1_refuses_enable_reasoning(model_dir):
    out = run_once("0.10.1", ["--model", str(model_dir), "--enable-reasoning", "--reasoning-parser", "qwen3"])
    assert out.returncode == 2
    assert "api_server.py: error: unrecognized arguments: --enable-reasoning" in out.stderr


def test_new_versions_report_unknown_flags_as_vllm(model_dir):
    out = run_once("0.12.0", ["--model", str(model_dir), "--rope-scaling", "{}"])
    assert out.returncode == 2 and "vllm: error: unrecognized arguments: --rope-scaling" in out.stderr


def test_0_8_5_accepts_enable_reasoning_and_r1_takes_non_thinking_answer(model_dir, running):
    srv = running("0.8.5", ["--model", str(model_dir), "--enable-reasoning", "--reasoning-parser", "deepseek_r1"])
    assert srv.request("GET", "/health")[0] == 200
    code, resp = srv.chat(chat_template_kwargs={"enable_thinking": False})
    msg = resp["choices"][0]["message"]
    # The seed-000 trap: R1's parser takes an answer without </think> for reasoning.
    assert code == 200 and msg["content"] is None and msg["reasoning_content"]


@pytest.mark.parametrize("version,args,needle", [
    ("0.8.5", ["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    ("0.11.0", ["--block-size", "48"], "argument --block-size: invalid choice: 48"),
    ("0.10.1.1", ["--hf-overrides", "{bad"], "argument --hf-overrides: invalid loads value"),
    # 0.8.5's own parser gives --reasoning-parser choices (its registry): argparse refuses qwen3.
    ("0.8.5", ["--enable-reasoning", "--reasoning-parser", "qwen3"],
     "argument --reasoning-parser: invalid choice: 'qwen3' (choose from 'deepseek_r1', 'granite')"),
])
def test_invalid_choices_exit_2(model_dir, version, args, needle):
    out = run_once(version, ["--model", str(model_dir), *args])
    assert out.returncode == 2 and needle in out.stderr


def test_block_size_48_fine_from_0_12(model_dir, running):
    srv = running("0.12.0", ["--model", str(model_dir), "--block-size", "48", "-tp", "2"])
    assert srv.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("version,args,needle", [
    ("0.8.5", ["--enable-auto-tool-choice"], "Error: --enable-auto-tool-choice requires --tool-call-parser"),
    ("0.13.0", ["--enable-auto-tool-choice", "--tool-call-parser", "glm47"], "invalid tool call parser: glm47"),
])
def test_vllm_post_parse_errors_exit_1(model_dir, version, args, needle):
    out = run_once(version, ["--model", str(model_dir), *args])
    assert out.returncode == 1 and needle in out.stderr


def test_harvested_release_parses_as_its_own_parser(model_dir, running):
    """0.32.0's stand-in takes its options from the record read off vLLM 0.32.0's parser."""
    assert harvest_record("0.32.0") is not None
    srv = running("0.32.0", ["vllm", "serve", str(model_dir), "--no-enable-prefix-caching",
                             "--kv-cache-dtype", "fp8_e4m3", "-tp", "1"])
    assert srv.request("GET", "/health")[0] == 200
    out = run_once("0.32.0", ["vllm", "serve", str(model_dir), "--kv-cache-dtype", "fp9"])
    assert out.returncode == 2 and "argument --kv-cache-dtype: invalid choice: 'fp9'" in out.stderr
    out = run_once("0.32.0", ["vllm", "serve", str(model_dir), "--max-seq-len-to-capture", "8192"])
    assert out.returncode == 2 and "unrecognized arguments: --max-seq-len-to-capture" in out.stderr


# --- model directory -----------------------------------------------------------------------------

def test_missing_shard_refused(model_dir):
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    out = run_once("0.10.1.1", ["--model", str(model_dir)])
    assert out.returncode == 1 and "missing weight shard" in out.stderr
    assert "model-00002-of-00002.safetensors" in out.stderr


def test_truncated_shard_refused(model_dir):
    write_safetensors(model_dir / "model-00002-of-00002.safetensors", {"b.weight": ("F16", [16])}, truncate=5)
    out = run_once("0.10.1.1", ["--model", str(model_dir)])
    assert out.returncode == 1 and "truncated" in out.stderr


def test_no_weights_refused(tmp_path):
    out = run_once("0.10.1.1", ["--model", str(tmp_path)])
    assert out.returncode == 1 and "Cannot find any model weights" in out.stderr


def test_max_model_len_beyond_config_refused(model_dir):
    out = run_once("0.11.0", ["--model", str(model_dir), "--max-model-len", "256000"])
    assert out.returncode == 1 and "greater than the derived max_model_len" in out.stderr


# --- serving --------------------------------------------------------------------------------------

@pytest.fixture()
def full(model_dir, running):
    """0.10.1.1 with an API key from the environment, qwen3 reasoning and hermes tools."""
    return running("0.10.1.1", ["--model", str(model_dir), "--served-model-name", "coder",
                                "--reasoning-parser", "qwen3", "--tool-call-parser", "hermes",
                                "--enable-auto-tool-choice"], VLLM_API_KEY="s3cret")


def test_api_key(full):
    assert full.request("GET", "/health")[0] == 200  # /health is outside /v1: no key needed
    code, _, text = full.request("GET", "/v1/models")
    assert code == 401 and json.loads(text) == {"error": "Unauthorized"}
    assert full.request("GET", "/v1/models", key="wrong")[0] == 401
    code, headers, text = full.request("GET", "/v1/models", key="s3cret")
    model = json.loads(text)["data"][0]
    assert code == 200 and model["id"] == "coder" and model["owned_by"] == "vllm-standin"
    assert headers["X-LLMFleet-Standin"] == "vllm-standin/0.10.1.1"


def test_thinking_on_and_off_with_parser(full):
    code, resp = full.chat(key="s3cret", model="coder")
    msg = resp["choices"][0]["message"]
    assert code == 200 and msg["reasoning_content"] and "<think>" not in msg["content"]
    assert "reasoning" not in msg  # 0.10.x names it reasoning_content only
    code, resp = full.chat(key="s3cret", chat_template_kwargs={"enable_thinking": False})
    msg = resp["choices"][0]["message"]
    assert msg["reasoning_content"] is None and msg["content"]
    assert resp["usage"]["completion_tokens"] > 0


def test_unknown_model_404(full):
    code, resp = full.chat(key="s3cret", model="other")
    assert code == 404 and "does not exist" in resp["message"]


def test_streaming_ends_with_done(full):
    code, text = full.chat(key="s3cret", stream=True, stream_options={"include_usage": True},
                           chat_template_kwargs={"enable_thinking": False})
    events = [ln[len("data: "):] for ln in text.split("\n") if ln.startswith("data: ")]
    assert code == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "stand-in" in content
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_tool_calls(full):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    code, resp = full.chat(key="s3cret", tools=tools, chat_template_kwargs={"enable_thinking": False})
    choice = resp["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert code == 200 and choice["finish_reason"] == "tool_calls"
    assert call["function"]["name"] == "get_weather" and "city" in json.loads(call["function"]["arguments"])


def test_tools_without_auto_tool_choice_are_refused(model_dir, running):
    srv = running("0.10.1.1", ["--model", str(model_dir)])
    code, resp = srv.chat(tools=[{"type": "function", "function": {"name": "f"}}])
    assert code == 400 and "--enable-auto-tool-choice" in resp["message"]


def test_metrics(full):
    full.chat(key="s3cret")
    full.chat(key="s3cret", stream=True)
    code, headers, text = full.request("GET", "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_success_total"):
        assert f'{name}{{engine="0",model_name="coder"' in text, name
    count = [ln for ln in text.splitlines() if ln.startswith("vllm:time_to_first_token_seconds_count")]
    assert count and count[0].endswith(" 2")
    prompt = [ln for ln in text.splitlines() if ln.startswith("vllm:prompt_tokens_total")]
    assert int(prompt[0].rsplit(" ", 1)[1]) > 0


def test_no_parser_thinking_in_content_and_server_default_off(model_dir, running):
    srv = running("0.16.0", [str(model_dir), "--default-chat-template-kwargs", '{"enable_thinking": false}'])
    code, resp = srv.chat()
    assert code == 200 and "<think>" not in resp["choices"][0]["message"]["content"]
    code, resp = srv.chat(chat_template_kwargs={"enable_thinking": True})
    assert "<think>" in resp["choices"][0]["message"]["content"]
    assert "</think>" in resp["choices"][0]["message"]["content"]


def test_new_versions_name_the_field_reasoning(model_dir, running):
    srv = running("0.16.0", ["--model", str(model_dir), "--reasoning-parser", "qwen3"])
    msg = srv.chat()[1]["choices"][0]["message"]
    assert msg["reasoning"] and "reasoning_content" not in msg
    log = srv.stop()
    assert "you should provide the model as a positional argument" in log
    assert "Starting vLLM API server" in log


def test_nonthinking_template_file(model_dir, running):
    tpl = ROOT / "templates/chat/qwen3_nonthinking.jinja"
    srv = running("0.8.5", ["--model", str(model_dir), "--chat-template", str(tpl)])
    assert "<think>" not in srv.chat()[1]["choices"][0]["message"]["content"]


def test_seed_003_template_still_thinks(model_dir, running, tmp_path):
    # The seed's template drops roles only; Qwen3 keeps thinking unless the think block is closed.
    tpl = tmp_path / "seed.jinja"
    tpl.write_text("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                   "message['content'] + '<|im_end|>\\n'}}{% endfor %}"
                   "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}")
    srv = running("0.8.5", ["--model", str(model_dir), "--chat-template", str(tpl)])
    assert "<think>" in srv.chat()[1]["choices"][0]["message"]["content"]


def test_fail_health_and_ascend_launcher(model_dir, running):
    out = run_once("0.11.0", ["--model", str(model_dir)], LLMFLEET_STANDIN_ASCEND="1")
    assert out.returncode == 127 and "no vLLM entrypoint" in out.stderr
    srv = running("0.11.0", ["vllm", "serve", str(model_dir)], LLMFLEET_STANDIN_ASCEND="1",
                  LLMFLEET_STANDIN_FAIL_HEALTH="1")
    assert srv.request("GET", "/health")[0] == 500
    assert srv.request("GET", "/v1/models")[0] == 200


def test_completions_endpoint(model_dir, running):
    srv = running("0.10.1.1", ["--model", str(model_dir), "--served-model-name", "m"])
    code, _, text = srv.request("POST", "/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 3})
    resp = json.loads(text)
    assert code == 200 and resp["choices"][0]["finish_reason"] == "length"
    assert len(resp["choices"][0]["text"].split()) == 3
