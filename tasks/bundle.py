"""Air-gapped images: ``docker save`` bundles made on one host, loaded on others.

A bundle is a ``docker save`` tar on the control machine (``bundles/<name>.tar``). It is made
on one host that has the image (deploys/bundle.py: save there, download here) and loaded on
hosts that cannot reach a registry or a package index: host data ``image_bundle`` makes
tasks/image_build.ensure_image load from it instead of pulling or building.

On the host, a saved tar has a sidecar ``<tar>.id`` holding the image ID it was saved from, so
saving again is a no-op until the image changes.

Settings (host data, prefix ``bundle_``): ``tasks.settings.bundle.BundleSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, OperationValueError, deploy, operation
from pyinfra.operations import files

from .image import DockerImages
from tasks.settings.bundle import BundleSettings

DEFAULTS = BundleSettings.defaults()
REMOTE_DIR: str = DEFAULTS["bundle_remote_dir"]
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def bundle_name(image: str) -> str:
    """A file name for an image's bundle: ``llmfleet/glm5:0123`` -> ``llmfleet_glm5-0123``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", image.replace(":", "-").replace("@", "-"))
    return name.strip("._-")[:128]


class SavedImageId(FactBase):
    """The image ID a bundle tar on the host was saved from (its ``.id`` sidecar), or None."""

    default = lambda self: None  # noqa: E731

    def command(self, path: str) -> str:
        q = shlex.quote(path)
        return f"test -s {q} && cat {q}.id 2>/dev/null || true"

    def process(self, output):
        value = "".join(output).strip()
        return value or None


@operation()
def saved(image: str, path: str, present: dict[str, str] | None = None):
    """
    ``docker save`` an image present on the host into a tar, unless that tar already holds it.

    + image: the image reference (must be present on the host)
    + path: the tar on the host; ``<path>.id`` records the image ID saved
    + present: the DockerImages fact, when the caller already has it

    Example:

    .. code:: python

        bundle.saved(image="llmfleet/glm5:0123456789ab", path="/var/cache/llmfleet/bundles/glm5.tar")
    """
    images = present if present is not None else host.get_fact(DockerImages)
    image_id = images.get(image)
    if image_id is None:
        raise OperationValueError(f"bundle: image {image} is not present on {host.name}; pull or build "
                                  "it there first (or pick a host that has it with --limit)")
    if host.get_fact(SavedImageId, path=path) == image_id:
        host.noop(f"{path} already holds {image} ({image_id[:19]})")
        return
    q, parent = shlex.quote(path), shlex.quote(str(Path(path).parent))
    # Written under a temporary name, so an interrupted save never looks complete.
    yield (f"mkdir -p {parent} && docker save -o {q}.partial {shlex.quote(image)} && mv {q}.partial {q}"
           f" && echo {shlex.quote(image_id)} > {q}.id")


@operation()
def loaded(bundle_path: str, image: str, remote_dir: str = REMOTE_DIR, present: dict[str, str] | None = None):
    """
    Make an image present from a bundle on the control machine: upload it and ``docker load``.

    Nothing is uploaded when the image is already present; the uploaded tar is removed after
    loading (bundles are tens of GB).

    + bundle_path: the ``docker save`` tar on the control machine
    + image: the image reference the bundle must hold
    + remote_dir: where the tar is uploaded on the host
    + present: the DockerImages fact, when the caller already has it

    Example:

    .. code:: python

        bundle.loaded(bundle_path="bundles/glm5.tar", image="llmfleet/glm5:0123456789ab")
    """
    images = present if present is not None else host.get_fact(DockerImages)
    if image in images:
        host.noop(f"image {image} is present")
        return
    if not Path(bundle_path).is_file():
        raise OperationValueError(f"image_bundle: {bundle_path} is not a file on the control machine "
                                  "(make one with deploys/bundle.py)")
    remote = f"{remote_dir.rstrip('/')}/{Path(bundle_path).name}"
    q, qi = shlex.quote(remote), shlex.quote(image)
    yield from files.directory._inner(path=remote_dir, mode="700")
    yield from files.put._inner(src=bundle_path, dest=remote, mode="600")
    yield (f"docker load -q -i {q} && {{ docker image inspect {qi} >/dev/null 2>&1 || "
           f"{{ echo 'bundle {Path(bundle_path).name} does not hold {image}' >&2; exit 1; }}; }} && rm -f {q}")


@deploy("Image bundle", data_defaults=DEFAULTS)
def make_bundle(image: str, name: str | None = None) -> str:
    """
    Save ``image`` on this host and download the tar to the control machine; return its local path.

    Run on ONE host (``--limit``): every host would write the same local file.

    + image: the image reference (present on the host)
    + name: bundle file name without .tar (default: from the image)

    Example:

    .. code:: python

        make_bundle("vllm/vllm-openai:v0.18.0", name="vllm-0.18.0")
    """
    name = name or bundle_name(image)
    if not _FILE_RE.match(name):
        raise ValueError(f"bundle_name: {name!r}: letters, digits, '.', '_', '-' only")
    settings = BundleSettings.of(host)
    remote = f"{settings.bundle_remote_dir.rstrip('/')}/{name}.tar"
    local = str(Path(settings.bundle_local_dir) / f"{name}.tar")
    saved(name=f"Save {image}", image=image, path=remote)
    files.get(name=f"Download {name}.tar", src=remote, dest=local, create_local_dir=True)
    return local
