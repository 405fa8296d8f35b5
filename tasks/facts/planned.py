"""The facts a host's operations will read, fetched in one round trip.

pyinfra 3.10 runs an operation's body, and so its facts, when the operation executes: one round trip
per operation per host, each behind the previous operation's barrier across the fleet. On a
converged host a run is nothing but those reads. Here an operation *declares*, when it is called
(while the deploy is prepared), the facts its body will read (:func:`declaring`), and its body reads
them with :func:`read`. The first such read on a host fetches every fact declared for that host in
one round trip (:class:`tasks.facts.together.Together`); later reads take their value from it for
as long as no operation has changed the host (executed a command, or failed) and pyinfra is in the
same stage, so a value describes the host as it is -- what pyinfra 2 relied on for every fact. After
a change, reads go to the host one by one, as pyinfra 3 does. A fact that cannot join a batch (a
``requires_command``, a non-string command) is read on its own, and so is every read under change
detection (the CLI without ``-y``, ``--dry``), where pyinfra runs each body as its operation is called,
before the next one is declared.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pyinfra.api import FactBase
from pyinfra.context import ctx_host, ctx_state

from tasks.facts.together import Together, joinable_command
from tasks.pyinfra_ext import host_unchanged, run_store, stage

Read = tuple[type[FactBase], dict[str, Any]]


@dataclass
class _HostReads:
    wanted: dict[str, Read] = field(default_factory=dict)  # key -> read, in declaration order
    values: dict[str, Any] = field(default_factory=dict)  # read so far in this stage
    stage: Any = None  # pyinfra's stage they were read in


def _reads_of(state: Any) -> dict[str, _HostReads]:
    """host name -> its declared reads, in the run's own store (``tasks.pyinfra_ext.run_store``)."""
    return run_store(state).setdefault("facts.planned", {})


def _key(cls: type[FactBase], kwargs: dict[str, Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}:{json.dumps(kwargs, sort_keys=True, default=str)}"


def declare(cls: type[FactBase], **kwargs: Any) -> None:
    """
    Declare for the current host that an operation will read ``cls`` with ``kwargs``.

    + cls: the fact class; one that cannot join a batch is left to be read on its own
    + kwargs: the fact's arguments, as the operation will pass them to :func:`read`

    Example:

    .. code:: python

        declare(UnitStates, units=["docker.service"])
    """
    if joinable_command(cls, kwargs) is None:
        return
    reads = _reads_of(ctx_state.get()).setdefault(ctx_host.get().name, _HostReads())
    reads.wanted.setdefault(_key(cls, kwargs), (cls, kwargs))


def read(cls: type[FactBase], **kwargs: Any) -> Any:
    """
    The value of ``cls(**kwargs)`` on the current host: from the host's batch of declared reads
    while it describes the host as it is, from the host otherwise (``host.get_fact``).

    + cls: the fact class
    + kwargs: its arguments (equal to the declared ones for the batch to answer)

    Example:

    .. code:: python

        have = read(DebPackages, names=["docker.io"])
    """
    state, host = ctx_state.get(), ctx_host.get()
    reads = _reads_of(state).get(host.name)
    key = _key(cls, kwargs)
    if reads is None or key not in reads.wanted or not host_unchanged(state, host):
        return host.get_fact(cls, **kwargs)
    if reads.stage != stage(state):  # values read while preparing are not reused when executing
        reads.values, reads.stage = {}, stage(state)
    if key not in reads.values:
        # Everything declared and not read yet, in one round trip. With change detection (the CLI
        # without -y) pyinfra runs each body as the operation is called: then only this one is.
        missing = [(k, r) for k, r in reads.wanted.items() if k not in reads.values]
        if len(missing) == 1:
            reads.values[key] = host.get_fact(cls, **kwargs)
        else:
            values = host.get_fact(Together, facts=tuple(r for _, r in missing))
            reads.values.update((k, v) for (k, _), v in zip(missing, values))
    return copy.deepcopy(reads.values[key])


def declaring(reads_of: Callable[..., Iterable[Read]]) -> Callable[[Callable], Callable]:
    """
    Decorate an ``@operation`` so that calling it declares the facts its body will read.

    + reads_of: called with the operation's own arguments (no ``name`` or ``_`` global arguments);
      returns ``(FactClass, kwargs)`` pairs. Arguments it cannot handle declare nothing: the
      operation reports them itself.

    Example:

    .. code:: python

        @declaring(lambda packages, **_: [(DebPackages, {"names": sorted(packages)})])
        @operation()
        def deb_packages(packages): ...
    """

    def wrap(op: Callable) -> Callable:
        @functools.wraps(op)
        def call(*args: Any, **kwargs: Any) -> Any:
            own = {k: v for k, v in kwargs.items() if k != "name" and not k.startswith("_")}
            try:
                wanted = list(reads_of(*args, **own))
            except (TypeError, ValueError, KeyError):
                wanted = []
            for cls, fact_kwargs in wanted:
                declare(cls, **fact_kwargs)
            return op(*args, **kwargs)

        return call

    return wrap


__all__ = ["declare", "declaring", "read"]
