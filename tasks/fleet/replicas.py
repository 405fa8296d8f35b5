"""Multi-node replicas: the hosts of one recipe that serve one model together, as the inventory
says (host data ``replica`` and ``replica_rank``, ``tasks.settings.replica``).

Pure control-machine work, before any host is touched: :func:`gather` groups the members, checks
them (ranks 0..N-1 once each with N = the recipe's ``nodes``, one recipe and one serving
configuration per replica, every member the same accelerator count, tensor x pipeline x data
parallel = the replica's accelerators) and returns the replicas, or problems naming host, field,
what was given and what is allowed. The fleet plan holds the result (``FleetPlan.replicas``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tasks.bad_input import BadInput, Problem
from tasks.settings.replica import ReplicaSettings
from tasks.spec import ServingSpec
from tasks.vllm.multinode import Role

#: Fields a member may set on its own: where on its host it runs and host-local tuning (an NCCL variable
#: for its NIC, a flag of its own), not what the replica serves: vLLM's members must agree on the rest.
PER_MEMBER_FIELDS = frozenset({"devices", "extra_env", "extra_args", "gpu_memory_utilization", "shm_size"})


@dataclass(frozen=True)
class Member:
    """One host of a multi-node replica."""

    host: str
    rank: int
    #: where the other members reach it (``ssh_hostname``, else the host name)
    address: str

    @property
    def is_head(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Replica:
    """A multi-node replica: its members by rank (the head first) and its rendezvous."""

    name: str
    recipe: str
    members: tuple[Member, ...]
    master_port: int
    #: ``replica_interface`` of each member (None: from the route to the head)
    interfaces: Mapping[str, str | None]

    @property
    def head(self) -> Member:
        return self.members[0]

    @property
    def nnodes(self) -> int:
        return len(self.members)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(m.host for m in self.members)

    def member(self, host: str) -> Member:
        return next(m for m in self.members if m.host == host)

    def peer_of(self, host: str) -> str:
        """The address whose route picks ``host``'s interface: the head's for a worker, rank 1's for the head."""
        return self.members[1].address if host == self.head.host else self.head.address


def roles(hosts: list[Any], replicas: Mapping[str, Replica]) -> tuple[dict[str, Role], list[Problem]]:
    """Every member's :class:`~tasks.vllm.multinode.Role`, its network read from the hosts in one
    parallel pass (``RouteTo``: the interface the route to its peer leaves by, or its
    ``replica_interface``, and that interface's address); ``(host -> Role, problems)``.

    + hosts: pyinfra ``Host`` objects of the run (members among them)
    + replicas: :func:`gather`'s replicas
    """
    from tasks.facts.network import RouteTo
    from tasks.fleet.reads import read_fleet

    replica_of = {m.host: r for r in replicas.values() for m in r.members}
    members = [h for h in hosts if h.name in replica_of]
    links = read_fleet(members, RouteTo, lambda h: {"peer": replica_of[h.name].peer_of(h.name),
                                                    "interface": replica_of[h.name].interfaces[h.name]})
    found, problems = {}, []
    for h in members:
        replica, link = replica_of[h.name], links[h.name]
        member, chosen = replica.member(h.name), replica.interfaces[h.name]
        if not link or link["interface"] == "lo":
            why = (f"interface {chosen} has no IPv4 address" if chosen else
                   f"no route to {replica.peer_of(h.name)} (or it is this host itself)")
            problems.append(Problem(h.name, "replica_interface", f"{why}: the members of replica {replica.name} "
                                    "cannot reach each other; allowed: an interface of this host with an IPv4 "
                                    "address on the replica's private network", repr(chosen)))
            continue
        found[h.name] = Role(replica=replica.name, nnodes=replica.nnodes, rank=member.rank,
                             master_addr=replica.head.address, master_port=replica.master_port,
                             host_ip=link["address"], interface=link["interface"])
    return found, problems


def member_address(data: Any, name: str) -> str:
    """Where a member is reached by the others: ``ssh_hostname``, else its inventory name."""
    return str(data.get("ssh_hostname") or name)


