"""Multi-node replica settings (host data, keys ``replica`` and ``replica_*``): read by tasks.fleet.replicas.

A replica across hosts is the hosts of one recipe whose host data name the same ``replica`` and
carry their ``replica_rank`` (0 = the head: it serves HTTP; the others run ``--headless``). The
member count is the recipe's ``nodes``. Example (inventories/prod.py)::

    qwen235b_bf16 = [
        ("gpu-11.internal", {"replica": "bf16-a", "replica_rank": 0}),
        ("gpu-12.internal", {"replica": "bf16-a", "replica_rank": 1}),
    ]
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from tasks.settings.base import Index, Port, Settings, checked

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")


ReplicaName = checked(lambda v: bool(_NAME.match(v)), "a name of letters, digits, '.', '_', '-' (at most 64)")
InterfaceName = checked(lambda v: bool(_IFNAME.match(v)), "a network interface name (at most 15 characters, "
                        "as `ip link` shows it)")


class ReplicaSettings(Settings):
    """Multi-node replica: every ``replica*`` key of the host data."""

    #: "replica" itself is a key (the agreed inventory shape), so the prefix has no underscore.
    prefix: ClassVar[str] = "replica"
    title: ClassVar[str] = "Multi-node replica"

    replica: ReplicaName | None = Field(
        None, description="name of the multi-node replica this host is a member of (same name on every member, "
                          "one recipe); None: a one-host replica")
    replica_rank: Index | None = Field(
        None, description="this member's node rank: 0 for the head (serves HTTP, hosts the rendezvous), 1..N-1 "
                          "for the headless workers; each rank once per replica")
    replica_master_port: Port = Field(
        29501, description="TCP port of the head's rendezvous (vLLM ``--master-port``; torch's TCPStore), equal on "
                           "every member; the head's Ray port is 6379 on the Ray path")
    replica_interface: InterfaceName | None = Field(
        None, description="interface carrying the replica's traffic (NCCL/Gloo sockets, VLLM_HOST_IP); None: the "
                          "one the member's route to the head (the head's: to rank 1) leaves by. Keep it on a "
                          "private network: vLLM's inter-node traffic is unauthenticated")
