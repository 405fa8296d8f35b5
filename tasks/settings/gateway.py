"""Gateway settings (host data, prefix ``gateway_``): read by tasks.gateway."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from annotated_types import Ge

from pydantic import Field

from tasks.settings.base import AbsPath, Port, Positive, Settings, checked

#: An HTTP header name nginx exposes as ``$http_<name>`` (letters, digits, '-').
HeaderName = checked(lambda v: bool(re.fullmatch(r"[A-Za-z0-9-]{1,64}", v)),
                     "an HTTP header name of 1-64 letters, digits or '-'")


class GatewaySettings(Settings):
    """Gateway: every ``gateway_*`` key of the host data."""

    prefix: ClassVar[str] = "gateway_"
    title: ClassVar[str] = "Gateway"

    gateway_group: str = Field(
        "gateway", description="inventory group of gateway hosts")
    gateway_port: Port | None = Field(
        None, description="port of a model's endpoint on the gateway; None: the model's own port")
    gateway_api_keys_secret: str | None = Field(
        None, description="control-machine secret file (one key per line) of accepted client keys; None: the "
                          "recipe's ``api_key_secret``")
    gateway_upstream_address: str | None = Field(
        None, description="(replica host data) address the gateway reaches the replica at; None: ``ssh_hostname``, "
                          "else the host name")
    gateway_routing: Literal["session", "least_conn", "round_robin"] = Field(
        "session", description="how the gateway picks a replica. session: a request carrying the session header goes "
                               "to the replica its value hashes to (consistent hash: that conversation's prefix cache "
                               "stays warm there; while that replica is out, to the next on the ring), a request "
                               "without it to the replica with the fewest requests in flight; least_conn: every "
                               "request to the replica with the fewest in flight; round_robin: in turn (bench/"
                               "gateway_routing.py measured the three)")
    gateway_session_header: HeaderName = Field(
        "x-session-id", description="request header naming a conversation for ``gateway_routing: session`` (one value "
                                    "per conversation, e.g. the OpenAI SDK's ``default_headers``)")
    gateway_max_fails: Positive = Field(
        3, description="failed attempts before a replica is taken out (passive check)")
    gateway_fail_timeout_s: Positive = Field(
        5, description="seconds a failed replica stays out, and the window of ``max_fails``")
    gateway_next_upstream_tries: Positive = Field(
        3, description="replicas one request may be tried on")
    gateway_connect_timeout_s: Positive = Field(
        5, description="connect timeout to a replica")
    gateway_read_timeout_s: Positive = Field(
        900, description="read/send timeout to a replica (long generations)")
    gateway_client_max_body_size: str = Field(
        "64m", description="largest request body (long prompts, images)")
    gateway_keepalive: Annotated[int, Ge(0)] = Field(
        0, description="idle keepalive connections to the replicas per worker; 0: a connection per request (no "
                       "reuse race with a replica closing an idle connection; a LAN connect is small beside a "
                       "generation)")
    gateway_keepalive_timeout_s: Positive = Field(
        4, description="idle upstream connections close after this (below the replicas' keep-alive, uvicorn 5 s)")
    gateway_drain_timeout_s: Positive = Field(
        300, description="seconds a drain waits for in-flight requests of the old workers")
    gateway_conf_dir: AbsPath = Field(
        "/etc/nginx/llmfleet", description="directory of upstream and key files (0750 root)")
