"""Who fetches from where, for one model across the run's weights hosts: skip (holds the revision),
hub seed, peer receiver in a wave, or a link of a pipelined chain (:func:`plan_fleet`, pure), and the
fleet-wide settings that shape it, which every host must agree on (:func:`fleet_settings`).
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
FLEET_KEYS = ("weights_fanout", "weights_fanout_mode", "weights_fanout_width", "weights_cache_host",
              "weights_chain_chunk_bytes")


@dataclass(frozen=True)
class Role:
    """What one host does in the run: ``skip`` (note says why), ``hub``, ``peer`` in a wave, or
    ``chain`` (receives chunk by chunk from ``sources``, nearest first, while passing them on)."""

    kind: str
    note: str = ""
    wave: int = 0
    sender: str | None = None  # peer URL
    serve_from: int | None = None  # first wave in which this host sends (chain: 1 = it relays)
    sources: tuple[str, ...] = ()  # chain: peer URLs, nearest first
    chain_hub: bool = False  # chain: the head, reading the hub


@dataclass(frozen=True)
class WeightsPlan:
    """Roles of every host and the number of peer waves (the same for all hosts); with waves, the
    run's random fan-out token (left out of the repr). Read-only: built once per run."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    waves: int = 0
    hub_seeds: tuple[str, ...] = ()
    urls: Mapping[str, str] = field(default_factory=dict)  # host -> its peer server's URL
    token: str = field(default="", repr=False)
    chains: tuple[tuple[str, ...], ...] = ()  # chain mode: each chain's hosts, upstream first

    @property
    def relays(self) -> bool:
        """Whether any host receives from another in this run (then every sender needs the token)."""
        return bool(self.waves or any(r.sources for r in self.roles.values()))


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
    mode: str = "waves",
    link_mbit: dict[str, int | None] | None = None,
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
    + mode: ``waves`` (a host sends once it holds the whole copy) or ``chain`` (pipelined, see
      :func:`plan_chains`)
    + link_mbit: host -> declared link speed; a chain runs from the fastest to the slowest host

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
    if mode == "chain":
        # a host repairing damaged files of this very revision would pass them on: it goes last
        repairs = {h for h in pending if (states.get(h) or {}).get("current") == requests[h].current_link}
        return plan_chains(buckets, holders, roles, requests, cache_host, peer_urls, link_mbit or {}, urls, repairs)
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


def plan_chains(buckets: dict[str | None, list[str]], holders: list[str], roles: dict[str, Role],
                requests: dict[str, FetchRequest], cache_host: str | None, peer_urls: dict[str, str],
                link_mbit: dict[str, int | None], urls: Mapping[str, str], last: set[str] = frozenset()) -> WeightsPlan:
    """Chains, one per holder of a group (or one from the hub when the group holds no copy): every
    pending host receives from the host before it while that host still receives, so N hosts take
    about one download (``chain.py`` says why a chain). Hosts run fastest link first (``link_mbit``,
    undeclared = fastest), so a slow host sits at the end and holds no one back; ``cache_host`` heads,
    hosts in ``last`` (repairing damaged files of this revision) come after all others.
    A host's sources are every host before it in its chain, nearest first, then the group's holders:
    a dead host is skipped by re-attaching to the next. The hub feeds the head only, once per group
    (a ModelScope head downloads first, unpipelined: the chain reads only the Hugging Face protocol).

    Example::

        plan_chains({None: ["a", "b"]}, [], {}, reqs, None, urls, {}, urls).chains == (("a", "b"),)
    """
    def url(h: str) -> str:
        return peer_urls.get(h, f"http://{h}:8765")

    chains: list[tuple[tuple[str, ...], list[str]]] = []  # (chain, the group's holders after it)
    hub_seeds: list[str] = []
    for members in buckets.values():
        have = [h for h in members if h in holders]
        todo = sorted((h for h in members if h not in holders),
                      key=lambda h: (h != cache_host, h in last, -(link_mbit.get(h) or 1 << 40)))
        if not todo:
            continue
        if not have:
            head = todo[0]
            hub_seeds.append(head)
            if requests[head].hub != "huggingface":
                roles[head] = Role("hub", note="the chain reads ModelScope through its client first")
                have, todo = [head], todo[1:]
            else:
                roles[head] = Role("chain", note="from the hub", chain_hub=True)
                chains.append((tuple(todo), []))
                todo = []
        for i, upstream in enumerate(have):
            if todo[i::len(have)]:
                chains.append(((upstream, *todo[i::len(have)]), [x for x in have if x != upstream]))
    for chain, others in chains:
        for i, h in enumerate(chain[1:], start=1):
            before = [*reversed(chain[:i]), *others]
            roles[h] = Role("chain", note=f"from {chain[i - 1]}", sources=tuple(url(x) for x in before))
    relaying = {h for chain, _ in chains for h in chain[:-1]} | {
        h for h in holders if any(url(h) in r.sources for r in roles.values())}
    for h in relaying:
        roles[h] = replace(roles[h], serve_from=1)
    plan = WeightsPlan(roles=MappingProxyType(roles), hub_seeds=tuple(hub_seeds), urls=urls,
                       chains=tuple(chain for chain, _ in chains))
    return replace(plan, token=secrets.token_urlsafe(32)) if plan.relays else plan


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



__all__ = ["FLEET_KEYS", "Role", "WeightsPlan", "fleet_settings", "peer_address", "plan_chains", "plan_fleet"]
