"""Container images: pinned pulls through the configured mirrors.

Docker's own ``registry-mirrors`` covers Docker Hub only. For other registries (quay.io for
vllm-ascend) ``image_mirrors`` maps a registry host to a mirror: the image is pulled from the
mirror and tagged under its real name, which is what the unit file runs.

Settings (host data, prefix ``image_``): ``tasks.settings.image.ImageSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation
from tasks.settings.image import ImageSettings

from tasks.progress_docker import pull_command

DEFAULTS = ImageSettings.defaults()


def split_registry(image: str) -> tuple[str | None, str]:
    """``quay.io/ascend/vllm-ascend:v1`` -> ("quay.io", "ascend/vllm-ascend:v1"); Docker Hub -> (None, ...)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, image


def check_pinned(image: str) -> None:
    name, _, tag = image.rpartition(":")
    if "@sha256:" in image:
        return
    if not name or "/" in tag or not tag:
        raise ValueError(f"image {image!r}: must be pinned to a tag or digest (NAME:TAG)")
    if tag == "latest":
        raise ValueError(f"image {image!r}: 'latest' is not a pin; name a version tag")


class DockerImages(FactBase):
    """
    Local Docker images as ``{"repo:tag": "sha256:id"}`` (empty when Docker is absent).
    """

    default = dict
    requires_command = "docker"

    def command(self) -> str:
        return "docker images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' 2>/dev/null || true"

    def process(self, output):
        images = {}
        for line in output:
            parts = line.split()
            if len(parts) == 2 and not parts[0].endswith(":<none>"):
                images[parts[0]] = parts[1]
        return images


@operation()
def pulled(image: str, mirrors: dict[str, str] | None = None, present: dict[str, str] | None = None):
    """
    Make sure a pinned image is present locally, pulling it through a mirror where one is set.

    + image: the pinned image reference (``vllm/vllm-openai:v0.10.1.1``)
    + mirrors: registry host -> mirror host (defaults to host data ``image_mirrors``)
    + present: the DockerImages fact, when the caller already has it (saves a round trip)

    Example:

    .. code:: python

        image.pulled(image="vllm/vllm-openai:v0.10.1.1")
    """
    check_pinned(image)
    images = present if present is not None else host.get_fact(DockerImages)
    if image in images:
        host.noop(f"image {image} is present")
        return
    mirrors = ImageSettings.of(host).image_mirrors if mirrors is None else mirrors
    registry, path = split_registry(image)
    # The pull keeps a progress state file the run and deploys/status.py show (tasks/progress_docker.py).
    if registry and registry in mirrors:
        source = f"{mirrors[registry]}/{path}"
        yield (f"{{ {pull_command(source, f'image {image}')}; }} && docker tag {shlex.quote(source)} "
               f"{shlex.quote(image)} && docker rmi {shlex.quote(source)} >/dev/null")
    else:
        yield pull_command(image, f"image {image}")
