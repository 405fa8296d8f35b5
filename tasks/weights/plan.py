"""Who fetches from where, for one model across the run's weights hosts: skip (holds the revision),
hub seed, or peer receiver in a wave (:func:`plan_fleet`, pure), and the fleet-wide settings that
shape it, which every host must agree on (:func:`fleet_settings`).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from tasks.settings.weights import WeightsSettings
from tasks.weights.fanout import plan_waves
from tasks.weights.request import FetchRequest

#: Settings that shape the whole fan-out: every host of a run must say the same.
FLEET_KEYS = ("weights_fanout", "weights_fanout_width", "weights_cache_host")


@dataclass(frozen=True)
class Role:
    """What one host does in the run: ``skip`` (note says why), ``hub``, or ``peer`` in a wave."""

    kind: str
    note: str = ""
    wave: int = 0
    sender: str | None = None  # peer URL
    serve_from: int | None = None  # first wave in which this host sends


@dataclass(frozen=True)
class WeightsPlan:
    """Roles of every host and the number of peer waves (the same for all hosts); with waves, the
    run's random fan-out token (left out of the repr). Read-only: built once per run."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    waves: int = 0
    hub_seeds: tuple[str, ...] = ()
    urls: Mapping[str, str] = field(default_factory=dict)  # host -> its peer server's URL
    token: str = field(default="", repr=False)


def plan_fleet(
    hosts: list[str],
    states: dict[str, dict[str, Any]],
    requests: dict[str, FetchRequest],
    *,
    fanout: bool,
    width: int = 1,
    groups: dict[str, str | None] | None = None,
    cache_host: str | None = None,
    peer_urls: dict[str, str] | None = None,
) -> WeightsPlan:
    """Decide who fetches from where. Pure: hosts, their WeightsState facts and requests in, roles out.

    + hosts: host names in inventory order
    + states: host -> WeightsState fact
    + requests: host -> FetchRequest
    + fanout: False -> every host not yet holding the revision fetches from the hub
    + width: receivers per sender per wave
    + groups: host -> fan-out group (one hub copy per group); None/missing = one group
    + cache_host: the only hub seed when set
    + peer_urls: host -> ``http://addr:port`` of its peer server

    Example::

        plan_fleet(["a", "b"], {"a": {}, "b": {}}, reqs, fanout=True, peer_urls=urls).roles["b"].kind == "peer"
    """
    roles: dict[str, Role] = {}
    holders = [h for h in hosts if requests[h].matches(states.get(h) or {})]
    pending = [h for h in hosts if h not in holders]
    for h in holders:
        roles[h] = Role("skip", f"{requests[h].dest}/current holds {requests[h].repo}@{requests[h].revision} "
                                "(manifest and sizes match)")
    urls = MappingProxyType(dict(peer_urls or {}))
    if not fanout:
        roles.update((h, Role("hub")) for h in pending)
        return WeightsPlan(roles=MappingProxyType(roles), hub_seeds=tuple(pending), urls=urls)
    if cache_host is not None and cache_host not in hosts:
        raise ValueError(f"weights_cache_host: {cache_host!r} is not among this run's hosts ({', '.join(hosts)})")
    groups = groups or {}
    peer_urls = peer_urls or {}
    if cache_host is not None:
        buckets = {None: hosts}
    else:
        buckets: dict[str | None, list[str]] = {}
        for h in hosts:
            buckets.setdefault(groups.get(h), []).append(h)
    waves: list[dict[str, str]] = []
    hub_seeds: list[str] = []
    for members in buckets.values():
        have = [h for h in members if h in holders]
        todo = [h for h in members if h in pending]
        if not todo:
            continue
        if not have:
            seed = cache_host if cache_host is not None and cache_host in todo else todo[0]
            hub_seeds.append(seed)
            roles[seed] = Role("hub")
            have = [seed]
            todo = [h for h in todo if h != seed]
        for i, wave in enumerate(plan_waves(todo, have, width)):
            if len(waves) <= i:
                waves.append({})
            waves[i].update(wave)
    first_send: dict[str, int] = {}
    for k, wave in enumerate(waves, start=1):
        for receiver, sender in wave.items():
            roles[receiver] = Role("peer", wave=k, sender=peer_urls.get(sender, f"http://{sender}:8765"),
                                   note=f"from {sender}")
            first_send.setdefault(sender, k)
    for h, k in first_send.items():
        roles[h] = replace(roles[h], serve_from=k)
    return WeightsPlan(roles=MappingProxyType(roles), waves=len(waves), hub_seeds=tuple(hub_seeds), urls=urls,
                       token=secrets.token_urlsafe(32) if waves else "")


def fleet_settings(datas: dict[str, Any]) -> dict[str, Any]:
    """``FLEET_KEYS`` of every weights host (host name -> its host data), each read through
    ``WeightsSettings``, checked to agree.

    Raises SpecError naming two hosts and their values where they differ.
    """
    from tasks.settings import agreed
    return {key: agreed(key, {name: WeightsSettings.value(d, key, name) for name, d in datas.items()},
                        "every host of a weights fan-out") for key in FLEET_KEYS}



def peer_address(h: Any, data: Any) -> str:
    """The IP address other hosts reach ``h``'s peer server at, which it binds (never every interface):
    ``weights_peer_address``, else ``ssh_hostname``, else the host name, resolved here on the control
    machine (the host itself may map its own name to 127.0.1.1)."""
    name = str(data.weights_peer_address or h.data.get("ssh_hostname") or h.name)
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)[0][4][0]
    except (OSError, IndexError):
        raise ValueError(f"{h.name}: weights_peer_address: {name!r} does not resolve on the control machine; "
                         "set it to the address other hosts reach this host at (weights_fanout)") from None



__all__ = ["FLEET_KEYS", "Role", "WeightsPlan", "fleet_settings", "peer_address", "plan_fleet"]
