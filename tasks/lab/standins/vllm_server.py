#!/usr/bin/env python3
"""STAND-IN for the vLLM OpenAI-compatible server (llmfleet lab). This is NOT vLLM.

It is baked into lab images under real names (vllm/vllm-openai:vX.Y.Z) so deploys can be run
end to end without GPUs. It behaves like the vLLM version its image tag names where llmfleet
depends on it:

* command line: where the release's own parser was harvested (a record of
  tasks/data/vllm-flags, read off vLLM's parser by ``python -m tasks.vllm.harvest``), exactly
  its options: value kinds, nargs, choices, ``--no-`` forms and aliases, and its reasoning and
  tool parser registries and reasoning field names. Otherwise the server flags the version has
  per the string-presence table (TSV), plus the ``-tp`` alias. Parsed with argparse under
  vLLM's program names (``api_server.py`` for images
  up to 0.11.x, whose entrypoint is ``python3 -m vllm.entrypoints.openai.api_server``;
  ``vllm serve`` from 0.12.0, where an unknown flag is reported by the top-level ``vllm``
  parser). Unknown flags and invalid choices exit 2 with argparse's own messages; vLLM's
  post-parse checks (auto tool choice without a parser, unknown parser names) exit 1.
* start-up: reads every ``*.safetensors`` file under the model directory fully and checks its
  header; a shard listed in ``model.safetensors.index.json`` but missing, or a truncated file,
  stops the server with exit 1. ``--max-model-len`` beyond the model's config is refused as
  vLLM does.
* ``vllm bench serve`` (argv starting with ``vllm bench serve``, as the image's ``vllm``
  launcher passes it): the stand-in benchmark client in vllm_bench.py.
* GLM-5 (config.json ``model_type: glm_moe_dsa``): refused unless the image's transformers is
  >= 5.2 (``importlib.metadata``), with transformers' "does not recognize this architecture".
* multi-node (``--nnodes`` > 1, where the release's parser has it): the rendezvous of
  vllm_rendezvous.py on ``--master-addr``/``--master-port`` over real TCP. The head (node rank 0)
  answers nothing before every node joined; a ``--headless`` worker serves no HTTP, retries the
  head until the distributed timeout, fails on a model/tp/pp/nnodes/version differing from the
  head's, and stays up when the head dies (vLLM #32136).
* serving: ``/health``, ``/version``, ``/v1/models``, ``/v1/chat/completions`` (stream and not),
  ``/v1/completions``, ``/metrics`` (the names of the version, vllm_metrics.py); ``--api-key`` or
  ``VLLM_API_KEY`` guard ``/v1`` with vLLM's 401 body. Replies are tiny and deterministic;
  thinking, reasoning parsers and tool calls follow vLLM's response shapes.

Environment:
  VLLM_STANDIN_VERSION          vLLM version to behave as (required), e.g. 0.10.1.1
  VLLM_STANDIN_HARVEST          path of the harvested record (JSON) of this release, if any
  VLLM_STANDIN_FLAGS            path of vllm-flags-by-version.tsv (default: next to this file,
                                else ../../data/ of the llmfleet repository); read only without
                                a harvested record
  VLLM_API_KEY                  API key when --api-key is absent (as vLLM)
  LLMFLEET_STANDIN_FAIL_HEALTH  "1": /health answers 500 forever (rollback tests)
  LLMFLEET_STANDIN_ASCEND       "1": behave as a vllm-ascend image (no vLLM entrypoint: argv
                                must start with "vllm serve" or "python3 -m vllm.entrypoints...")
  VLLM_STANDIN_STARTUP_DELAY_S  seconds to wait before listening (simulated load time; default 0)
  VLLM_STANDIN_DIST_TIMEOUT_S   multi-node rendezvous timeout in seconds (default: the release's
                                --distributed-timeout-seconds, else torch's NCCL default, 600)

Every response carries ``X-LLMFleet-Standin: vllm-standin/<version>``; /v1/models says
``owned_by: vllm-standin``. Standard library only (python3.11); imports nothing from llmfleet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_metrics  # noqa: E402 - the stand-in's /metrics, shipped next to this file
import vllm_rendezvous  # noqa: E402 - multi-node rendezvous (--nnodes), shipped next to this file

STANDIN = "vllm-standin"
HERE = Path(__file__).resolve().parent

# --- version facts (a copy of what llmfleet knows; the stand-in must not import llmfleet) ----

DTYPE_CHOICES = ["auto", "half", "float16", "bfloat16", "float", "float32"]
KV_CACHE_DTYPES = ["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
BLOCK_SIZE_CHOICES = [1, 8, 16, 32, 64, 128]
REASONING_PARSERS = {"deepseek_r1": "0.7.1", "qwen3": "0.9.0", "glm45": "0.10.1",
                     "granite": "0.8.0", "glm47": "0.24.0"}
TOOL_PARSERS = {"hermes": "0.6.0", "mistral": "0.6.0", "llama3_json": "0.6.0", "pythonic": "0.8.0",
                "qwen3_coder": "0.10.0", "glm45": "0.10.1", "glm47": "0.14.0"}
BOOL_FLAGS = {"--enable-expert-parallel", "--enable-chunked-prefill", "--enable-prefix-caching",
              "--enforce-eager", "--disable-custom-all-reduce", "--trust-remote-code",
              "--enable-reasoning", "--enable-auto-tool-choice", "--disable-log-requests",
              "--enable-log-requests", "--disable-log-stats"}
INT_FLAGS = {"--port", "--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size",
             "--max-num-batched-tokens", "--max-num-seqs", "--tokenizer-pool-size",
             "--max-seq-len-to-capture", "--seed"}
FLOAT_FLAGS = {"--gpu-memory-utilization", "--swap-space"}
JSON_FLAGS = {"--hf-overrides", "--rope-scaling", "--default-chat-template-kwargs"}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
ANSWER = "Hello! This is the llmfleet vLLM stand-in answering."
REASONING = "The user wants a short reply. I will answer briefly."
MAX_GENERATED = 8192  # bound on tokens one request generates (ignore_eos)
#: model_type of GLM-5 checkpoints and the transformers release that first knows it.
GLM5_MODEL_TYPES = ("glm_moe_dsa",)
GLM5_MIN_TRANSFORMERS = "5.2.0"


def vkey(text: str) -> tuple:
    """Comparable key of a vLLM version ("0.8.5.post1", "0.11.0rc3")."""
    m = re.match(r"^v?(\d+(?:\.\d+){1,3})(?:rc(\d+))?(?:\.post(\d+))?", text.strip())
    if not m:
        raise ValueError(f"not a version: {text!r}")
    rel = [int(p) for p in m.group(1).split(".")] + [0, 0, 0]
    rc = m.group(2)
    return (*rel[:4], 0 if rc is not None else 1, int(rc or 0), int(m.group(3) or 0))


class Standin:
    """Version-dependent behaviour of the stand-in."""

    def __init__(self, version: str, flags_path: Path | None, harvest_path: Path | None = None) -> None:
        self.version = version.lstrip("v")
        self.v = vkey(self.version)
        #: The release's harvested parser record (vLLM's own options and registries), or None.
        self.harvest = json.loads(harvest_path.read_text()) if harvest_path else None
        if self.harvest is not None:
            self.flags = set(self.harvest["options"])
        elif flags_path is not None:
            self.flags = self._flags_for(flags_path)
        else:
            raise SystemExit(f"{STANDIN}: neither a harvested record nor a flag table")

    def _flags_for(self, path: Path) -> set[str]:
        rows = [ln.split("\t") for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        header = rows[0]
        releases = [(vkey(r), i) for i, r in enumerate(header[1:], start=1)]
        below = [x for x in releases if x[0] <= self.v]
        if not below:
            raise SystemExit(f"{STANDIN}: version {self.version} is older than the flag table")
        col = max(below)[1]
        return {row[0] for row in rows[1:] if row[col].strip() == "Y"}

    def at_least(self, version: str) -> bool:
        return self.v >= vkey(version)

    @property
    def serve_entrypoint(self) -> bool:
        """Images from 0.12.0 run ``vllm serve``; older ones the api_server module."""
        return self.at_least("0.12.0")

    def reasoning_fields(self) -> tuple[str, ...]:
        if self.harvest is not None:
            return tuple(self.harvest["reasoning_fields"])
        if not self.at_least("0.11.1"):
            return ("reasoning_content",)
        if not self.at_least("0.16.0"):
            return ("reasoning", "reasoning_content")
        return ("reasoning",)

    def parsers(self, table: dict[str, str]) -> list[str]:
        if self.harvest is not None:
            key = "reasoning_parsers" if table is REASONING_PARSERS else "tool_parsers"
            return list(self.harvest[key])
        return [n for n, first in table.items() if self.at_least(first)]


# --- command line ----------------------------------------------------------------------------


def loads(text: str):  # named like json.loads so argparse says "invalid loads value"
    return json.loads(text)


def build_parser(st: Standin, serve_mode: bool, device: str = "cuda") -> tuple[argparse.ArgumentParser, ...]:
    """(top-level parser, parser holding the flags) for this version on platform ``device``."""
    desc = "vLLM OpenAI-Compatible RESTful API server. (llmfleet stand-in)"
    if serve_mode:
        top = argparse.ArgumentParser(prog="vllm", description="vLLM CLI (llmfleet stand-in)")
        sub = top.add_subparsers(dest="subparser")
        p = sub.add_parser("serve", prog="vllm serve", description=desc)
        p.add_argument("model_tag", nargs="?", default=None)
    else:
        top = p = argparse.ArgumentParser(prog="api_server.py", description=desc)
    if st.harvest is not None:
        add_harvested_options(p, st.harvest["options"], device)
        return top, p
    for flag in sorted(st.flags):
        names = [flag] + (["-tp"] if flag == "--tensor-parallel-size" else [])
        kw: dict = {}
        if flag in BOOL_FLAGS:
            kw["action"] = "store_true"
        elif flag in INT_FLAGS:
            kw["type"] = int
        elif flag in FLOAT_FLAGS:
            kw["type"] = float
        elif flag in JSON_FLAGS:
            kw["type"] = loads
        if flag == "--dtype":
            kw["choices"] = DTYPE_CHOICES
        elif flag == "--kv-cache-dtype":
            kw["choices"] = KV_CACHE_DTYPES + (["fp8_inc"] if st.at_least("0.10.0") else [])
        elif flag == "--block-size":
            kw["type"] = int
            if not st.at_least("0.12.0"):
                kw["choices"] = BLOCK_SIZE_CHOICES
        elif flag == "--served-model-name":
            kw["nargs"] = "+"
        elif flag == "--max-model-len":
            kw["type"] = human_int
        p.add_argument(*names, **kw)
    return top, p


def add_harvested_options(p: argparse.ArgumentParser, options: dict[str, dict], device: str) -> None:
    """The options of a harvested record, as the release's parser declares them on platform
    ``device`` ("cuda", "npu": an option's ``device_choices`` where the record has them).

    llmfleet rebuilds the same parser in tasks/vllm/harvested.py; the stand-in keeps its own
    copy because it runs inside lab images and imports nothing from llmfleet."""
    types = {"int": human_int, "float": float, "json": loads, "str": None}
    for name, opt in options.items():
        names = [name, *opt.get("aliases", [])]
        if opt["value"] is None:
            p.add_argument(*names, action="store_true")
            if opt.get("negative"):
                p.add_argument(opt["negative"], action="store_false", dest=p._option_string_actions[name].dest)
            continue
        kw: dict = {}
        convert = types[opt["value"]]
        if convert is not None:
            kw["type"] = convert
        if opt.get("nargs") is not None:
            kw["nargs"] = opt["nargs"]
        choices = (opt.get("device_choices") or {}).get(device, opt.get("choices"))
        if choices is not None:
            kw["choices"] = [convert(c) if convert else c for c in choices]
        p.add_argument(*names, **kw)


def human_int(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmM]?)", text.strip())
    if not m:
        raise ValueError(text)
    mult = {"": 1, "k": 1000, "K": 1024, "m": 10**6, "M": 2**20}[m.group(2)]
    return int(m.group(1)) * mult


def strip_launcher(argv: list[str], ascend: bool) -> tuple[list[str], bool | None]:
    """Remove a "vllm serve" / "python3 -m vllm.entrypoints.openai.api_server" prefix.

    Returns (args, serve_mode) where serve_mode is None when no launcher was given.
    """
    if argv[:2] == ["vllm", "serve"]:
        return argv[2:], True
    if len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m" \
            and argv[2] == "vllm.entrypoints.openai.api_server":
        return argv[3:], False
    if ascend:
        first = argv[0] if argv else ""
        print(f'{STANDIN}: vllm-ascend images have no vLLM entrypoint: exec: "{first}": '
              "executable file not found in $PATH", file=sys.stderr)
        sys.exit(127)
    return argv, None


def fail(exc_type: str, message: str) -> None:
    """Die like vLLM does on a post-parse check: traceback tail on stderr, exit 1."""
    print("Traceback (most recent call last):\n  (llmfleet stand-in)", file=sys.stderr)
    print(f"{exc_type}: {message}", file=sys.stderr)
    sys.exit(1)


def parse_args(st: Standin, argv: list[str], ascend: bool) -> argparse.Namespace:
    args_list, serve_mode = strip_launcher(argv, ascend)
    if serve_mode is None:
        serve_mode = st.serve_entrypoint
    top, _ = build_parser(st, serve_mode, "npu" if ascend else "cuda")
    args = top.parse_args((["serve"] if serve_mode else []) + args_list)
    args.serve_mode = serve_mode
    model_tag = getattr(args, "model_tag", None)
    if serve_mode and args.model and not model_tag:
        log("WARNING", "argparse_utils.py:257", "With `vllm serve`, you should provide the model as a "
            "positional argument or in a config file instead of via the `--model` option. The "
            "`--model` option will be removed in a future version.")
    args.model = model_tag or args.model
    if not args.model:
        fail("ValueError", "llmfleet stand-in: no model given (it never downloads one)")
    post_parse_checks(st, args)
    return args


def post_parse_checks(st: Standin, args: argparse.Namespace) -> None:
    auto = getattr(args, "enable_auto_tool_choice", False)
    tool_parser = getattr(args, "tool_call_parser", None)
    if auto and not tool_parser and st.at_least("0.8.5"):
        fail("TypeError", "Error: --enable-auto-tool-choice requires --tool-call-parser")
    valid_tools = st.parsers(TOOL_PARSERS)
    if auto and tool_parser not in valid_tools:
        fail("KeyError", repr(f"invalid tool call parser: {tool_parser} (chose from {{ {','.join(valid_tools)} }})"))
    rparser = getattr(args, "reasoning_parser", None)
    if getattr(args, "enable_reasoning", False) and not rparser:
        fail("TypeError", "Error: --enable-reasoning requires --reasoning-parser")
    valid_reasoning = st.parsers(REASONING_PARSERS)
    if rparser and rparser not in valid_reasoning:
        fail("KeyError", repr(f"invalid reasoning parser: {rparser} (chose from {{ {','.join(valid_reasoning)} }})"))


# --- model directory -------------------------------------------------------------------------


class ModelError(Exception):
    pass


def check_safetensors(path: Path) -> int:
    """Read ``path`` fully and validate its safetensors layout; returns the byte count."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"{path.name}: truncated: {size} bytes, shorter than the 8-byte header length")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > 100_000_000 or 8 + hlen > size:
            raise ModelError(f"{path.name}: truncated or corrupt: header says {hlen} bytes, file has {size}")
        try:
            header = json.loads(fh.read(hlen).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path.name}: invalid safetensors header: {exc}") from None
        total = 8 + hlen
        while chunk := fh.read(1 << 20):  # read it all, as loading weights does
            total += len(chunk)
    if not isinstance(header, dict):
        raise ModelError(f"{path.name}: invalid safetensors header: not a JSON object")
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = math.prod(info["shape"])
            width = DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path.name}: tensor {name!r}: bad header entry {info!r}") from None
        if end < begin or end - begin != count * width:
            raise ModelError(f"{path.name}: tensor {name!r}: offsets {begin}..{end} do not fit "
                             f"shape {info['shape']} of {info['dtype']}")
        end_max = max(end_max, end)
    expected = 8 + hlen + end_max
    if total < expected:
        raise ModelError(f"{path.name}: truncated: {total} bytes, the header needs {expected} "
                         "(partial download?)")
    if total > expected:
        raise ModelError(f"{path.name}: {total - expected} trailing bytes after the tensor data")
    return total


