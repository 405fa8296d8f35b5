"""Preflight across a multi-node replica: what one host's preflight cannot see (tasks/preflight.py checks
each member alone, for its share of the model).

Facts (read on the members) and pure functions of them; nothing here changes a host:

- **Reach**: every worker opens a TCP connection to the head's master port (``--master-port``, vLLM's
  default 29501; on the Ray path Ray's port 6379 too) over the interface that will carry the replica's
  traffic (the member's ``replica_interface``, else the interface its route to the head leaves by:
  ``tasks.facts.network.RouteTo``), bounded by a timeout (:class:`TcpReach`). *Connected* or *refused*
  means the path works: before the replica's first start nothing listens on the head's port, and the
  kernel's refusal (a TCP reset) came back from the head. A *timeout*, or the kernel's "no route" /
  "unreachable", means a firewall or the network drops it, and vLLM's worker would retry the head until
  its distributed timeout (10 min) and fail: a refusal naming host, port and interface.
  Caveat: a firewall rule that answers with a reset (nft ``reject with tcp reset``) looks exactly like a
  closed port; it passes here and the rendezvous then fails at start (the worker's log says "Connection
  refused" for ten minutes). Only the master port (and Ray's) is tried: NCCL, Gloo and vLLM's message
  queues open ports chosen at run time between members, so the private network must let the members
  talk on any port (vLLM's inter-node traffic is unauthenticated: keep it off public networks).
- **Driver branches**: every member's NVIDIA driver has the same branch (``580`` of ``580.95.05``; from
  ``tasks.facts.nvidia.NvidiaGpus``), Ascend members the same driver version (``AscendNpus``): the same
  image runs on every member and NCCL/HCCL across nodes are built against one driver.
- **Every member's own preflight** (tasks/preflight.py, for its share): a member refused alone would leave
  the others to start a replica that waits ten minutes for it and fails; so any member's refusal refuses
  the replica, naming that member and its reasons. Its facts are read once: its own preflight reuses them.
- **InfiniBand** (the recipe's ``ib_hcas``): each HCA named is present (``/sys/class/infiniband``, or
  ``ibv_devices`` where rdma-core is installed) and ``/dev/infiniband`` holds the verbs devices the
  container is given (:class:`InfinibandDevices`).

A refusal is a sentence that names the host, and for reach the head, port and interface.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping, Sequence

from pyinfra.api import FactBase

#: Seconds a worker's probe of the head's port waits for the TCP handshake.
REACH_TIMEOUT_S = 3.0
#: Results of :class:`TcpReach` that prove the path to the head works.
PATH_WORKS = frozenset({"open", "refused"})

# The probe, run by the host's python3: connect once, bounded, from the interface when one is given
# (SO_BINDTODEVICE; without the privilege it falls back to the route, and says so).
_PROBE = r"""
import errno, socket, sys
addr, port, iface, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(limit)
via = "route"
if iface != "-":
    try:
        s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())
        via = "device"
    except OSError as exc:
        via = "route (binding to %s: %s)" % (iface, exc.strerror)
try:
    s.connect((addr, port))
    result = "open"
except ConnectionRefusedError:
    result = "refused"
except socket.timeout:
    result = "timeout"
except OSError as exc:
    kind = "unreachable" if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "error"
    result = "%s %s" % (kind, exc.strerror or exc)
