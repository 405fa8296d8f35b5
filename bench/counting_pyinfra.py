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

from pyinfra.connectors.ssh import SSHConnector

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


LOG = os.environ.get("LLMFLEET_COUNT_LOG")  # optional: append each command here, one per line


def _counting(name: str, original):
    def wrapper(self, *args, **kwargs):
        COUNTS[self.host.name][name] += 1
        if LOG and args:
            with open(LOG, "a") as log:
                log.write(f"{self.host.name} {name} {str(args[0])[:160]!r}\n")
        return original(self, *args, **kwargs)

    return wrapper


SSHConnector.run_shell_command = _counting("commands", SSHConnector.run_shell_command)
SSHConnector.put_file = _counting("uploads", SSHConnector.put_file)
SSHConnector.get_file = _counting("downloads", SSHConnector.get_file)
atexit.register(lambda: print("LLMFLEET_COUNTS " + json.dumps({h: dict(c) for h, c in COUNTS.items()}),
                              file=sys.stderr, flush=True))

if __name__ == "__main__":
    from pyinfra_cli.main import main

    sys.argv = ["pyinfra", *sys.argv[1:]]
    sys.exit(main())
