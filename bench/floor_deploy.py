"""Bench helper, not a recipe: the cheapest pyinfra run of a recipe's shape on the same lab hosts.

``LLMFLEET_FLOOR_COMMANDS`` trivial facts per host (``echo``), nothing else: what an SSH login,
pyinfra and that many round trips cost on this machine when no llmfleet check runs at all. Used by
``bench/noop_converge.py`` (the floor columns).
"""

import os

import tasks  # noqa: F401  (the transport llmfleet runs with: TCP_NODELAY on pyinfra's SSH sockets)
from pyinfra import host
from pyinfra.facts.server import Command

for i in range(int(os.environ.get("LLMFLEET_FLOOR_COMMANDS", "5"))):
    host.get_fact(Command, command=f"echo {i}")