def load_model(model: str, load_format: str | None) -> dict:
    """Validate the model directory like loading it would; return its config.json (or {})."""
    root = Path(model)
    if not root.is_dir():
        raise ModelError(f"model path {model} is not a directory (the stand-in never downloads)")
    config = {}
    if (root / "config.json").is_file():
        config = json.loads((root / "config.json").read_text())
    index = root / "model.safetensors.index.json"
    if index.is_file():
        listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(f for f in listed if not (root / f).is_file())
        if missing:
            raise ModelError(f"missing weight shard(s) listed in {index.name}: {', '.join(missing)}")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ModelError(f"Cannot find any model weights with `{model}`")
    if load_format == "dummy":
        return config
    started, total = time.monotonic(), 0
    for f in files:
        total += check_safetensors(f)
    log("INFO", "default_loader.py:262", f"Loading weights took {time.monotonic() - started:.2f} "
        f"seconds ({len(files)} file(s), {total} bytes)")
    return config


def derived_max_len(config: dict, args: argparse.Namespace) -> int | None:
    base = config.get("max_position_embeddings")
    if not base:
        return None
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    overrides = getattr(args, "hf_overrides", None) or {}
    rope = getattr(args, "rope_scaling", None) or overrides.get("rope_parameters") \
        or overrides.get("rope_scaling") or rope
    factor = rope.get("factor", 1) if rope.get("rope_type", rope.get("type")) == "yarn" else 1
    return int(overrides.get("max_position_embeddings", base) * factor)


