"""Refusing one host at plan time, so that the other hosts go on.

pyinfra's own failure path for a host is ``state.fail_hosts``: the host is dropped from
the run (no operation executes on it) and pyinfra exits non-zero at the end, while the other
hosts converge. Used by preflight and by capabilities that find a host they must not touch.
"""

from __future__ import annotations


def refuse_host(reason: str) -> None:
    """Log ``reason`` against the current host and drop it from the run."""
    from pyinfra import logger
    from pyinfra.context import ctx_host

    host = ctx_host.get()  # the Host itself, not the context proxy: state.fail_hosts keys on it
    logger.error(f"{host.print_prefix}refused: {reason}")
    host.state.fail_hosts({host})
