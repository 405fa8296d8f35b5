"""Ascend CANN settings (host data, prefix ``ascend_``): read by tasks.ascend."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from tasks.settings.base import AbsPath, Allowed, Settings, Text, checked


Sha256 = checked(lambda v: bool(re.match(r"^[0-9a-f]{64}$", v)), "a sha256 (64 lowercase hex digits)",
                 "sha256 digests (64 lowercase hex digits)")


class AscendSettings(Settings):
    """Ascend CANN: every ``ascend_*`` key of the host data."""

    prefix: ClassVar[str] = "ascend_"
    title: ClassVar[str] = "Ascend CANN"

    ascend_cann_version: Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1),
                                   Allowed("a CANN version such as 8.3.RC2")] = Field(
        "8.3.RC2", description="CANN version to install (vllm-ascend v0.11.0 pairs with 8.3.RC2)")
    ascend_cann_source: str | None = Field(
        None, description="where the .run files are: an http(s) URL base, or a directory on the control machine")
    ascend_cann_packages: list[Literal["toolkit", "kernels", "nnal"]] = Field(
        ["toolkit", "kernels", "nnal"], description="which packages to install, in this order")
    ascend_cann_chip: str = Field(
        "910b", description="chip name in the kernels package file name")
    ascend_install_path: AbsPath = Field(
        "/usr/local/Ascend", description="--install-path of the installers")
    ascend_cann_sha256: dict[str, Sha256] = Field(
        {}, description="installer file name -> sha256 (64 hex digits); an installer without one is refused")
