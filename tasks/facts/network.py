"""The network a multi-node replica's traffic takes: the interface and address a member reaches
its peers by.

vLLM's members talk over the interface named in ``NCCL_SOCKET_IFNAME``/``GLOO_SOCKET_IFNAME`` and
announce ``VLLM_HOST_IP``; a wrong guess (docker0, a management NIC) hangs the rendezvous. The
kernel already knows the right one: the interface its route to the peer leaves by.
"""

from __future__ import annotations

import re
import shlex

from pyinfra.api import FactBase

_ROUTE = re.compile(r"\bdev (?P<dev>\S+)(?:.*?\bsrc (?P<src>[0-9.]+))?")
_ADDR = re.compile(r"^\d+:\s+(?P<dev>\S+)\s+inet (?P<src>[0-9.]+)/")


class RouteTo(FactBase[dict]):
    """
    The interface and IPv4 source address this host reaches ``peer`` by (``ip -o -4 route get``);
    with ``interface``, that interface and its first IPv4 address (``ip -o -4 addr show dev``).

    + peer: the other member's address (an IPv4 address, or a name the host resolves)
    + interface: the interface set by the operator (``replica_interface``); None: the route's

    Returns ``{"interface": "eth1", "address": "10.0.0.11"}``; ``{}`` when there is no route, the
    name does not resolve or the interface has no IPv4 address.

    Example:

    .. code:: python

        host.get_fact(RouteTo, peer="10.0.0.11")
    """

    @staticmethod
    def default() -> dict:
        return {}

    def command(self, peer: str, interface: str | None = None) -> str:
        if interface:
            return f"ip -o -4 addr show dev {shlex.quote(interface)} 2>/dev/null || true"
        # A name resolves on the host (getent: /etc/hosts and DNS, as the members will resolve it).
        return (f"a=$(getent ahostsv4 {shlex.quote(peer)} | awk 'NR==1 {{print $1}}'); "
                '[ -n "$a" ] && ip -o -4 route get "$a" 2>/dev/null || true')

    def process(self, output: list[str]) -> dict:
        for line in output:
            found = _ADDR.match(line) or _ROUTE.search(line)
            if found and found["src"]:
                return {"interface": found["dev"], "address": found["src"]}
        return {}


__all__ = ["RouteTo"]