# --- serving ---------------------------------------------------------------------------------


def log(level: str, where: str, message: str) -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [{where}] {message}", flush=True)


class Server:
    """State shared by request handlers."""

    def __init__(self, st: Standin, args: argparse.Namespace, config: dict) -> None:
        self.st, self.args, self.config = st, args, config
        names = getattr(args, "served_model_name", None) or [args.model]
        self.served = names
        key = getattr(args, "api_key", None) or os.environ.get("VLLM_API_KEY") or None
        if isinstance(key, list):  # nargs="+" from 0.2x: several keys are accepted
            key = key[0]
        self.tokens = [key] if key else []
        self.fail_health = os.environ.get("LLMFLEET_STANDIN_FAIL_HEALTH") == "1"
        self.metrics = vllm_metrics.Metrics(st.version, names[0])
        self.max_model_len = getattr(args, "max_model_len", None) or derived_max_len(config, args) or 32768
        self.default_kwargs = getattr(args, "default_chat_template_kwargs", None) or {}
        self.template_thinking = self._template_thinking()
        rp = getattr(args, "reasoning_parser", None)
        needs_flag = not st.at_least("0.9.0")
        self.reasoning_parser = rp if rp and (not needs_flag or getattr(args, "enable_reasoning", False)) else None
        self.auto_tools = bool(getattr(args, "enable_auto_tool_choice", False) and getattr(args, "tool_call_parser", None))
        self.created = int(time.time())

    def _template_thinking(self) -> str:
        """"kwargs": the template obeys enable_thinking; "off": it always closes the think block."""
        tpl = getattr(self.args, "chat_template", None)
        if not tpl:
            return "kwargs"
        text = Path(tpl).read_text() if Path(tpl).is_file() else tpl
        text = re.sub(r"\{#.*?#\}", "", text, flags=re.S)  # Jinja comments say nothing
        if "enable_thinking" in text:
            return "kwargs"
        # Qwen3 thinks unless the generation prompt already holds a closed think block.
        return "off" if "</think>" in text else "kwargs"

    def thinking(self, body: dict) -> bool:
        if self.template_thinking == "off":
            return False
        kwargs = {**self.default_kwargs, **(body.get("chat_template_kwargs") or {})}
        return bool(kwargs.get("enable_thinking", kwargs.get("thinking", True)))


