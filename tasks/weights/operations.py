"""The weights operations: the hub clients' venv, the fetch (hub or peer), the peer servers of a
fan-out. Each reads what it needs from the host when it runs; :mod:`tasks.weights.plan` decides
who does what."""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

from pyinfra import host
from pyinfra.api import operation

from tasks.facts.planned import declaring, read
from tasks.weights.plan import Role
from tasks.weights.request import FetchRequest, fetch_command
from tasks.weights.state import PythonPackages, normalise


@declaring(lambda venv, **_: [(PythonPackages, {"venv": venv})])
@operation()
def client_venv(venv: str, versions: dict[str, str], index_url: str | None = None,
                find_links: str | None = None):
    """
    A venv with the pinned hub clients; pip runs only when an installed version differs.

    + venv: venv directory (created with ``python3 -m venv``)
    + versions: distribution name -> exact version
    + index_url: package index (internal mirror); None = pip's default
    + find_links: wheel directory or URL; without ``index_url`` pip runs with ``--no-index``
      (plain ``http://`` sources are passed as ``--trusted-host``: pip ignores them otherwise)

    Example:

    .. code:: python

        client_venv(name="Hub clients", venv="/opt/llmfleet/venv",
                    versions={"huggingface_hub": "2.4.0", "modelscope": "1.40.2"})
    """
    have = read(PythonPackages, venv=venv)
    wrong = {n: v for n, v in versions.items() if have.get(normalise(n)) != v}
    if not wrong:
        host.noop(f"{venv}: " + ", ".join(f"{n}=={v}" for n, v in sorted(versions.items())))
        return
    py = shlex.quote(f"{venv}/bin/python")
    yield f"[ -x {py} ] || python3 -m venv {shlex.quote(venv)}"
    src = []
    if index_url:
        src += ["--index-url", shlex.quote(index_url)]
    elif find_links:
        src.append("--no-index")
    if find_links:
        src += ["--find-links", shlex.quote(find_links)]
    # pip ignores plain-http sources unless trusted; an http URL in data is the operator's choice.
    for url in (index_url, find_links):
        if url and url.startswith("http://"):
            src += ["--trusted-host", shlex.quote(urlsplit(url).hostname or "")]
    pins = " ".join(shlex.quote(f"{n}=={v}") for n, v in sorted(versions.items()))
    yield f"{py} -m pip install --quiet --disable-pip-version-check {' '.join(src)} {pins}"


@operation()
def model_fetched(req: FetchRequest, role: Role, fallback_hub: bool = True):
    """
    Fetch the model revision on this host (from the hub or a peer), unless the plan says otherwise.

    + req: the host's FetchRequest
    + role: from the plan (WeightsState facts of all hosts): skip / hub / peer / chain
    + fallback_hub: a peer that is unreachable or serves something else -> fetch from the hub (a chain
      link: the hub after every other source)

    Example: see :func:`fetch_weights`.
    """
    if role.kind == "skip":
        host.noop(role.note)
        return
    if role.kind == "chain":
        yield fetch_command(req, None, fallback_hub, chain=role.sources)
        return
    yield fetch_command(req, role.sender if role.kind == "peer" else None, fallback_hub)


@operation()
def peer_server_up(req: FetchRequest, start: bool, bind: str, port: int, max_s: int, note: str = "",
                   relay: bool = False):
    """
    Start ``peer_server.py`` over ``<dest>/current`` (``relay``: over the revision as it arrives, chunk
    by chunk, for a chain) as a transient unit and wait until it listens.

    + req: the host's FetchRequest (dest, venv, scripts dir, unit names, the token file)
    + start: False -> no-op with ``note``
    + bind: the address receivers reach this host at (an IP address)
    + port: listen port
    + max_s: RuntimeMaxSec of the unit
    + relay: serve ``req``'s revision for a chain, from the chunks verified so far (``chain.py``)

    Example: see :func:`fetch_weights`.
    """
    if not start:
        host.noop(note or "not a sender in this wave")
        return
    unit = shlex.quote(req.peer_unit)
    ready = shlex.quote(f"/run/{req.peer_unit}.url")
    what = (["--chain-dest", req.dest, "--chain-repo", req.repo, "--chain-revision", req.revision,
             "--chain-chunk-bytes", str(req.chain_chunk_bytes), "--chain-stall-s", str(req.chain_stall_s)]
            if relay else ["--model-dir", f"{req.dest}/current"])
    argv = " ".join(shlex.quote(a) for a in [
        f"{req.venv}/bin/python", "-u", f"{req.scripts_dir}/peer_server.py", *what,
        "--bind", bind, "--port", str(port), "--token-file", req.peer_token_file,
        "--ready-file", f"/run/{req.peer_unit}.url",
    ])
    yield (f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; rm -f {ready}; "
           f"systemd-run --unit={unit} --collect --quiet -p RuntimeMaxSec={int(max_s)} -- {argv} && "
           f"i=0; while [ ! -s {ready} ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done; "
           f"[ -s {ready} ] || {{ echo \"llmfleet weights: peer server did not start (journalctl -u {req.peer_unit})\" >&2;"
           " exit 1; }")


@operation()
def peer_server_down(req: FetchRequest, in_fanout: bool):
    """
    Stop this host's peer server unit and remove the run's token, on every host of the fan-out.

    + req: the host's FetchRequest
    + in_fanout: whether this host sent or received in the run's fan-out

    Example: see :func:`fetch_weights`.
    """
    if not in_fanout:
        host.noop("not part of this run's fan-out")
        return
    yield (f"systemctl stop {shlex.quote(req.peer_unit)} 2>/dev/null; "
           f"rm -f {shlex.quote(f'/run/{req.peer_unit}.url')} {shlex.quote(req.peer_token_file)}; true")


__all__ = ["client_venv", "model_fetched", "peer_server_down", "peer_server_up"]
