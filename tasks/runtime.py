"""Container runtime bring-up per accelerator: Docker + NVIDIA Container Toolkit, or Docker + CANN.

The accelerator comes from the recipe (``ServingSpec.accelerator``) or, for the bare
bring-up deploy, from host data ``runtime_accelerator`` (``tasks.settings.runtime``).
"""

from __future__ import annotations

from pyinfra.api import deploy

from .docker import install_docker
from .nvidia_toolkit import install_nvidia_toolkit
from .settings.runtime import ACCELERATORS


@deploy("Runtime")
def install_runtime(accelerator: str) -> None:
    """
    Bring a host's container runtime up for its accelerator.

    + accelerator: "nvidia", "ascend", "cpu" or "none" (cpu and none: Docker alone)

    Example:

    .. code:: python

        install_runtime("nvidia")
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator={accelerator!r}: allowed {', '.join(ACCELERATORS)}")
    if accelerator == "nvidia":
        toolkit = install_nvidia_toolkit()
        install_docker(nvidia_runtime=True, restart_after=toolkit)
    elif accelerator == "ascend":
        from .ascend import install_cann

        install_docker()
        install_cann()
    else:
        install_docker()