def make_handler(srv: Server):
    st = srv.st

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "uvicorn"
        sys_version = ""

        def log_message(self, fmt: str, *a) -> None:  # uvicorn's access-log shape
            print(f'INFO:     {self.client_address[0]}:{self.client_address[1]} - "{self.requestline}" '
                  f"{a[1] if len(a) > 1 else ''}", flush=True)

        # -- plumbing
        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-LLMFleet-Standin", f"{STANDIN}/{st.version}")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj).encode())

        def _error(self, code: int, message: str, etype: str = "BadRequestError") -> None:
            self._json(code, {"object": "error", "message": message, "type": etype, "param": None, "code": code})

        def _authorized(self) -> bool:
            if not srv.tokens or not self.path.startswith("/v1"):
                return True
            if self.headers.get("Authorization") in [f"Bearer {t}" for t in srv.tokens]:
                return True
            self._json(401, {"error": "Unauthorized"})
            return False

        def _body(self) -> dict | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 10_000_000:
                self._error(413, "request body too large")
                return None
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as exc:
                self._error(400, f"invalid JSON: {exc}")
                return None
            if not isinstance(body, dict):
                self._error(400, "request body must be a JSON object")
                return None
            model = body.get("model")
            if model is not None and model not in srv.served:
                self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
                return None
            return body

        # -- routes
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if not self._authorized():
                return
            if path == "/health":
                if srv.fail_health:
                    self._json(500, {"error": "stand-in: health failure requested (LLMFLEET_STANDIN_FAIL_HEALTH=1)"})
                else:
                    self._send(200, b"")
            elif path == "/version":
                self._json(200, {"version": st.version})
            elif path == "/v1/models":
                data = [{"id": n, "object": "model", "created": srv.created, "owned_by": STANDIN,
                         "root": srv.args.model, "parent": None, "max_model_len": srv.max_model_len,
                         "permission": []} for n in srv.served]
                self._json(200, {"object": "list", "data": data})
            elif path == "/metrics":
                self._send(200, srv.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if not self._authorized():
                return
            if path == "/v1/chat/completions":
                body = self._body()
                if body is not None:
                    self._chat(body)
            elif path == "/v1/completions":
                body = self._body()
                if body is not None:
                    self._completion(body)
            else:
                self._json(404, {"detail": "Not Found"})

        # -- generation
        def _limit(self, body: dict) -> int | None:
            value = body.get("max_completion_tokens", body.get("max_tokens"))
            return int(value) if isinstance(value, int) and value > 0 else None

        def _chat(self, body: dict) -> None:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                self._error(400, "messages: field required (a non-empty list)")
                return
            tools = body.get("tools") or []
            choice = body.get("tool_choice", "auto" if tools else "none")
            if choice == "auto" and tools and not srv.auto_tools:
                self._error(400, '"auto" tool choice requires --enable-auto-tool-choice and '
                                 "--tool-call-parser to be set")
                return
            thinking = srv.thinking(body)
            reasoning, content = None, ANSWER
            tool_calls = None
            if tools and choice != "none" and (srv.auto_tools or isinstance(choice, dict)):
                fn = tools[0].get("function", {})
                if isinstance(choice, dict):
                    fn = next((t["function"] for t in tools
                               if t.get("function", {}).get("name") == choice.get("function", {}).get("name")), fn)
                tool_calls = [{"id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}", "type": "function",
                               "function": {"name": fn.get("name", "tool"),
                                            "arguments": json.dumps(dummy_args(fn.get("parameters") or {}))}}]
                content = None
            if srv.reasoning_parser:
                if thinking:
                    reasoning = REASONING
                elif srv.reasoning_parser == "deepseek_r1" and content is not None:
                    # R1's parser expects the prompt to open <think>: with no </think> in the
                    # output, everything is taken as reasoning (Qwen3 non-thinking trap).
                    reasoning, content = content, None
            elif thinking:
                content = f"<think>\n{REASONING}\n</think>\n\n" + (content or "")
            limit = self._limit(body)
            finish = "tool_calls" if tool_calls else "stop"
            if limit is not None:
                words = (content or "").split(" ")
                if len(words) > limit:
                    content, finish = " ".join(words[:limit]), "length"
            prompt_tokens = sum(len(str(m.get("content") or "").split()) + 4 for m in messages)
            gen_tokens = len((reasoning or "").split()) + len((content or "").split()) + (8 if tool_calls else 0)
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            model = srv.served[0]
            srv.metrics.start()
            started = time.monotonic()
            if body.get("stream"):
                ttft = self._stream_chat(rid, model, reasoning, content, tool_calls, finish,
                                         prompt_tokens, gen_tokens, body, started)
            else:
                message = {"role": "assistant", "content": content, "tool_calls": tool_calls or []}
                for f in st.reasoning_fields():
                    message[f] = reasoning
                self._json(200, {
                    "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": finish, "stop_reason": None}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": gen_tokens,
                              "total_tokens": prompt_tokens + gen_tokens},
                })
                ttft = time.monotonic() - started
            srv.metrics.finish(prompt_tokens, gen_tokens, finish if finish != "tool_calls" else "stop",
                               ttft, time.monotonic() - started)

        def _stream_chat(self, rid, model, reasoning, content, tool_calls, finish, ptoks, gtoks,
                         body, started) -> float:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.send_header("X-LLMFleet-Standin", f"{STANDIN}/{st.version}")
            self.end_headers()
            self.close_connection = True
            created = int(time.time())
            ttft = None

            def chunk(delta: dict, reason=None, usage=None, choices=True) -> None:
                obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]
                       if choices else []}
                if usage is not None:
                    obj["usage"] = usage
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            chunk({"role": "assistant", "content": ""})
            for word in (reasoning.split(" ") if reasoning else []):
                ttft = ttft if ttft is not None else time.monotonic() - started
                chunk({f: word + " " for f in st.reasoning_fields()})
            for word in (content.split(" ") if content else []):
                ttft = ttft if ttft is not None else time.monotonic() - started
                chunk({"content": word + " "})
            if tool_calls:
                ttft = ttft if ttft is not None else time.monotonic() - started
                chunk({"tool_calls": [{"index": 0, **tool_calls[0]}]})
            chunk({}, reason=finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk({}, usage={"prompt_tokens": ptoks, "completion_tokens": gtoks,
                                 "total_tokens": ptoks + gtoks}, choices=False)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            return ttft if ttft is not None else time.monotonic() - started

        def _completion(self, body: dict) -> None:
            prompt = body.get("prompt")
            if not isinstance(prompt, (str, list)) or not prompt:
                self._error(400, "prompt: field required")
                return
            text, finish = ANSWER, "stop"
            limit = self._limit(body)
            if limit is not None and body.get("ignore_eos"):
                # As vLLM: no stop at EOS, so exactly max_tokens tokens (benchmarks rely on it).
                words = ANSWER.split(" ")
                text = " ".join(words[i % len(words)] for i in range(min(limit, MAX_GENERATED)))
                finish = "length"
            elif limit is not None and len(text.split(" ")) > limit:
                text, finish = " ".join(text.split(" ")[:limit]), "length"
            ptoks, gtoks = len(str(prompt).split()), len(text.split())
            rid, model = f"cmpl-{uuid.uuid4().hex}", srv.served[0]
            srv.metrics.start()
            started = time.monotonic()
            if body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Connection", "close")
                self.send_header("X-LLMFleet-Standin", f"{STANDIN}/{st.version}")
                self.end_headers()
                self.close_connection = True
                for i, word in enumerate(text.split(" ")):
                    last = i == len(text.split(" ")) - 1
                    obj = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "text": word + ("" if last else " "), "logprobs": None,
                                        "finish_reason": finish if last else None}]}
                    self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                    self.wfile.flush()
                if (body.get("stream_options") or {}).get("include_usage"):
                    obj = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                           "choices": [], "usage": {"prompt_tokens": ptoks, "completion_tokens": gtoks,
                                                    "total_tokens": ptoks + gtoks}}
                    self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            else:
                self._json(200, {"id": rid, "object": "text_completion", "created": int(time.time()),
                                 "model": model, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                              "finish_reason": finish}],
                                 "usage": {"prompt_tokens": ptoks, "completion_tokens": gtoks,
                                           "total_tokens": ptoks + gtoks}})
            elapsed = time.monotonic() - started
            srv.metrics.finish(ptoks, gtoks, finish, elapsed, elapsed)

    return Handler


