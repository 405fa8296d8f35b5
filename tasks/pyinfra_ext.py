"""Every place llmfleet touches pyinfra's internals, and nowhere else: the rest of tasks/ uses pyinfra's
public API only. tests/unit/test_pyinfra_ext.py pins each internal relied on here, so a pyinfra
release that changes one fails there, naming it, instead of somewhere in a deploy.

What llmfleet adds to pyinfra's CLI before it connects (installed by ``config.py``, which the CLI
runs from the working directory, the repository root, before it loads the inventory):

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

What the deploys use while pyinfra runs (``import tasks`` installs the socket option):

- **One value store per run** (:func:`once_per_run`, :func:`run_store`): keyed by pyinfra's ``State``
  (weakly: a finished run's values go with it). pyinfra's CLI plans every host in its own greenlet;
  a fleet-wide value (``tasks.fleet``'s plan, the weights fan-out plan) is built once, by the first
  greenlet to ask, and greenlets that ask meanwhile wait for it (gevent) instead of building it again.
- **Operation results** (:func:`host_unchanged`, :func:`change_known`, :func:`will_change_on`):
  read off ``State.ops`` and ``OperationMeta``'s private ``_maybe_is_change``.
- **Low-latency SSH round trips** (:func:`no_delay`): ``TCP_NODELAY`` on the sockets of pyinfra's
  SSH connections. paramiko sets no socket options, so Nagle's algorithm holds each small SSH packet
  until the previous one is acknowledged, and Linux delays that acknowledgement up to 40 ms: every
  command then costs ~50 ms even on a sub-millisecond link. OpenSSH's own client disables Nagle for
  the same reason. Measured on a lab host (paramiko, ``true`` 20 times): 51 ms per round trip with
  Nagle, 3.4 ms without. The hosts already connected get the option at once (the CLI connects every
  host before it loads a deploy file), and a state callback gives it to hosts that connect later.
  Connectors other than SSH (``@local``, ``@docker``, ``@fake``) have no such socket.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, TypeVar
from weakref import WeakKeyDictionary

T = TypeVar("T")

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




# --- one value store per run ----------------------------------------------------------------------------

#: State -> {key: value, or the gevent AsyncResult of a value being built}. The one run-global cache of
#: llmfleet: everything else reads its fleet-wide values through here.
_RUNS: WeakKeyDictionary = WeakKeyDictionary()


def current_state() -> Any:
    """The pyinfra ``State`` of the run this greenlet plans or executes."""
    from pyinfra.context import ctx_state

    return ctx_state.get()


def run_store(state: Any) -> dict[Hashable, Any]:
    """The run's own dict (created on first use, dropped with ``state``): for values a run gathers
    as it goes (per-host reads batched by ``tasks.facts.planned``, on-demand verification rows).

    + state: the pyinfra ``State`` of the run
    """
    return _RUNS.setdefault(state, {})


def once_per_run(key: Hashable, build: Callable[[], T], state: Any = None) -> T:
    """``build()`` once per run and ``key``: later and concurrent callers get its value (or its exception).

    + key: what the value depends on within the run
    + build: makes the value; may read facts (it yields to the other greenlets while it waits)
    + state: the run (default: the current one)

    Example:

    .. code:: python

        plan = once_per_run(("weights", spec.model.repo_id), lambda: build(spec))
    """
    from gevent.event import AsyncResult

    cache = run_store(current_state() if state is None else state)
    found = cache.get(key)
    if found is not None:
        return found.get() if isinstance(found, AsyncResult) else found
    pending = cache[key] = AsyncResult()
    try:
        value = build()
    except BaseException as exc:
        del cache[key]  # a later caller may try again
        pending.set_exception(exc)
        raise
    cache[key] = value
    pending.set(value)
    return value


# --- operation results --------------------------------------------------------------------------------


def host_unchanged(state: Any, host: Any) -> bool:
    """True while no operation on ``host`` has executed a command or failed in this run."""
    for op_data in state.ops.get(host, {}).values():
        meta = op_data.operation_meta
        if meta.is_complete() and (meta.executed or not meta.did_succeed()):
            return False
    return True


def stage(state: Any) -> Any:
    """pyinfra's stage of the run (``StateStage``): values read while preparing are stale when executing."""
    return state.current_stage


def change_known(meta: Any) -> bool | None:
    """What pyinfra knows of an operation's change before it runs: True/False when change detection (or
    an earlier ``will_change``) decided it, None when it is decided only by running the body."""
    return getattr(meta, "_maybe_is_change", None)


def will_change_on(state: Any, host_name: str, metas: Iterable[Any]) -> bool:
    """Whether any of ``metas`` (operations of host ``host_name``) will change it, asked in that host's
    context (``OperationMeta.will_change`` runs the body against the current host)."""
    from pyinfra.context import ctx_host

    with ctx_host.use(state.inventory.get_host(host_name)):
        return any(m.will_change for m in metas)


# --- low-latency SSH round trips ---------------------------------------------------------------------


def _socket_of(host: Any) -> socket.socket | None:
    client = getattr(getattr(host, "connector", None), "client", None)
    transport = client.get_transport() if client is not None and hasattr(client, "get_transport") else None
    sock = getattr(transport, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def no_delay(host: Any) -> bool:
    """Disable Nagle's algorithm on ``host``'s SSH connection; False when it has no TCP socket.

    + host: a pyinfra ``Host`` (any connector)

    Example:

    .. code:: python

        no_delay(state.inventory.get_host("gpu-01"))
    """
    sock = _socket_of(host)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False  # a proxy command's pipe or a Unix socket: no Nagle to disable
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False  # the connection is closing: nothing to speed up
    return True


def _no_delay_callback() -> Any:
    from pyinfra.api.state import BaseStateCallback

    class NoDelayOnConnect(BaseStateCallback):
        """Gives every host that connects from now on a socket without Nagle's algorithm."""

        @staticmethod
        def host_connect(state: Any, host: Any) -> None:  # noqa: ARG004 - pyinfra's callback signature
            no_delay(host)

    return NoDelayOnConnect


NoDelayOnConnect = _no_delay_callback()


def install_no_delay(state: Any) -> int:
    """Apply :func:`no_delay` to the connected hosts of ``state`` and to hosts that connect later.

    Registers the callback once per state. Returns how many sockets were changed now.

    + state: the pyinfra ``State`` of the run
    """
    if not any(isinstance(h, NoDelayOnConnect) for h in state.callback_handlers):
        state.add_callback_handler(NoDelayOnConnect())
    return sum(no_delay(h) for h in state.inventory if getattr(h, "connected", False))


def install_in_current_run() -> None:
    """:func:`install_no_delay` for the pyinfra run this process is in, if any (``import tasks``)."""
    from pyinfra.context import ctx_state

    if ctx_state.isset():
        install_no_delay(ctx_state.get())


__all__ = ["MISSING_KEY", "NoDelayOnConnect", "change_known", "current_state", "dry_run_shows_changes",
           "host_unchanged", "install", "install_in_current_run", "install_no_delay", "name_missing_keys",
           "no_delay", "once_per_run", "run_store", "stage", "watch_long_operations", "will_change_on"]


# --- progress of long operations (tasks/progress.py): reads beside a running operation -------------


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