def gather(datas: Mapping[str, Any], specs: Mapping[str, ServingSpec]) -> tuple[dict[str, Replica], list[Problem]]:
    """The multi-node replicas of the serving hosts, checked; ``(name -> Replica, problems)``.

    + datas: serving host -> its host data (inventory order)
    + specs: serving host -> its validated spec

    Example:

    .. code:: python

        replicas, problems = gather({h.name: h.data for h in hosts}, specs)
    """
    problems: list[Problem] = []
    grouped: dict[str, list[tuple[str, ReplicaSettings]]] = {}
    for host, data in datas.items():
        try:
            opts = ReplicaSettings.of(data, host)
        except BadInput as exc:
            problems += exc.problems
            continue
        spec = specs[host]
        if opts.replica is None:
            if opts.replica_rank is not None:
                problems.append(Problem(host, "replica", "not set while replica_rank is; allowed: the name of "
                                        "the multi-node replica this host is a member of", "None"))
            elif spec.nodes > 1:
                problems.append(Problem(host, "replica", f"recipe {spec.name} spans {spec.nodes} hosts (nodes: "
                                        f"{spec.nodes}); allowed: a replica name shared by {spec.nodes} hosts, each "
                                        f"with its replica_rank 0..{spec.nodes - 1}", "None"))
            continue
        if opts.replica_rank is None:
            problems.append(Problem(host, "replica_rank", f"not set for a member of replica {opts.replica}; "
                                    "allowed: 0 for the head, 1..N-1 for the workers", "None"))
            continue
        grouped.setdefault(opts.replica, []).append((host, opts))
    replicas = {}
    for name, members in grouped.items():
        found = _replica_problems(name, members, datas, specs)
        problems += found
        if not found:
            ordered = sorted(members, key=lambda m: m[1].replica_rank)
            replicas[name] = Replica(
                name=name, recipe=str(specs[ordered[0][0]].name), master_port=ordered[0][1].replica_master_port,
                members=tuple(Member(h, int(o.replica_rank), member_address(datas[h], h)) for h, o in ordered),
                interfaces={h: o.replica_interface for h, o in ordered})
    return replicas, problems


def _replica_problems(name: str, members: list[tuple[str, ReplicaSettings]], datas: Mapping[str, Any],
                      specs: Mapping[str, ServingSpec]) -> list[Problem]:
    first_host, first = members[0]
    spec = specs[first_host]
    hosts = ", ".join(h for h, _ in members)
    found = []
    for host, opts in members[1:]:
        other = specs[host]
        if other.name != spec.name:
            found.append(Problem(host, "recipe", f"replica {name} serves {spec.name} on {first_host}; allowed: one "
                                 "recipe per replica", repr(other.name)))
            continue
        differ = sorted(k for k in ServingSpec.model_fields if k not in PER_MEMBER_FIELDS
                        and getattr(other, k) != getattr(spec, k))
        if differ:
            found.append(Problem(host, "serve_" + differ[0], f"differs from {first_host}'s in replica {name} "
                                 f"({', '.join(differ)}): vLLM's workers refuse a head of another configuration; "
                                 f"allowed: the same serving fields on every member (except {', '.join(sorted(PER_MEMBER_FIELDS))})",
                                 repr(getattr(other, differ[0]))))
        if opts.replica_master_port != first.replica_master_port:
            found.append(Problem(host, "replica_master_port", f"{first_host} has {first.replica_master_port}; "
                                 f"allowed: one port for replica {name}", repr(opts.replica_master_port)))
    if spec.nodes != len(members):
        found.append(Problem(first_host, "replica", f"replica {name} has {len(members)} member(s) ({hosts}) but "
                             f"recipe {spec.name} spans nodes: {spec.nodes}; allowed: exactly {spec.nodes} hosts, "
                             f"or serve_nodes: {len(members)} with tensor x pipeline x data parallel split over them",
                             repr(name)))
    ranks: dict[int, str] = {}
    for host, opts in members:
        rank = int(opts.replica_rank)
        if rank in ranks:
            found.append(Problem(host, "replica_rank", f"{rank} is also {ranks[rank]}'s in replica {name}; allowed: "
                                 f"each of 0..{len(members) - 1} once", repr(rank)))
        elif rank >= len(members):
            found.append(Problem(host, "replica_rank", f"replica {name} has {len(members)} member(s) ({hosts}); "
                                 f"allowed: 0..{len(members) - 1}, each once", repr(rank)))
        ranks.setdefault(rank, host)
    counts = {h: len(specs[h].devices) if specs[h].devices else None for h, _ in members}
    if len(set(counts.values())) > 1:
        given = ", ".join(f"{h}: {c if c is not None else 'all'}" for h, c in counts.items())
        found.append(Problem(first_host, "serve_devices", f"members of replica {name} give different accelerator "
                             f"counts ({given}); allowed: {spec.gpus_per_node} on every member (tensor x pipeline x "
                             f"data parallel = {spec.gpus_per_node * spec.nodes} over {spec.nodes} hosts)"))
    return found


__all__ = ["Member", "PER_MEMBER_FIELDS", "Replica", "gather", "member_address", "roles"]
