"""The fleet gateway: nginx (Debian's package) on the hosts of the inventory group ``gateway``,
one OpenAI-compatible endpoint per served model balancing the replicas that serve it.

Choices, and why:

- Routing: one gateway port per served model (``gateway_port``, default the model's own port).
  OpenAI clients name the model in the JSON body, which stock nginx cannot route on without njs
  (not in Debian 12's nginx); a port per model keeps ``/v1/models`` truthful for each endpoint
  and needs no module. Clients set ``base_url=http://<gateway>:<port>/v1``.
- Replicas: ``upstream llmfleet_<name>`` lists every inventory host that serves the recipe (the
  whole inventory, not only ``--limit``: a limited run never drops replicas), at
  ``gateway_upstream_address`` (host data of the replica), else its ``ssh_hostname``, else its
  name, and the replica's ``spec.port``. The upstream lives in its own file,
  ``/etc/nginx/llmfleet/<name>.upstream.conf``; each server line ends with ``# <inventory host>``,
  which is how a drain finds it again.
- Balancing (``gateway_routing``): ``session`` (default) sends a request carrying the session
  header (``gateway_session_header``, ``x-session-id``) to the replica its value hashes to on a
  consistent ring, so each turn of a conversation finds the previous turns in that replica's prefix
  cache; requests without it go to the replica with the fewest requests in flight (``least_conn``).
  A header, not the OpenAI ``user`` body field: stock nginx has no JSON parser (no njs in Debian
  12) and its ``$request_body`` is empty once a long conversation outgrows the body buffer. ``least_conn`` and
  ``round_robin`` are the alternatives ``bench/gateway_routing.py`` measured; nginx rather than the
  Rust ``vllm-router``: its ``consistent_hash`` does what nginx's hash does, its ``cache_aware``
  policy did no prefix matching against plain vLLM workers, it took ~158 s to mark a killed worker
  unhealthy, and it checks no client keys (issue 18's measurements; README "Gateway routing").
- Health: nginx OSS has no active checks. Passive checks (``max_fails``/``fail_timeout``,
  ``proxy_next_upstream error timeout http_502 http_503 http_504``) take a dead replica out for
  ``fail_timeout`` and retry the request on the next one (a refused connection is retried for
  POSTs too, nothing having been sent). The active check is llmfleet's own: during a rollout a
  replica goes back into the upstream only after its verification passed (tasks/rollout/), and
  ``deploys/status.py`` shows each replica's health. No periodic checker runs on the gateway.
- Drain: the replica's line gets ``down`` and nginx reloads gracefully: new workers stop sending
  it requests at once, the old workers finish their in-flight requests and exit. The operation
  waits (``gateway_drain_timeout_s``) for the old workers' PIDs to exit, so a drained replica has
  no request in flight when its restart begins.
- API keys: ``map $http_authorization`` against ``/etc/nginx/llmfleet/<name>.keys`` (root, 0600:
  nginx's master reads includes as root), one ``"Bearer <key>" 1;`` per accepted key, from the
  control-machine secret ``gateway_api_keys_secret`` (one key per line), else the recipe's own
  ``api_key_secret``. Requests with another key get 401 from the gateway. The replicas' key is
  set on the way upstream from ``/etc/nginx/llmfleet/<name>.backend`` (root, 0600), so client
  keys can be rotated apart from the servers' key. Neither file is shown in any diff or output
  (``secret_conf`` compares sha256 digests only) and the main config includes them by path. A
  recipe without ``api_key_secret`` and without gateway keys gives an open endpoint (warned).
- Gateway hosts do not serve models: ``deploy_model`` does only the gateway's part on them.

Settings (host data, prefix ``gateway_``): ``tasks.settings.gateway.GatewaySettings``, each key
described there once (README.md's settings table is generated from it).
"""

from __future__ import annotations

from functools import partial

import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pyinfra import host, logger
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, deploy, operation
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from tasks.converge import deb_packages
from tasks.secrets import read_secret, secret_file, secrets_dir
from tasks.spec import SpecError
from tasks.settings.gateway import GatewaySettings

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "templates" / "nginx.conf.j2"

