"""One fleet-wide value per pyinfra run, built by whichever host's plan gets there first, and the
parallel read of every host's fact such a value is built from.

pyinfra's CLI plans every host of the inventory in its own greenlet, in parallel. A value that
needs every host's state (the weights fan-out plan, the rollout's batches) is built once, by
the first greenlet to ask, reading the hosts' facts in parallel; greenlets that ask meanwhile
wait for it instead of reading every host again (N hosts would cost N round trips per host).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")


def once_per_run(cache: dict[Hashable, Any], key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` once per ``key``: later and concurrent callers get its value (or its exception).

    + cache: the caller's module-level dict (keys should include ``id(state)``: one value per run)
    + key: what the value depends on
    + build: makes the value; may read facts (it yields to the other greenlets while it waits)

    Example:

    .. code:: python

        plan = once_per_run(_PLANS, (id(state), spec.name), lambda: _read_fleet(spec))
    """
    from gevent.event import AsyncResult

    found = cache.get(key)
    if found is not None:
        return found.get() if isinstance(found, AsyncResult) else found
    pending = cache[key] = AsyncResult()
    try:
        value = build()
    except BaseException as exc:
        del cache[key]  # a later run (new state) or caller may try again
        pending.set_exception(exc)
        raise
    cache[key] = value
    pending.set(value)
    return value


def read_fleet(hosts: list[Any], cls: type, kwargs_of: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Fact ``cls`` of every host in ``hosts``, read in parallel: host name -> value (``{}`` for None).

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


__all__ = ["once_per_run", "read_fleet"]
