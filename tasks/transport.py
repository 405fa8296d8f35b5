"""Low-latency SSH round trips: ``TCP_NODELAY`` on the sockets of pyinfra's SSH connections.

paramiko (pyinfra's SSH library) sets no socket options, so Nagle's algorithm holds each small
SSH packet (a channel open, a command, its exit status) until the previous one is acknowledged,
and Linux delays that acknowledgement up to 40 ms. Every command pyinfra sends, fact or
operation, then costs about 50 ms even on a sub-millisecond link, whatever the command does.
OpenSSH's own client disables Nagle for the same reason. Measured on a lab host (paramiko,
``true`` 20 times): 51 ms per round trip with Nagle, 3.4 ms without (bench/noop_converge.py has
the effect on a whole no-op run).

Importing ``tasks`` inside a pyinfra run calls :func:`install`: the hosts already connected get
the option at once (the CLI connects every host before it loads a deploy file), and a state
callback gives it to hosts that connect later (API use, ``--limit`` reconnects). Connectors other
than SSH (``@local``, ``@docker``, ``@fake``) have no such socket and are left alone.
"""

from __future__ import annotations

import socket
from typing import Any

from pyinfra.api.state import BaseStateCallback


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


class NoDelayOnConnect(BaseStateCallback):
    """Gives every host that connects from now on a socket without Nagle's algorithm."""

    @staticmethod
    def host_connect(state: Any, host: Any) -> None:  # noqa: ARG004 - pyinfra's callback signature
        no_delay(host)


def install(state: Any) -> int:
    """Apply :func:`no_delay` to the connected hosts of ``state`` and to hosts that connect later.

    Registers the callback once per state. Returns how many sockets were changed now.

    + state: the pyinfra ``State`` of the run

    Example:

    .. code:: python

        install(ctx_state.get())
    """
    if not any(isinstance(h, NoDelayOnConnect) for h in state.callback_handlers):
        state.add_callback_handler(NoDelayOnConnect())
    return sum(no_delay(h) for h in state.inventory if getattr(h, "connected", False))


def install_in_current_run() -> None:
    """:func:`install` for the pyinfra run this process is in, if any (called by ``import tasks``)."""
    from pyinfra.context import ctx_state

    if ctx_state.isset():
        install(ctx_state.get())


__all__ = ["NoDelayOnConnect", "install", "install_in_current_run", "no_delay"]
