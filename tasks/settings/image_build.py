"""Image build settings (host data, prefix ``image_``): read by tasks.image_build."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks.settings.base import AbsPath, HttpUrl, Settings


class ImageBuildSettings(Settings):
    """Image build: every ``image_*`` key of the host data."""

    prefix: ClassVar[str] = "image_"
    title: ClassVar[str] = "Image build"

    image_pip_index_url: HttpUrl | None = Field(
        None, description="PyPI index (or mirror) for builds; overrides the spec's ``build.pip_index_url``")
    image_pip_extra_index_url: HttpUrl | None = Field(
        None, description="second package index for builds (the CPU torch wheels: PyTorch's CPU index or its "
                          "mirror); overrides the spec's ``build.pip_extra_index_url``")
    image_bundle: str | None = Field(
        None, description="path on the control machine of a ``docker save`` tar holding the image; loaded instead "
                          "of pulling/building")
    image_build_dir: AbsPath = Field(
        "/var/cache/llmfleet/build", description="where Dockerfiles are written on the host (one directory per tag)")
    image_recipe: str | None = Field(
        None, description="recipe whose image ``deploys/image.py`` pulls or builds (None: must be set)")
