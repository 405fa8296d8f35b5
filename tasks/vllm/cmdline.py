"""Render a serving spec into the vLLM container's command line, for the spec's vLLM version.

Every spec field either renders as a flag the version has (per the flag table), is translated
for the version with a visible warning (a removed flag dropped or rewritten), or is refused
with a :class:`~tasks.spec.SpecError` that says why and what to do. For a release whose parser
llmfleet harvested (tasks/data/vllm-flags), each value is checked against the option's kind and
choices, ``false`` renders the option's ``--no-`` form, and the whole command line is parsed
with that release's options before it is returned. The API key never appears
in argv: vLLM reads ``VLLM_API_KEY`` from the environment, which the service task fills from an
environment file (``Rendered.secret_env_names``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tasks.spec import ServingSpec, SpecError
from tasks.vllm import multinode
from tasks.vllm import versions as vv
from tasks.vllm.harvested import DEVICE_TYPE
from tasks.vllm.multinode import Role

#: Where the service mounts the model directory inside the container.
MODEL_DIR = "/model"
#: Where the service mounts chat template files inside the container.
CHAT_TEMPLATE_DIR = "/llmfleet/chat-templates"
NON_THINKING_KWARGS = {"enable_thinking": False}


@dataclass(frozen=True)
class Rendered:
    """The container's command line and environment for one spec.

    + args: container args after the image (``IMAGE --model /model ...``; images without a
      vLLM entrypoint get ``vllm serve /model ...``)
    + env: non-secret environment
    + secret_env_names: environment names the service must fill from secrets (VLLM_API_KEY)
    + warnings: translations applied for this version, for the operator to see
    + files: container path -> control-machine path of files to mount (chat templates)
    """

    args: list[str]
    env: dict[str, str]
    secret_env_names: list[str]
    warnings: list[str]
    files: dict[str, str] = field(default_factory=dict)
    version: vv.Version | None = None
    listed_release: vv.Version | None = None

    def flags(self) -> list[str]:
        """The flags (tokens starting with '-') among ``args``."""
        return [a.split("=", 1)[0] for a in self.args if a.startswith("-")]


class _Builder:
    def __init__(self, spec: ServingSpec) -> None:
        self.spec = spec
        self.v = spec.version
        table = vv.load_flag_table()
        try:
            self.listed = table.listed_release(self.v)
        except ValueError as exc:
            raise SpecError("vllm_version", str(exc)) from None
        self.flags = table.flags_for(self.v)
        self.harvest = table.harvest_for(self.v)
        #: vLLM's device type on the spec's accelerator: some choices follow the platform
        self.device = DEVICE_TYPE[spec.accelerator]
        self.args: list[str] = []
        self.env: dict[str, str] = {}
        self.secret_env: list[str] = []
        self.warnings: list[str] = []
        self.files: dict[str, str] = {}
        if self.listed == table.newest and self.v > table.newest:
            self.warnings.append(f"vLLM {self.v} is newer than the flag table's last release "
                                 f"{table.newest}; assuming its flags")

    def add(self, fld: str, flag: str, *values: object) -> None:
        if flag not in self.flags:
            raise SpecError(fld, f"{flag} does not exist in vLLM {self.v} (flag table: "
                                 f"{self.listed}); use an image whose vLLM has it or unset {fld}")
        self.check_values(fld, flag, [str(v) for v in values])
        self.args.append(flag)
        self.args.extend(str(v) for v in values)

    def check_values(self, fld: str, flag: str, values: list[str]) -> None:
        """Refuse values the harvested parser of this release would refuse (kind, choices)."""
        opt = self.harvest.option(flag) if self.harvest else None
        problem = opt.check(values, self.device) if opt else None
        if problem:
            raise SpecError(fld, f"vLLM {self.v} refuses it: {problem}")

    def negative(self, fld: str, flag: str) -> None:
        """Render the ``--no-`` form of boolean ``flag`` (known only from a harvested parser)."""
        neg = self.harvest.negative(flag) if self.harvest else None
        if neg is None:
            why = (f"vLLM {self.v}'s {flag} has no --no- form" if self.harvest else
                   f"vLLM {self.v}'s parser is not harvested (tasks/data/vllm-flags; "
                   f"python -m tasks.vllm.harvest {self.listed}), so no --no- form of {flag} is known")
            raise SpecError(fld, f"false cannot be rendered: {why}; leave it unset for vLLM's default")
        self.args.append(neg)

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def render(spec: ServingSpec, *, model_dir: str = MODEL_DIR, role: "Role | None" = None) -> Rendered:
    """Render ``spec`` for its vLLM version.

    + spec: a validated serving spec
    + model_dir: the model's path inside the container
    + role: the host's place in a multi-node replica (``tasks.vllm.multinode``); None: one host

    Raises SpecError for a field the version cannot express. Example::

        r = render(load_spec("qwen30b"))
        docker_args = [*r.args]   # after the image reference
    """
    b = _Builder(spec)
    s, v = spec, b.v

    if not s.model.pinned:
        b.warn(f"model.revision {s.model.revision!r} is a branch: the weights can change under a "
               "running fleet; pin a commit id (serve_model__revision)")

    if s.image.has_vllm_entrypoint:
        b.add("model", "--model", model_dir)
    else:
        b.args.extend([*vv.SERVE_LAUNCHER, model_dir])
    b.add("served_model_name", "--served-model-name", s.served_model_name)
    b.add("host", "--host", s.host)
    b.add("port", "--port", s.port)

    _parallelism(b, s)
    if role is not None:
        if any(t.split("=", 1)[0] == "--distributed-executor-backend" for t in s.extra_args):
            raise SpecError("extra_args", "--distributed-executor-backend is rendered for a multi-node replica "
                            "(mp where the image's vLLM has --nnodes, else ray); leave it out")
        for flag, values in multinode.role_flags(role, multinode.native(s)):
            b.add("nodes", flag, *values)
    _engine(b, s)
    _reasoning_and_tools(b, s)
    _thinking(b, s)
    _rope(b, s)
    _environment(b, s)
    if role is not None:  # the recipe's extra_env wins (an operator's HCCL_BUFFSIZE)
        for key, value in multinode.network_env(s, role).items():
            b.env.setdefault(key, value)
    _extra_args(b, s)

    unknown = [f for f in (a.split("=", 1)[0] for a in b.args if a.startswith("-")) if f not in b.flags]
    if unknown:  # a bug here, not in the spec: every path above checks its flag
        raise SpecError("extra_args", f"rendered flags missing from vLLM {v}: {', '.join(unknown)}")
    if b.harvest is not None:  # the whole line, as the release's own parser would read it
        launcher = list(vv.SERVE_LAUNCHER)
        positional = b.args[:len(launcher)] == launcher
        try:
            b.harvest.parse(b.args[len(launcher):] if positional else b.args, positional_model=positional,
                            device=b.device)
        except ValueError as exc:
            raise SpecError("extra_args", str(exc)) from None
    return Rendered(args=b.args, env=b.env, secret_env_names=b.secret_env, warnings=b.warnings,
                    files=b.files, version=v, listed_release=b.listed)


def _parallelism(b: _Builder, s: ServingSpec) -> None:
    b.add("tensor_parallel_size", "--tensor-parallel-size", s.tensor_parallel_size)
    if s.pipeline_parallel_size > 1:
        b.add("pipeline_parallel_size", "--pipeline-parallel-size", s.pipeline_parallel_size)
    if s.data_parallel_size > 1:
        b.add("data_parallel_size", "--data-parallel-size", s.data_parallel_size)
    if s.enable_expert_parallel:
        b.add("enable_expert_parallel", "--enable-expert-parallel")


def _engine(b: _Builder, s: ServingSpec) -> None:
    v = b.v
    if s.dtype != "auto":
        b.add("dtype", "--dtype", s.dtype)
    if s.quantization:
        b.add("quantization", "--quantization", s.quantization)
    if s.kv_cache_dtype != "auto":
        b.add("kv_cache_dtype", "--kv-cache-dtype", s.kv_cache_dtype)
    if s.max_model_len:
        b.add("max_model_len", "--max-model-len", s.max_model_len)
    b.add("gpu_memory_utilization", "--gpu-memory-utilization", s.gpu_memory_utilization)
    if s.block_size is not None:
        if v < vv.BLOCK_SIZE_ANY_FROM and s.block_size not in vv.BLOCK_SIZE_CHOICES:
            raise SpecError("block_size", f"vLLM {v} accepts only "
                            f"{', '.join(map(str, vv.BLOCK_SIZE_CHOICES))} (any int > 0 from "
                            f"{vv.BLOCK_SIZE_ANY_FROM}); got {s.block_size}")
        b.add("block_size", "--block-size", s.block_size)
    if s.max_num_seqs:
        b.add("max_num_seqs", "--max-num-seqs", s.max_num_seqs)
    if s.max_num_batched_tokens:
        b.add("max_num_batched_tokens", "--max-num-batched-tokens", s.max_num_batched_tokens)
    for fld, flag in (("enable_chunked_prefill", "--enable-chunked-prefill"),
                      ("enable_prefix_caching", "--enable-prefix-caching")):
        value = getattr(s, fld)
        if value is False:
            b.negative(fld, flag)
        elif value:
            b.add(fld, flag)
    if s.enforce_eager:
        b.add("enforce_eager", "--enforce-eager")
    if s.disable_custom_all_reduce:
        b.add("disable_custom_all_reduce", "--disable-custom-all-reduce")
    if s.trust_remote_code:
        b.add("trust_remote_code", "--trust-remote-code")
    if s.swap_space is not None:
        if "--swap-space" in b.flags:
            b.add("swap_space", "--swap-space", _num(s.swap_space))
            if v >= vv.V("0.8.0"):
                b.warn("swap_space: the V1 engine (default from 0.8.0) only sanity-checks "
                       "--swap-space; no KV blocks are swapped to host memory")
        else:
            b.warn(f"swap_space dropped: {vv.REMOVED_FLAGS['--swap-space'].why}")
    if s.attention_backend:
        if "--attention-backend" in b.flags:
            b.add("attention_backend", "--attention-backend", s.attention_backend)
        elif v < vv.ATTENTION_BACKEND_ENV_REMOVED_IN:
            b.env[vv.ATTENTION_BACKEND_ENV] = s.attention_backend
        else:  # pragma: no cover - the table has the flag wherever the env is gone
            raise SpecError("attention_backend", f"vLLM {v} has neither the env nor the flag")
    if s.log_requests:
        if "--enable-log-requests" in b.flags:
            b.add("log_requests", "--enable-log-requests")
        # before 0.10.1 request logging is on by default: nothing to add
    elif "--enable-log-requests" not in b.flags and "--disable-log-requests" in b.flags:
        # Up to 0.10.0 vLLM logs every prompt unless told not to.
        b.add("log_requests", "--disable-log-requests")


def _reasoning_and_tools(b: _Builder, s: ServingSpec) -> None:
    v = b.v
    if s.reasoning_parser:
        _need_parser(b, "reasoning_parser", "reasoning", s.reasoning_parser)
        if v < vv.ENABLE_REASONING_REQUIRED_BEFORE:
            b.add("reasoning_parser", "--enable-reasoning")
        b.add("reasoning_parser", "--reasoning-parser", s.reasoning_parser)
    if s.tool_call_parser:
        _need_parser(b, "tool_call_parser", "tool", s.tool_call_parser)
        b.add("tool_call_parser", "--tool-call-parser", s.tool_call_parser)
    if s.enable_auto_tool_choice:
        b.add("enable_auto_tool_choice", "--enable-auto-tool-choice")


def _need_parser(b: _Builder, fld: str, kind: str, name: str) -> None:
    if not vv.parser_available(kind, name, b.v):
        table = vv.REASONING_PARSERS if kind == "reasoning" else vv.TOOL_PARSERS
        have = ", ".join(vv.parsers_available(kind, b.v)) or "none"
        since = f"needs vLLM >= {table[name]}" if name in table else "is not registered"
        raise SpecError(fld, f"{kind} parser {name!r} {since}; vLLM {b.v} has: {have}")


def _thinking(b: _Builder, s: ServingSpec) -> None:
    t = s.thinking
    template_arg = None
    if t.chat_template:
        container_path = f"{CHAT_TEMPLATE_DIR}/{t.chat_template.rsplit('/', 1)[-1]}"
        b.files[container_path] = t.chat_template
        template_arg = container_path
    if not t.default:
        if "--default-chat-template-kwargs" in b.flags:
            b.add("thinking.default", "--default-chat-template-kwargs", json.dumps(NON_THINKING_KWARGS))
        elif template_arg is None:
            raise SpecError("thinking.default", f"vLLM {b.v} has no --default-chat-template-kwargs "
                            "(0.14.0+): set thinking.chat_template to a non-thinking template (e.g. "
                            "templates/chat/qwen3_nonthinking.jinja) or use a newer image")
    if template_arg:
        b.add("thinking.chat_template", "--chat-template", template_arg)


def _rope(b: _Builder, s: ServingSpec) -> None:
    r = s.rope_scaling
    if r is None:
        return
    params: dict[str, object] = {"rope_type": r.rope_type, "factor": r.factor,
                                 "original_max_position_embeddings": r.original_max_position_embeddings}
    if b.v < vv.ROPE_VIA_HF_OVERRIDES_FROM:
        b.add("rope_scaling", "--rope-scaling", json.dumps(params))
        if r.rope_theta is not None:
            b.add("rope_scaling.rope_theta", "--rope-theta", _num(r.rope_theta))
        return
    if r.rope_theta is not None:
        params["rope_theta"] = int(r.rope_theta) if float(r.rope_theta).is_integer() else r.rope_theta
    else:
        b.warn("rope_scaling.rope_theta unset: vLLM's context-extension example puts rope_theta "
               "inside rope_parameters; set it (Qwen3: 1000000)")
    b.add("rope_scaling", "--hf-overrides", json.dumps({"rope_parameters": params}))
    b.warn(f"rope_scaling: --rope-scaling/--rope-theta were removed in "
           f"{vv.ROPE_VIA_HF_OVERRIDES_FROM}; rendered as --hf-overrides rope_parameters")


def _environment(b: _Builder, s: ServingSpec) -> None:
    v = b.v
    for key, value in s.extra_env.items():
        if key == vv.MODELSCOPE_ENV:
            if v >= vv.MODELSCOPE_ENV_REMOVED_IN:
                b.warn(f"extra_env.{key} dropped: vLLM {v} does not read it (before "
                       f"{vv.MODELSCOPE_ENV_REMOVED_IN} only); llmfleet downloads weights itself")
                continue
            if value.lower() not in ("true", "false"):
                raise SpecError(f"extra_env.{key}", f"vLLM reads only 'true' (case-insensitive); "
                                f"{value!r} would be ignored silently")
            value = value.lower()
        b.env[key] = value
    if s.accelerator == "ascend" and s.devices:
        b.env.setdefault("ASCEND_RT_VISIBLE_DEVICES", ",".join(map(str, s.devices)))
    if s.accelerator == "cpu":
        b.env.update(cpu_env(s))
    if s.api_key_secret:
        b.secret_env.append(vv.API_KEY_ENV)


def cpu_env(s: ServingSpec) -> dict[str, str]:
    """vLLM's CPU backend settings as the variables it reads (``accelerator: cpu``).

    HF_HUB_OFFLINE=1: the weights are mounted at /model, and a CPU host in a server room often
    has no route to a hub; vLLM must not try one at start-up."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(s.cpu.kvcache_space_gib), "VLLM_CPU_OMP_THREADS_BIND": s.cpu.threads_bind,
           "HF_HUB_OFFLINE": "1"}
    if s.cpu.reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(s.cpu.reserved_cpus)
    return env


