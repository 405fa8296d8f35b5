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