def dummy_args(schema: dict) -> dict:
    """Arguments satisfying a JSON schema's required properties, deterministically."""
    props = schema.get("properties") or {}
    out = {}
    for name in schema.get("required") or list(props)[:1]:
        kind = (props.get(name) or {}).get("type", "string")
        enum = (props.get(name) or {}).get("enum")
        out[name] = enum[0] if enum else {"integer": 1, "number": 1.0, "boolean": True,
                                          "array": [], "object": {}}.get(kind, "stand-in")
    return out


def installed_transformers() -> str | None:
    """The transformers version installed in this image (None when absent)."""
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def check_transformers(config: dict) -> None:
    """Refuse a GLM-5 checkpoint when transformers is older than 5.2, as vLLM does: its config
    loading goes through transformers, which does not know the model type before 5.2."""
    model_type = config.get("model_type")
    if model_type not in GLM5_MODEL_TYPES:
        return
    have = installed_transformers()
    if have is not None and vkey(have) >= vkey(GLM5_MIN_TRANSFORMERS):
        log("INFO", "config.py:620", f"transformers {have} knows model type {model_type} (stand-in check)")
        return
    fail("ValueError", f"The checkpoint you are trying to load has model type `{model_type}` but "
         "Transformers does not recognize this architecture. This could be because of an issue with "
         "the checkpoint, or because your version of Transformers is out of date. (llmfleet stand-in: "
         f"transformers {have or 'not installed'}; {model_type} needs >= {GLM5_MIN_TRANSFORMERS})")