def _extra_args(b: _Builder, s: ServingSpec) -> None:
    v = b.v
    toks = list(s.extra_args)
    i = 0
    while i < len(toks):
        tok = toks[i]
        flag, inline = (tok.split("=", 1) + [None])[:2] if tok.startswith("-") else (tok, None)
        if not tok.startswith("-"):
            raise SpecError("extra_args", f"{tok!r} follows no flag; write flags and values in pairs")
        values: list[str] = [] if inline is None else [inline]
        j = i + 1
        while inline is None and j < len(toks) and not toks[j].startswith("-"):
            values.append(toks[j])
            j += 1
        i = j
        removal = vv.REMOVED_FLAGS.get(flag)
        if flag == "--enable-reasoning":
            if not s.reasoning_parser:
                raise SpecError("extra_args", "--enable-reasoning needs reasoning_parser; set "
                                "reasoning_parser (it also renders --enable-reasoning where needed)")
            if v >= vv.ENABLE_REASONING_REQUIRED_BEFORE:
                b.warn(f"extra_args: --enable-reasoning dropped for vLLM {v}: "
                       f"{vv.REMOVED_FLAGS[flag].why}")
            continue  # rendered from reasoning_parser where the version needs it
        if removal and v >= removal.removed_in:
            b.warn(f"extra_args: {flag} dropped for vLLM {v}: {removal.why}")
            continue
        if flag not in b.flags:
            source = (f"its harvested parser (tasks/data/vllm-flags/{b.listed}.json)" if b.harvest
                      else f"the flag table ({b.listed}, tasks/data/vllm-flags-by-version.tsv)")
            raise SpecError("extra_args", f"{flag} is not a flag of vLLM {v} per {source}; "
                            "llmfleet renders only flags the release has")
        b.check_values("extra_args", flag, values)
        b.args.append(flag)
        b.args.extend(values)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
