"""Smoke deploy: Docker + a templated unit running a small container. `pyinfra INV deploys/smoke.py`."""

from tasks.docker import install_docker
from tasks.smoke import smoke_service

install_docker()
smoke_service()