class _HTTPServer(ThreadingHTTPServer):
    # uvicorn listens with a backlog of 2048; socketserver's 5 drops benchmark bursts.
    request_queue_size = 1024


def prepare_model(args: argparse.Namespace) -> dict:
    """Load and check the model as vLLM's start-up does; exit as vLLM on a bad one. Returns its config."""
    try:
        config = load_model(args.model, getattr(args, "load_format", None))
    except ModelError as exc:
        fail("RuntimeError", str(exc))
    check_transformers(config)
    derived = derived_max_len(config, args)
    mml = getattr(args, "max_model_len", None)
    if mml and derived and mml > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":
        fail("ValueError", f"User-specified max_model_len ({mml}) is greater than the derived "
             f"max_model_len (max_position_embeddings={config.get('max_position_embeddings')} or "
             "model_max_length=None in model's config.json). To allow overriding this maximum, "
             "set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1")
    return config


def run_headless_worker(args: argparse.Namespace, topo: vllm_rendezvous.Topology) -> int:
    """Node rank > 0 (``--headless``): join the head's world, load the weights, serve no HTTP and
    stay up, even once the head is gone, until signalled."""
    if not getattr(args, "headless", False):
        fail("ValueError", f"llmfleet stand-in: node rank {topo.node_rank} of {topo.nnodes} without --headless "
             "(real vLLM starts an API server and an engine core there, which fail at the first collective)")
    count = getattr(args, "api_server_count", None)
    if count is not None and count > 0:  # vLLM 0.32.0 entrypoints/cli/serve.py, before anything starts
        fail("ValueError", f"--api-server-count={count} cannot be used with --headless (no API servers are "
             "started in headless mode).")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        vllm_rendezvous.run_worker(topo, vllm_rendezvous.timeout_s(args), log, lambda: prepare_model(args), stop)
    except vllm_rendezvous.RendezvousError as exc:
        fail(exc.kind, str(exc))
    return 0


