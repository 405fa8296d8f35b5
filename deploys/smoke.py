"""Smoke deploy: the host's runtime + a templated unit running a small container. `pyinfra INV deploys/smoke.py`."""

from pyinfra import host

from tasks.runtime import install_runtime
from tasks.smoke import smoke_service

install_runtime(host.data.get("runtime_accelerator", "none"))
smoke_service()
