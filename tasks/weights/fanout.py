"""Plan how model copies spread over a fleet: hosts that finished serve the next ones.

Seeds (hosts that already hold the verified model, typically after one hub download) serve
receivers through ``peer_server.py``; a receiver that finished becomes a sender in the next wave.
With every sender feeding up to ``fanout`` receivers per wave, the set of holders grows by a factor
of ``fanout + 1`` per wave: N hosts are done after ``ceil(log_(fanout+1)((N + S) / S))`` waves for S
seeds, i.e. ~log2(N) waves at link speed for fanout 1 instead of N sequential copies. ``fanout`` is
the host data's ``weights_fanout_width`` (``tasks.settings.weights``). This is ``weights_fanout_mode:
waves``; the default ``chain`` pipelines instead (``plan.plan_chains``, ``chain.py``).
"""

from __future__ import annotations


def plan_waves(hosts: list[str], seeds: list[str], fanout: int) -> list[dict[str, str]]:
    """Return waves of transfers; each wave maps receiver -> sender.

    + hosts: every host that must end up with the model (seeds among them are skipped)
    + seeds: hosts that already hold the verified model
    + fanout: receivers per sender per wave (>= 1)

    Senders are assigned round-robin in the order they became holders (seeds first, in the given
    order), receivers in ``hosts`` order, so the plan is deterministic.

    Example::

        >>> plan_waves(["a", "b", "c", "d"], ["a"], 1)
        [{'b': 'a'}, {'c': 'a', 'd': 'b'}]
    """
    if not isinstance(fanout, int) or fanout < 1:
        raise ValueError(f"fanout: must be an integer >= 1, got {fanout!r}")
    for name, items in (("hosts", hosts), ("seeds", seeds)):
        if len(set(items)) != len(items):
            raise ValueError(f"{name}: duplicate host names are not allowed")
        if any(not isinstance(h, str) or not h for h in items):
            raise ValueError(f"{name}: host names must be non-empty strings")
    pending = [h for h in hosts if h not in set(seeds)]
    if pending and not seeds:
        raise ValueError("seeds: at least one host holding the model is required")
    holders = list(seeds)
    waves: list[dict[str, str]] = []
    while pending:
        wave: dict[str, str] = {}
        slots = [s for s in holders for _ in range(fanout)]
        # Interleave so each sender's first receiver comes before anyone's second one.
        slots = [holders[i % len(holders)] for i in range(len(slots))]
        for sender, receiver in zip(slots, pending):
            wave[receiver] = sender
        pending = pending[len(wave):]
        holders.extend(wave)
        waves.append(wave)
    return waves