DEFAULTS: dict[str, Any] = GatewaySettings.defaults()
#: Where each model's per-request upstream log goes (Debian's nginx rotates /var/log/nginx/*.log).
UPSTREAM_LOG_DIR = "/var/log/nginx"

#: What a key may contain to sit in an nginx map between double quotes, unescaped.
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{8,256}$")
_SERVER = re.compile(r"^\s*server\s+(\S+)\s+([^#]*?);\s*#\s*(\S+)\s*$")


def is_gateway(h: Any) -> bool:
    """Whether an inventory host (``pyinfra.api.Host``) is a gateway (in ``gateway_group``)."""
    return GatewaySettings.value(h, "gateway_group") in (h.groups or [])


def nginx_var(name: str) -> str:
    """A service name as part of an nginx variable/upstream name (letters, digits, '_')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


@dataclass(frozen=True)
class Replica:
    """One replica in a model's upstream: inventory host, address, port."""

    host: str
    address: str
    port: int


@dataclass(frozen=True)
class GatewayModel:
    """What a gateway needs to know about one served model."""

    name: str
    served_model_name: str
    listen_port: int
    replicas: tuple[Replica, ...]
    api_key_secret: str | None


def replica_address(data: Any, name: str) -> str:
    """Where the gateway reaches a replica: ``gateway_upstream_address``, ``ssh_hostname``, name."""
    return str(options(data).gateway_upstream_address or data.get("ssh_hostname") or name)


# --- rendering (pure) ----------------------------------------------------------------------------


def session_var(header: str) -> str:
    """nginx's variable of a request header (``x-session-id`` -> ``$http_x_session_id``)."""
    return "$http_" + header.lower().replace("-", "_")


def upstream_conf(name: str, replicas: Iterable[Replica], down: Iterable[str], opts: GatewaySettings) -> str:
    """The upstream file of a model; replicas whose host is in ``down`` are marked ``down``.

    ``llmfleet_<name>`` balances by ``gateway_routing`` (least_conn for ``session``); with ``session``
    a second group, ``llmfleet_<name>_session``, of the same servers hashes the session header onto a
    consistent ring. Each group has a shared-memory zone, so every nginx worker sees the same requests
    in flight (least_conn) and the same failed replicas (passive health), and a drain marks both.
    """
    down = set(down)
    servers = []
    for r in replicas:
        if not re.fullmatch(r"[A-Za-z0-9_.:\[\]-]+", r.address):
            raise SpecError("gateway_upstream_address", f"{r.host}: {r.address!r} is not a host name or address")
        mark = " down" if r.host in down else ""
        servers.append(f"    server {r.address}:{int(r.port)} max_fails={opts.gateway_max_fails} "
                       f"fail_timeout={opts.gateway_fail_timeout_s}s{mark};  # {r.host}")
    # Idle upstream connections close before the replica's own keep-alive timeout (uvicorn: 5 s),
    # so nginx does not reuse a connection the replica is closing.
    keepalive = ([f"    keepalive {opts.gateway_keepalive};", f"    keepalive_timeout {opts.gateway_keepalive_timeout_s}s;"]
                 if opts.gateway_keepalive > 0 else [])
    var = nginx_var(name)
    groups = [(f"llmfleet_{var}", {"session": "least_conn;", "least_conn": "least_conn;", "round_robin": None}[
        opts.gateway_routing])]
    if opts.gateway_routing == "session":
        groups.append((f"llmfleet_{var}_session", f"hash {session_var(opts.gateway_session_header)} consistent;"))
    lines = [f"# Managed by llmfleet (tasks/gateway.py): replicas of {name}; 'down' = drained; "
             f"routing: {opts.gateway_routing}."]
    for group, method in groups:
        lines += [f"upstream {group} {{", *([f"    {method}"] if method else []), f"    zone {group} 256k;",
                  *servers, *keepalive, "}"]
    return "\n".join(lines + [""])


