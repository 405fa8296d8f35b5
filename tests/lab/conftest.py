"""The lab end-to-end suite: one lab for the session (hosts of every accelerator profile).

These tests need root and systemd-nspawn. `.ci/run` sets LLMFLEET_REQUIRE_LAB=1 so a machine
that cannot run them fails loudly instead of skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

from .helpers import own_lab

# index -> profile of the session lab; tests pick hosts by group (profile) with --limit.
SESSION_PROFILES = ["rtx4090x8", "ascend910b", "rtx4090-drv530", "h100x8"]


def _lab_possible() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    for tool in ("systemd-nspawn", "debootstrap", "docker-registry", "nft"):
        if not shutil.which(tool):
            return f"{tool} is not installed (see .ci/run)"
    return None


@pytest.fixture(scope="session", autouse=True)
def _lab_allowed():
    reason = _lab_possible()
    if reason:
        if os.environ.get("LLMFLEET_REQUIRE_LAB") == "1":
            pytest.fail(f"lab suite required but impossible here: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab():
    """A session lab named 't' (kept apart from a user's own 'lab'); one per pytest-xdist worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    with own_lab("t" + worker, SESSION_PROFILES) as state:
        yield state


@pytest.fixture(scope="session")
def inventory(lab):
    return lab["inventory"]
