"""What llmfleet adds to pyinfra's CLI before it connects (installed by ``config.py``, which the CLI
runs from the working directory, the repository root, before it loads the inventory).

- A missing ``ssh_key`` file fails that host as a connection error: ``[host] ssh_key '/x': no such
  private key file ...``, like a wrong key or an unreachable host, while the other hosts go on.
  pyinfra 3.10 raises a plain ``PyinfraError`` from inside the connection greenlet instead, which
  gevent prints with its traceback before the CLI stops the whole run. There is no public hook
  between loading the inventory and connecting (``State.init`` drops callbacks registered earlier),
  so this wraps ``pyinfra.connectors.ssh.get_private_key``: pyinfra's internals, touched here only,
  their contract pinned by tests/unit/test_pyinfra_ext.py.
- ``--dry`` with ``-y``: ``-y`` skips change detection, which would leave a dry run showing nothing
  at all. ``--dry`` executes nothing, so change detection is turned back on (``State.check_for_changes``,
  the constructor's public argument) and said so: ``--diff`` shows the diffs and ``--json`` the
  changes; pyinfra's "Detected changes" table stays hidden under ``-y`` (its CLI decides that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MISSING_KEY = "no such private key file on the control machine (host data ssh_key, or --key)"


def _named_key_errors(original: Any) -> Any:
    from pyinfra.api.exceptions import ConnectError

    def get_private_key(state: Any, key_filename: str, key_password: Any = None) -> Any:
        path = Path(str(key_filename)).expanduser()
        if not path.is_absolute() and getattr(state, "cwd", None):
            path = Path(state.cwd) / path  # where pyinfra's loader looks for a relative key
        if not path.is_file():
            raise ConnectError(f"ssh_key {str(key_filename)!r}: {MISSING_KEY}")
        return original(state, key_filename=key_filename, key_password=key_password)

    get_private_key.llmfleet_wrapped = original  # type: ignore[attr-defined]
    return get_private_key


def name_missing_keys() -> None:
    """A missing ssh key file: a connection error of its host naming the file (once per process)."""
    from pyinfra.connectors import ssh

    if not hasattr(ssh.get_private_key, "llmfleet_wrapped"):
        ssh.get_private_key = _named_key_errors(ssh.get_private_key)


def dry_run_shows_changes(state: Any) -> str | None:
    """Under ``--dry -y`` turn pyinfra's change detection back on; returns what to tell the user."""
    import click

    ctx = click.get_current_context(silent=True)
    params = ctx.params if ctx is not None else {}
    if not (params.get("dry") and params.get("yes")) or state.check_for_changes:
        return None
    state.check_for_changes = True
    return ("--dry with -y: pyinfra's -y skips change detection, so a dry run would show nothing; llmfleet "
            "turned it back on (--dry executes nothing). --diff shows the diffs; pyinfra's 'Detected changes' "
            "table needs a run without -y")


def install() -> None:
    """The additions above, for the pyinfra run this process is in (``config.py`` calls it)."""
    from pyinfra import logger
    from pyinfra.context import ctx_state

    name_missing_keys()
    if ctx_state.isset():
        said = dry_run_shows_changes(ctx_state.get())
        if said:
            logger.warning(said)


__all__ = ["MISSING_KEY", "dry_run_shows_changes", "install", "name_missing_keys"]


# ---------------------------------------------------------------------------------------------
# Progress of long operations (tasks/progress.py): reads beside a running operation
# ---------------------------------------------------------------------------------------------
def watch_long_operations(state: Any, interval_of: Any, command: str, lines_of: Any, max_s: float = 86400.0) -> None:
    """While an operation runs on a host for longer than ``interval_of(host)`` seconds, run the
    read-only ``command`` there every interval and log the lines ``lines_of(stdout_lines)`` makes,
    prefixed by the host, until that operation ends on that host (or ``max_s``). Registered once
    per state.

    pyinfra runs each host's operation in a greenlet and has no hook during a command, so this is a
    state callback (``operation_host_start`` / ``_success`` / ``_error`` / ``operation_end``) that
    spawns a gevent greenlet per (host, operation); its reads open their own channel on the host's
    SSH connection (``Host.run_shell_command``), beside the operation's command. An operation that
    ends before one interval costs nothing; ``--dry`` runs no operation, so nothing is read. Ops a
    host skips (``state.ops``: pyinfra fires ``operation_host_start`` for them, but no end) are
    not watched.

    + state: the pyinfra ``State`` of the run
    + interval_of: host -> seconds between reads (0 or None: not watched)
    + command: shell command run on the host (reads only; no secret in it)
    + lines_of: list of the command's stdout lines -> lines to log
    + max_s: no watch reads for longer than this (a bound if an end is never signalled)

    Example:

    .. code:: python

        watch_long_operations(ctx_state.get(), lambda host: 10.0, "cat /run/x/*.json", lambda out: out)
    """
    import time

    import gevent
    from gevent.event import Event
    from pyinfra import logger
    from pyinfra.api.state import BaseStateCallback

    class LongOperationWatch(BaseStateCallback):
        def __init__(self) -> None:
            self.running: dict[tuple[str, str], Event] = {}  # this run's watches, not module state

        def operation_host_start(self, state: Any, host: Any, op_hash: str) -> None:
            interval = interval_of(host)
            if not interval or interval <= 0 or op_hash not in state.ops.get(host, {}):
                return
            stop = self.running[(host.name, op_hash)] = Event()
            gevent.spawn(self.watch, host, float(interval), stop)

        def operation_host_success(self, state: Any, host: Any, op_hash: str, *_args: Any) -> None:
            self.end(host.name, op_hash)

        operation_host_error = operation_host_success

        def operation_end(self, state: Any, op_hash: str) -> None:
            for name, h in list(self.running):
                if h == op_hash:
                    self.end(name, op_hash)

        def end(self, name: str, op_hash: str) -> None:
            stop = self.running.pop((name, op_hash), None)
            if stop is not None:
                stop.set()

        @staticmethod
        def watch(host: Any, interval: float, stop: Event) -> None:
            started = time.monotonic()
            for n in range(1, max(1, int(max_s / interval)) + 1):
                # on a fixed cadence: a slow read does not stretch the interval
                if stop.wait(max(0.0, started + n * interval - time.monotonic())):
                    return
                try:
                    ok, output = host.run_shell_command(command, print_output=False, print_input=False)
                except Exception as exc:  # noqa: BLE001 - a progress read never fails the run
                    logger.debug(f"{host.print_prefix}progress read failed: {exc}")
                    continue
                if ok and not stop.is_set():
                    for line in lines_of(output.stdout_lines):
                        logger.info(f"{host.print_prefix}{line}")

    if not any(type(h).__name__ == "LongOperationWatch" for h in state.callback_handlers):
        state.add_callback_handler(LongOperationWatch())
