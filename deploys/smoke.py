"""Smoke deploy: the host's runtime + a templated unit running a small container. `pyinfra INV deploys/smoke.py`."""

from pyinfra import host

from tasks.runtime import install_runtime
from tasks.settings.runtime import RuntimeSettings
from tasks.smoke import smoke_service

install_runtime(RuntimeSettings.of(host).runtime_accelerator or "none")
smoke_service()