def flags_path() -> Path:
    env = os.environ.get("VLLM_STANDIN_FLAGS")
    if env:
        return Path(env)
    for cand in (HERE / "vllm-flags-by-version.tsv", HERE.parents[1] / "data" / "vllm-flags-by-version.tsv"):
        if cand.is_file():
            return cand
    raise SystemExit(f"{STANDIN}: flag table not found; set VLLM_STANDIN_FLAGS")


def main(argv: list[str] | None = None) -> int:
    version = os.environ.get("VLLM_STANDIN_VERSION")
    if not version:
        print(f"{STANDIN}: VLLM_STANDIN_VERSION is not set (the image tag's vLLM version)", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:3] == ["vllm", "bench", "serve"]:
        sys.path.insert(0, str(HERE))
        import vllm_bench  # the stand-in benchmark client, shipped next to this file

        return vllm_bench.main(argv[3:])
    harvest = os.environ.get("VLLM_STANDIN_HARVEST")
    st = Standin(version, None if harvest else flags_path(), Path(harvest) if harvest else None)
    ascend = os.environ.get("LLMFLEET_STANDIN_ASCEND") == "1"
    args = parse_args(st, argv, ascend)
    where = "api_server.py:1043"
    log("INFO", where, f"vLLM API server version {st.version} (llmfleet stand-in, not vLLM"
        f"{'; vllm-ascend' if ascend else ''})")
    given = {k: ("<redacted>" if k == "api_key" else v) for k, v in vars(args).items()
             if v not in (None, False) and k != "serve_mode"}
    log("INFO", where, f"non-default args: {given}")
    try:
        topo = vllm_rendezvous.topology(args, st.version)
    except vllm_rendezvous.RendezvousError as exc:
        fail(exc.kind, str(exc))
    if topo is not None and topo.node_rank > 0:
        return run_headless_worker(args, topo)
    store = None
    if topo is not None:
        try:
            store = vllm_rendezvous.join_as_head(topo, vllm_rendezvous.timeout_s(args), log)
        except vllm_rendezvous.RendezvousError as exc:
            fail(exc.kind, str(exc))
    config = prepare_model(args)
    delay = float(os.environ.get("VLLM_STANDIN_STARTUP_DELAY_S") or 0)
    if delay > 0:
        time.sleep(min(delay, 3600))
    srv = Server(st, args, config)
    host = getattr(args, "host", None) or "0.0.0.0"
    port = getattr(args, "port", None) or 8000
    httpd = _HTTPServer((host, port), make_handler(srv))
    httpd.daemon_threads = True

    def stop(*_):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = {"rc": 0}
    if store is not None:
        def worker_lost(rank: int, peer: str) -> None:
            log("ERROR", "core.py:1034", f"EngineCore encountered a fatal error: node rank {rank} ({peer}) left "
                "the torch.distributed world (llmfleet stand-in: real vLLM fails at its next collective)")
            exit_code["rc"] = 1
            stop()

        store.watch_workers(worker_lost)
    if st.at_least("0.11.0"):
        log("INFO", "api_server.py:1971", f"Starting vLLM API server 0 on http://{host}:{port}")
    else:
        log("INFO", "api_server.py:1081", f"Starting vLLM API server on http://{host}:{port}")
    print(f"INFO:     Started server process [{os.getpid()}]", flush=True)
    print("INFO:     Waiting for application startup.", flush=True)
    print("INFO:     Application startup complete.", flush=True)
    print(f"INFO:     Uvicorn running on http://{host}:{port} (Press CTRL+C to quit)", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        if store is not None:
            store.close()
        print("INFO:     Shutting down", flush=True)
    return exit_code["rc"]


if __name__ == "__main__":
    sys.exit(main())
