"""pyinfra's own CLI, in-process, counting what crosses the wire per host: shell commands (facts and
operations alike) and file transfers. Prints one JSON line `LLMFLEET_COUNTS {...}` on exit.

Usage: python bench/counting_pyinfra.py INVENTORY DEPLOY [pyinfra options...]
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import time

from pyinfra.connectors.ssh import SSHConnector

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# optional: append each command here, one per line: seconds since start, phase (plan/exec), host, what
LOG = os.environ.get("LLMFLEET_COUNT_LOG")
START = time.monotonic()


def _counting(name: str, original):
    def wrapper(self, *args, **kwargs):
        COUNTS[self.host.name][name] += 1
        if LOG and args:
            phase = "exec" if self.state.is_executing else "plan"
            with open(LOG, "a") as log:
                log.write(f"{time.monotonic() - START:8.3f} {phase} {self.host.name} {name} "
                          f"{str(args[0])[:160]!r}\n")
        return original(self, *args, **kwargs)

    return wrapper


PREFIX = "LLMFLEET_COUNTS "


def counts_in(stderr: str) -> dict[str, dict[str, int]] | None:
    """host -> {"commands": n, "uploads": n, ...} from a counted run's stderr (None: not counted)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    return None


def install() -> None:
    """Count every command and transfer of pyinfra's SSH, @fake and @local connectors; print the
    counts on exit."""
    from pyinfra.connectors.fake import FakeConnector
    from pyinfra.connectors.local import LocalConnector

    for connector in (SSHConnector, FakeConnector, LocalConnector):
        connector.run_shell_command = _counting("commands", connector.run_shell_command)
        connector.put_file = _counting("uploads", connector.put_file)
        connector.get_file = _counting("downloads", connector.get_file)
    atexit.register(lambda: print(PREFIX + json.dumps({h: dict(c) for h, c in COUNTS.items()}),
                                  file=sys.stderr, flush=True))


if __name__ == "__main__":
    from pyinfra_cli.main import main

    install()

    sys.argv = ["pyinfra", *sys.argv[1:]]
    sys.exit(main())