print("reach=" + result)
print("via=" + via)
"""


class TcpReach(FactBase[dict]):
    """
    Whether this host reaches ``address:port`` by TCP: one connection attempt, bounded by ``timeout_s``,
    sent out of ``interface`` when given (python3's socket with SO_BINDTODEVICE; hosts without python3
    try bash's ``/dev/tcp`` under ``timeout`` along the route).

    + address: the peer's address (IPv4, or a name the host resolves)
    + port: the TCP port
    + interface: the interface to leave by (None: the route's)
    + timeout_s: seconds to wait for the handshake

    Returns ``{"result": "open"|"refused"|"timeout"|"unreachable"|"error"|"unknown", "detail": str,
    "via": "device"|"route"|...}``: ``open`` connected; ``refused`` a reset came back (nothing listens,
    or a firewall rejects with a reset); ``timeout`` no answer (dropped); ``unreachable`` the kernel has
    no route or got an ICMP unreachable; ``unknown`` neither python3 nor bash on the host.

    Example:

    .. code:: python

        host.get_fact(TcpReach, address="10.0.0.11", port=29501, interface="eth1")
    """

    @staticmethod
    def default() -> dict:
        return {"result": "unknown", "detail": "the probe printed nothing", "via": "route"}

    def command(self, address: str, port: int, interface: str | None = None,
                timeout_s: float = REACH_TIMEOUT_S) -> str:
        a, p, i, t = shlex.quote(address), int(port), shlex.quote(interface or "-"), float(timeout_s)
        fallback = (f"out=$(timeout {t:g} bash -c 'exec 3<>\"/dev/tcp/$0/$1\"' {a} {p} 2>&1); rc=$?; "
                    'case "$rc:$out" in 0:*) echo reach=open;; 124:*) echo reach=timeout;; '
                    '*refused*) echo reach=refused;; *"No route"*|*nreachable*) echo "reach=unreachable $out";; '
                    '*) echo "reach=error $out";; esac; echo via=route')
        return (f"if command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(_PROBE)} {a} {p} {i} {t:g}; "
                f"elif command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then {fallback}; "
                "else echo 'reach=unknown neither python3 nor bash+timeout on the host'; fi")

    def process(self, output: list[str]) -> dict:
        found = self.default()
        for line in output:
            key, sep, value = line.partition("=")
            if sep and key == "reach":
                result, _, detail = value.strip().partition(" ")
                found.update(result=result, detail=" ".join(detail.split()))
            elif sep and key == "via":
                found["via"] = value.strip()
        return found


class InfinibandDevices(FactBase[dict]):
    """
    InfiniBand devices of the host: the HCAs the kernel lists in ``/sys/class/infiniband``, the nodes in
    ``/dev/infiniband`` (``uverbs0``, ``rdma_cm``: what a container needs for RDMA) and ``ibv_devices``'
    names when rdma-core's tools are installed.

    Returns ``{"sysfs": ["mlx5_0", ...], "dev": ["rdma_cm", "uverbs0", ...], "ibv_devices": [...] | None}``
    (``ibv_devices`` None: the tool is absent).

    Example:

    .. code:: python

        host.get_fact(InfinibandDevices)
    """

    @staticmethod
    def default() -> dict:
        return {"sysfs": [], "dev": [], "ibv_devices": None}

    def command(self) -> str:
        return ('for d in /sys/class/infiniband/*; do [ -e "$d" ] && echo "sysfs=${d##*/}"; done; '
                'for d in /dev/infiniband/*; do [ -e "$d" ] && echo "dev=${d##*/}"; done; '
                "if command -v ibv_devices >/dev/null 2>&1; then echo ibv=; "
                # ibv_devices: two header lines ("device  node GUID", dashes), then "name  guid" rows.
                "ibv_devices 2>/dev/null | awk 'NR > 2 && NF { print \"ibv=\" $1 }'; fi; true")

    def process(self, output: list[str]) -> dict:
        found: dict[str, Any] = self.default()
        for line in output:
            key, sep, value = line.strip().partition("=")
            if not sep:
                continue
            if key == "ibv":
                found["ibv_devices"] = found["ibv_devices"] or []
                if value:
                    found["ibv_devices"].append(value)
            elif key in ("sysfs", "dev"):
                found[key].append(value)
        return found


# --- pure checks --------------------------------------------------------------------------------------


def replica_ports(master_port: int, ray: bool) -> tuple[int, ...]:
    """The head's ports a worker must reach: the master port, and Ray's GCS port on the Ray path.

    + master_port: the replica's ``replica_master_port``
    + ray: whether the members start through Ray (releases without ``--nnodes``)
    """
    from tasks.vllm.multinode import RAY_PORT

    return (master_port, RAY_PORT) if ray else (master_port,)


def reach_refusals(host: str, head: str, interface: str, reaches: Mapping[int, dict]) -> list[str]:
    """Refusals of a worker whose probes of the head's ports (:class:`TcpReach`, by port) did not get
    through; empty when every port answered (connected, or refused by the head's kernel).

    + host: the worker's inventory name
    + head: the head's address, as the worker dials it (``--master-addr``)
    + interface: the worker's interface for the replica's traffic
    + reaches: port -> the :class:`TcpReach` value for it

    Example:

    .. code:: python

        reach_refusals("gpu-12", "10.0.0.11", "eth1", {29501: {"result": "timeout", "detail": "", "via": "device"}})
        # ["gpu-12 cannot reach the head 10.0.0.11 on TCP port 29501 over interface eth1: ..."]
    """
    out = []
    for port, reach in sorted(reaches.items()):
        if reach.get("result") in PATH_WORKS:
            continue
        result = reach.get("result", "unknown")
        what = {"timeout": f"no answer within {REACH_TIMEOUT_S:g} s (dropped by a firewall or the network)",
                "unreachable": f"unreachable ({reach.get('detail') or 'no route'})",
                "unknown": f"not probed: {reach.get('detail') or 'no result'}"}.get(
                    result, f"{result} ({reach.get('detail') or 'no detail'})")
        via = "" if reach.get("via") in (None, "device") else f"; sent along the route: {reach['via']}"
        out.append(f"{host} cannot reach the head {head} on TCP port {port} over interface {interface}: {what}"
                   f"{via}. vLLM's worker would retry it until its distributed timeout and fail; allow TCP "
                   f"{port} (and the ports NCCL picks at run time) from {host} to {head} on the replica's "
                   "private network")
    return out


def driver_branch(version: str | None, accelerator: str = "nvidia") -> str | None:
    """The driver branch of a version string: NVIDIA's first component (``580`` of ``580.95.05``), an
    Ascend driver's whole version (``24.1.rc2``; its releases are not branched); None when unknown."""
    if not version:
        return None
    return version.split(".")[0] if accelerator == "nvidia" else version


def member_driver(fact: Mapping[str, Any] | None, accelerator: str = "nvidia") -> str | None:
    """The driver version a member's accelerator fact reports (``NvidiaGpus``: the first GPU's;
    ``AscendNpus``: ``driver_version``), None when the fact has none (its own preflight refuses that)."""
    if not fact:
        return None
    if accelerator == "nvidia":
        gpus = fact.get("gpus") or []
        return gpus[0].get("driver_version") if fact.get("status") == "ok" and gpus else None
    return fact.get("driver_version")


def driver_refusals(replica: str, facts: Mapping[str, Mapping[str, Any] | None], accelerator: str = "nvidia") -> list[str]:
    """One refusal when the members' driver branches differ, naming each member's driver; members whose
    driver is unknown are left to their own preflight.

    + replica: the replica's name
    + facts: member host -> its accelerator fact (``NvidiaGpus`` or ``AscendNpus``)
    + accelerator: ``nvidia`` or ``ascend``

    Example:

    .. code:: python

        driver_refusals("bf16-a", {"gpu-11": gpus_11, "gpu-12": gpus_12})
    """
    drivers = {h: member_driver(f, accelerator) for h, f in facts.items()}
    branches = {h: driver_branch(v, accelerator) for h, v in drivers.items() if v}
    if len(set(branches.values())) <= 1:
        return []
    listed = ", ".join(f"{h} {drivers[h]}" for h in sorted(branches))
    kind = "driver branches" if accelerator == "nvidia" else "NPU driver versions"
    return [f"replica {replica}: members' {kind} differ ({listed}); every member runs the same image and "
            "joins one NCCL/HCCL world: install one driver branch on all of them"]


def _hca_name(entry: str) -> str:
    """The device of an ``ib_hcas`` entry (``mlx5_0:1`` -> ``mlx5_0``)."""
    return entry.split(":", 1)[0]


def infiniband_refusals(host: str, hcas: Sequence[str], fact: Mapping[str, Any]) -> list[str]:
    """Refusals of a member lacking what the recipe's ``ib_hcas`` need: each HCA listed by the kernel
    (or by ``ibv_devices``) and the ``/dev/infiniband`` verbs devices the container gets.

    + host: the member's inventory name
    + hcas: the recipe's ``ib_hcas`` (``mlx5_0``, ``mlx5_1:1``)
    + fact: the member's :class:`InfinibandDevices`

    Example:

    .. code:: python

        infiniband_refusals("gpu-12", ["mlx5_0"], {"sysfs": [], "dev": [], "ibv_devices": None})
    """
    if not hcas:
        return []
    present = set(fact.get("sysfs") or []) | set(fact.get("ibv_devices") or [])
    out = []
    missing = [h for h in hcas if _hca_name(h) not in present]
    if missing:
        seen = ", ".join(sorted(present)) or "none"
        out.append(f"{host}: InfiniBand HCA(s) {', '.join(missing)} named by the recipe's ib_hcas are not on the "
                   f"host (/sys/class/infiniband lists: {seen}); install the HCA driver (MLNX_OFED/DOCA or the "
                   "distribution's rdma-core) or name the host's HCAs")
    if not any(d.startswith("uverbs") for d in fact.get("dev") or []):
        out.append(f"{host}: /dev/infiniband has no uverbs device (found: {', '.join(fact.get('dev') or []) or 'none'}); "
                   "the container gets /dev/infiniband for RDMA: load ib_uverbs (rdma-core) on the host")
    return out


# --- the deploy's check: once per run and replica, before anything is installed on its members ------------


def member_refusals(fleet: Any, members: Sequence[Any]) -> list[str]:
    """One sentence per member whose own preflight (tasks/preflight.py, for its share of the replica)
    refuses it; members with ``model_preflight: false`` are not checked. The facts are read in parallel
    and cached by pyinfra, so the member's own preflight later reads nothing again.

    + fleet: the run's ``tasks.fleet.FleetPlan``
    + members: the replica's pyinfra ``Host`` objects
    """
    import gevent

    from tasks.preflight import verdict_of
    from tasks.requirement import requirement_from_spec
    from tasks.settings.model import ModelSettings
    from tasks.weights.deploy import model_dest

    checked = [h for h in members if ModelSettings.value(h, "model_preflight")]
    jobs = {h.name: gevent.spawn(verdict_of, h, requirement_from_spec(
        fleet.specs[h.name], model_dest(fleet.specs[h.name], h.data), h.data)) for h in checked}
    gevent.joinall(list(jobs.values()), raise_error=True)
    verdicts = {name: job.value[1] for name, job in jobs.items()}
    return [f"{name}'s own preflight refused it: " + "; ".join(v.reasons) for name, v in verdicts.items() if not v.go]


def replica_refusals(fleet: Any, replica: Any) -> list[str]:
    """Every refusal of ``replica``, from facts read on its members in parallel (reads only): each member's
    own preflight (:func:`member_refusals`), each worker's reach of the head's ports over its interface
    (``fleet.rollout.roles``), the members' drivers and, when the recipe names ``ib_hcas``, their
    InfiniBand devices.

    + fleet: the run's ``tasks.fleet.FleetPlan``
    + replica: one of its ``replicas`` (``tasks.fleet.replicas.Replica``)
    """
    from tasks.facts.ascend import AscendNpus
    from tasks.facts.nvidia import NvidiaGpus
    from tasks.fleet.reads import read_fleet
    from tasks.pyinfra_ext import current_state
    from tasks.vllm.multinode import native

    spec = fleet.specs[replica.head.host]
    roles = fleet.rollout.roles
    members = [h for h in current_state().inventory if h.name in replica.hosts]
    workers = [h for h in members if h.name != replica.head.host and h.name in roles]
    reached: dict[str, dict[int, dict]] = {h.name: {} for h in workers}
    for port in replica_ports(replica.master_port, ray=not native(spec)):
        found = read_fleet(workers, TcpReach, lambda h, port=port: {
            "address": roles[h.name].master_addr, "port": port, "interface": roles[h.name].interface})
        for name, value in found.items():
            reached[name][port] = value
    refusals = member_refusals(fleet, members)
    refusals += [r for h in workers for r in reach_refusals(h.name, roles[h.name].master_addr,
                                                             roles[h.name].interface, reached[h.name])]
    if spec.accelerator in ("nvidia", "ascend"):
        fact = NvidiaGpus if spec.accelerator == "nvidia" else AscendNpus
        refusals += driver_refusals(replica.name, read_fleet(members, fact, lambda h: {}), spec.accelerator)
    if spec.ib_hcas:
        ib = read_fleet(members, InfinibandDevices, lambda h: {})
        refusals += [r for h in members for r in infiniband_refusals(h.name, spec.ib_hcas, ib[h.name])]
    return refusals


def preflight_replica(fleet: Any, host_name: str) -> bool:
    """Whether ``host_name`` may go on as a member of its multi-node replica: the replica's checks run once
    per run (:func:`replica_refusals`); a refused replica fails every member for the run, each logging the
    refusals, so that nothing is installed on any of them. One-host replicas pass.

    + fleet: the run's ``tasks.fleet.FleetPlan``
    + host_name: the current host's name

    Example:

    .. code:: python

        go = go and preflight_replica(fleet, host.name)
    """
    from pyinfra import logger
    from pyinfra.context import ctx_host

    from tasks.pyinfra_ext import once_per_run
    from tasks.refuse import refuse_host
    from tasks.vllm.multinode import native

    replica = fleet.replica_of(host_name)
    if replica is None:
        return True
    refusals = once_per_run(("preflight.replica", fleet.recipe, replica.name),
                            lambda: replica_refusals(fleet, replica))
    if refusals:
        refuse_host(f"preflight of replica {replica.name} ({', '.join(replica.hosts)}) refused it, nothing is "
                    "installed on its members: " + "; ".join(refusals))
        return False
    ports = replica_ports(replica.master_port, ray=not native(fleet.specs[replica.head.host]))
    logger.info(f"{ctx_host.get().print_prefix}preflight of replica {replica.name}: every worker reaches "
                + ", ".join(f"{replica.head.address}:{p}" for p in ports) + ", drivers agree")
    return True


__all__ = ["InfinibandDevices", "PATH_WORKS", "REACH_TIMEOUT_S", "TcpReach", "driver_branch", "driver_refusals",
           "infiniband_refusals", "member_driver", "member_refusals", "preflight_replica", "reach_refusals",
           "replica_ports", "replica_refusals"]
