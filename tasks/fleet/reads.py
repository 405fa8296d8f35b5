"""One fact of every host of the fleet, read in parallel (the fleet plan is built from these reads)."""

from __future__ import annotations

from typing import Any, Callable


def read_fleet(hosts: list[Any], cls: type, kwargs_of: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Fact ``cls`` of every host in ``hosts``, read in parallel: host name -> value (``{}`` for None).

    pyinfra plans each host in its own greenlet; a value that needs every host's state is built once
    (``tasks.pyinfra_ext.once_per_run``) from one parallel read: N hosts cost one round trip each,
    not N.

    + hosts: pyinfra ``Host`` objects
    + cls: the fact class
    + kwargs_of: a host -> its fact arguments

    Example:

    .. code:: python

        states = read_fleet(hosts, WeightsState, lambda h: {"dest": dests[h.name]})
    """
    import gevent

    jobs = {h.name: gevent.spawn(h.get_fact, cls, **kwargs_of(h)) for h in hosts}
    gevent.joinall(list(jobs.values()), raise_error=True)
    return {name: job.value or {} for name, job in jobs.items()}


__all__ = ["read_fleet"]