def parse_upstream(text: str) -> dict[str, bool]:
    """Inventory host -> drained (``down``) from an upstream file written by :func:`upstream_conf`."""
    out: dict[str, bool] = {}
    for line in text.splitlines():
        m = _SERVER.match(line)
        if m:
            out[m.group(3)] = "down" in m.group(2).split()
    return out


def read_keys(path: Path, field: str) -> list[str]:
    """Client keys from a control-machine secret file (one per line); the message never shows one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(field, f"secret file {path} is unreadable: {exc.__class__.__name__}") from None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise SpecError(field, f"secret file {path} holds no key")
    for i, key in enumerate(keys, 1):
        if not _KEY.match(key):
            raise SpecError(field, f"secret file {path}, key {i}: 8-256 characters of A-Z a-z 0-9 . _ ~ + / = -")
    return keys


def keys_conf(keys: list[str]) -> str:
    return "".join(f'"Bearer {k}" 1;\n' for k in keys)


def backend_conf(key: str) -> str:
    return f'proxy_set_header Authorization "Bearer {key}";\n'


def key_sources(model: GatewayModel, data: Any) -> tuple[Path | None, Path | None]:
    """(client keys file, replicas' key file) on the control machine; None where there is none."""
    base = secrets_dir(data)
    backend = base / model.api_key_secret if model.api_key_secret else None
    clients = options(data).gateway_api_keys_secret
    client_path = base / str(clients) if clients else backend
    return client_path, backend


def _secret(path: Path) -> str:
    try:
        return read_secret(path, "api_key_secret")
    except ValueError as exc:
        raise SpecError("api_key_secret", str(exc).split(": ", 1)[1]) from None


def check_keys(model: GatewayModel, data: Any) -> None:
    """Plan-time check of the key files (exist, well formed); raises SpecError naming the field."""
    clients, backend = key_sources(model, data)
    if backend is not None:
        if not backend.is_file():
            raise SpecError("api_key_secret", f"secret file {backend} does not exist")
        if not _KEY.match(_secret(backend)):
            raise SpecError("api_key_secret", f"secret file {backend}: the key must be 8-256 characters of "
                            "A-Z a-z 0-9 . _ ~ + / = - to pass through the gateway")
    if clients is not None:
        if not clients.is_file():
            raise SpecError("gateway_api_keys_secret", f"secret file {clients} does not exist")
        read_keys(clients, "gateway_api_keys_secret")


def secret_content(kind: str, source: str) -> bytes:
    """Content of a root-only include: ``keys`` (map lines) or ``backend`` (header line)."""
    if kind == "keys":
        return keys_conf(read_keys(Path(source), "gateway_api_keys_secret")).encode()
    if kind == "backend":
        return backend_conf(_secret(Path(source))).encode()
    raise ValueError(f"kind must be 'keys' or 'backend', got {kind!r}")


# --- facts and operations -------------------------------------------------------------------------


class UpstreamFile(FactBase):
    """
    The text of an upstream file written by llmfleet (:func:`parse_upstream` reads its drain
    marks); None when the file is absent.
    """

    default = type(None)

    def command(self, path: str) -> str:
        q = shlex.quote(path)
        return f"if [ -f {q} ]; then echo present; cat {q}; fi"

    def process(self, output):
        if not output or output[0].strip() != "present":
            return None
        return "\n".join(output[1:]) + "\n"


def _reload_script(path: str, temp: str, drain_timeout_s: int) -> str:
    """Put ``temp`` in place of ``path``, test, reload gracefully and wait for the old workers.

    A failing ``nginx -t`` puts the previous file back. The old workers' PIDs are taken before
    the reload; each exits once its in-flight requests are done.
    """
    p, t = shlex.quote(path), shlex.quote(temp)
    ticks = max(1, int(drain_timeout_s) * 5)
    return (
        f"set -e; if [ -f {p} ]; then cp -p {p} {p}.llmfleet-prev; fi; mv -f {t} {p}; "
        f"if ! nginx -t -q; then if [ -f {p}.llmfleet-prev ]; then mv -f {p}.llmfleet-prev {p}; "
        f"else rm -f {p}; fi; echo 'llmfleet gateway: nginx -t refused {path}' >&2; exit 1; fi; "
        f"rm -f {p}.llmfleet-prev; old=$(pgrep -f '^nginx: worker' || true); "
        "if systemctl is-active -q nginx; then nginx -s reload; else systemctl restart nginx; fi; "
        f"for pid in $old; do n=0; while kill -0 \"$pid\" 2>/dev/null; do n=$((n+1)); "
        f"if [ $n -gt {ticks} ]; then echo \"llmfleet gateway: worker $pid still busy after "
        f"{int(drain_timeout_s)} s\" >&2; break; fi; sleep 0.2; done; done"
    )


@operation()
def upstream(service: str, path: str, replicas: list[Replica], opts: GatewaySettings,
             drain: Callable[[], list[str]] | None = None,
             restore: Callable[[], list[str]] | None = None, reload: bool = True):
    """
    Write a model's upstream file (``down`` marks kept), drain or put back replicas, reload nginx
    gracefully and wait for in-flight requests of the old workers.

    The replicas to drain/restore are asked for when the operation runs (``drain()``,
    ``restore()``): during a rollout that depends on what happened to earlier operations.

    + service: service name (``spec.name``)
    + path: the upstream file (``<gateway_conf_dir>/<name>.upstream.conf``)
    + replicas: every replica of the model
    + opts: ``gateway_*`` settings
    + drain: inventory hosts to mark ``down``
    + restore: inventory hosts to put back
    + reload: reload nginx when the file changed (False before the server block exists)

    Example:

    .. code:: python

        upstream(service="qwen30b", path="/etc/nginx/llmfleet/qwen30b.upstream.conf",
                 replicas=[Replica("h1", "10.0.0.1", 8000)], opts=options(host.data),
                 drain=lambda: ["h1"])
    """
    current = host.get_fact(UpstreamFile, path=path)
    down = {h for h, d in parse_upstream(current or "").items() if d}
    known = {r.host for r in replicas}
    to_drain = set(drain() if drain else []) & known
    to_restore = set(restore() if restore else [])
    wanted = (down | to_drain) - to_restore
    content = upstream_conf(service, replicas, wanted, opts)
    if current == content:
        host.noop(f"upstream of {service}: " + (f"down: {', '.join(sorted(wanted & known))}" if wanted & known
                                              else "every replica in"))
        return
    temp = f"{path}.llmfleet-new"
    yield StringCommand("install", "-d", "-m", "750", "-o", "root", "-g", "root", os.path.dirname(path))
    yield FileUploadCommand(io.BytesIO(content.encode()), temp)
    if reload:
        yield _reload_script(path, temp, opts.gateway_drain_timeout_s)
    else:
        yield StringCommand("mv", "-f", temp, path)


@operation()
def secret_conf(path: str, kind: str, source: str):
    """
    Write a root-only (0600) nginx include holding keys, without ever showing its content.

    Through ``tasks.secrets.secret_file``: the content is built in the operation from a control-machine
    secret file (never an argument), compared by sha256, uploaded without a diff under a
    temporary name and renamed into place.

    + path: the include on the gateway (``/etc/nginx/llmfleet/<name>.keys`` or ``.backend``)
    + kind: ``keys`` (accepted client keys, map lines) or ``backend`` (the replicas' key header)
    + source: control-machine path of the secret file

    Example:

    .. code:: python

        secret_conf(path="/etc/nginx/llmfleet/qwen30b.keys", kind="keys", source="secrets/gw_keys")
    """
    yield from secret_file._inner(dest=path, content_of=partial(secret_content, kind, source), dir_mode="750")


@operation(is_idempotent=False)
def reloaded():
    """
    Test the nginx configuration and reload it (start nginx when it is not running).

    Guard it with ``_if`` on the operations that changed the configuration.

    Example:

    .. code:: python

        reloaded(_if=any_changed(conf, keys))
    """
    yield "nginx -t -q && if systemctl is-active -q nginx; then nginx -s reload; else systemctl restart nginx; fi"


def options(data: Any) -> GatewaySettings:
    """The ``gateway_*`` settings of a host (its Host, HostData or a mapping), validated."""
    return GatewaySettings.of(data)


def paths(name: str, opts: GatewaySettings) -> dict[str, str]:
    base = opts.gateway_conf_dir.rstrip("/")
    return {"upstream": f"{base}/{name}.upstream.conf", "keys": f"{base}/{name}.keys",
            "backend": f"{base}/{name}.backend", "conf": f"/etc/nginx/conf.d/llmfleet-{name}.conf",
            "log": f"{UPSTREAM_LOG_DIR}/llmfleet-{name}.upstreams.log"}


@deploy("Gateway", data_defaults=DEFAULTS)
def gateway(model: GatewayModel) -> None:
    """
    nginx on a gateway host with one endpoint for ``model``: package, upstream (drain marks kept),
    root-only key includes, the server block; reloads only when something changed.

    + model: the served model and its replicas (``tasks.rollout`` builds it from the inventory)

    Example:

    .. code:: python

        gateway(GatewayModel("qwen30b", "coder", 8000, (Replica("h1", "10.0.0.1", 8000),), "qwen_key"))
    """
    opts = options(host.data)
    p = paths(model.name, opts)
    check_keys(model, host.data)
    clients, backend = key_sources(model, host.data)
    if clients is None:
        logger.warning(f"{host.print_prefix}gateway for {model.name}: no API key configured: the endpoint is open")

    # deb_packages, not apt.packages: it finishes a dpkg run a power loss interrupted first.
    deb_packages(name="nginx", packages=["nginx"], cache_time=86400)
    files.directory(name=f"{model.name}: gateway config directory", path=opts.gateway_conf_dir,
                    user="root", group="root", mode="750")
    changed = []
    if clients is not None:
        changed.append(secret_conf(name=f"{model.name}: accepted API keys", path=p["keys"], kind="keys",
                                   source=str(clients)))
    else:
        changed.append(files.file(name=f"{model.name}: no accepted-keys file", path=p["keys"], present=False))
    if backend is not None:
        changed.append(secret_conf(name=f"{model.name}: replicas' API key", path=p["backend"], kind="backend",
                                   source=str(backend)))
    else:
        changed.append(files.file(name=f"{model.name}: no replicas' key file", path=p["backend"], present=False))
    changed.append(upstream(name=f"{model.name}: upstream (replicas)", path=p["upstream"],
                            service=model.name, replicas=list(model.replicas), opts=opts, reload=False))
    conf = files.template(
        name=f"{model.name}: gateway server block", src=str(TEMPLATE), dest=p["conf"], user="root", group="root",
        mode="644", name_=model.name, served_model_name=model.served_model_name, var=nginx_var(model.name),
        listen_port=int(model.listen_port), upstream_file=p["upstream"], keys_file=p["keys"],
        backend_file=p["backend"], open_=clients is None, backend=backend is not None,
        client_max_body_size=opts.gateway_client_max_body_size,
        next_upstream_tries=opts.gateway_next_upstream_tries,
        connect_timeout_s=opts.gateway_connect_timeout_s, read_timeout_s=opts.gateway_read_timeout_s,
        keepalive=opts.gateway_keepalive > 0, upstream_log=p["log"],
        session_var=session_var(opts.gateway_session_header) if opts.gateway_routing == "session" else "",
    )
    systemd.service(name="nginx running", service="nginx.service", running=True, enabled=True)
    reloaded(name=f"{model.name}: reload nginx", _if=any_changed(conf, *changed))


__all__ = ["DEFAULTS", "GatewayModel", "Replica", "UpstreamFile", "backend_conf", "check_keys", "gateway",
           "is_gateway", "keys_conf", "nginx_var", "options", "parse_upstream", "paths", "read_keys",
           "reloaded", "replica_address", "secret_conf", "session_var", "upstream", "upstream_conf"]
