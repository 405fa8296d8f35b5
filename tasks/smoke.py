"""The smoke deploy: Docker from the distribution, a templated unit running a small container
from the (mirror) registry, enabled and answering. The lab's first end-to-end proof.

Settings (host data, prefix ``smoke_``): ``tasks.settings.smoke.SmokeSettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from . import image
from .image import DockerImages
from tasks.settings.smoke import SmokeSettings

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DEFAULTS = SmokeSettings.defaults()
UNIT = "llmfleet-smoke"


@deploy("Smoke container", data_defaults=DEFAULTS)
def smoke_service() -> None:
    """
    Pull the smoke image, install its systemd unit, keep it enabled and running.

    Example:

    .. code:: python

        from tasks.smoke import smoke_service
        smoke_service()
    """
    settings = SmokeSettings.of(host)  # its image is checked to be pinned
    image.pulled(name="Pull smoke image", image=settings.smoke_image)
    unit = files.template(
        name="Smoke unit", src=str(TEMPLATES / "smoke.service.j2"), dest=f"/etc/systemd/system/{UNIT}.service",
        mode="644", name_=UNIT, image=settings.smoke_image, port=settings.smoke_port,
    )
    systemd.daemon_reload(name="Reload units", _if=unit.did_change)
    systemd.service(name="Restart smoke (unit changed)", service=UNIT, running=True, restarted=True,
                    enabled=True, _if=unit.did_change)
    systemd.service(name="Smoke running", service=UNIT, running=True, enabled=True)
    # Bounded wait for the answer: 30 tries, 1 s apart; a change only on the run that started it.
    server.shell(
        name="Smoke answers",
        commands=[f"curl -fsS -o /dev/null --retry 30 --retry-delay 1 --retry-all-errors "
                  f"--max-time 60 http://127.0.0.1:{settings.smoke_port}/"],
        _if=unit.did_change,
    )
