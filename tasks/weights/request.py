"""One host's fetch as data (:class:`FetchRequest`) and the shell that runs it: ``fetch.py`` as a
transient systemd unit, its summary lines back from the journal, a failure named in one line."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.settings.weights import WeightsSettings
from tasks.weights import fetch as fetch_script

PEER_TOKEN_DIR = "/run/llmfleet"
_UNIT_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def model_dirname(repo_id: str) -> str:
    """``Qwen/Qwen3-0.6B`` -> ``Qwen--Qwen3-0.6B`` (a directory and unit-name safe form)."""
    return _UNIT_SAFE.sub("_", repo_id.replace("/", "--"))


def model_dest(spec: Any, data: Any = None) -> str:
    """The model directory for ``spec`` on a host (``<weights_root>/<owner>--<name>``); a service
    mounts ``<dest>`` and reads ``<dest>/current`` (or the resolved ``revisions/<rev>``)."""
    if isinstance(data, WeightsSettings):
        root = data.weights_root
    else:  # host data (a Host, its HostData or a mapping), or None: the default root
        root = WeightsSettings.value({} if data is None else data, "weights_root")
    return f"{str(root).rstrip('/')}/{model_dirname(spec.model.repo_id)}"


@dataclass(frozen=True)
class FetchRequest:
    """Everything one host's fetch needs (computed at plan time from the spec and host data)."""

    hub: str
    repo: str
    revision: str
    dest: str
    allow: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    endpoint: str | None = None
    token_file: str | None = None
    deep_verify: bool = False
    prune_keep: int | None = 2
    max_workers: int = 8
    venv: str = WeightsSettings.model_fields["weights_venv"].default
    scripts_dir: str = WeightsSettings.model_fields["weights_scripts_dir"].default
    chain_chunk_bytes: int = WeightsSettings.model_fields["weights_chain_chunk_bytes"].default
    chain_stall_s: int = WeightsSettings.model_fields["weights_chain_stall_s"].default

    @property
    def unit(self) -> str:
        return f"llmfleet-weights-{Path(self.dest).name}"

    @property
    def peer_unit(self) -> str:
        return f"llmfleet-weights-peer-{Path(self.dest).name}"

    @property
    def peer_token_file(self) -> str:
        """This run's fan-out token (root-only; /run: gone at reboot, removed after the fan-out)."""
        return f"{PEER_TOKEN_DIR}/{self.peer_unit}.token"

    def argv(self, peer: str | None = None, chain: tuple[str, ...] | None = None, chain_hub: bool = False) -> list[str]:
        """fetch.py's arguments: from the hub, from ``peer`` (no endpoint; the fan-out token), or in a
        chain from ``chain`` (peer URLs, nearest first) and, with ``chain_hub``, the hub last."""
        args = [f"{self.venv}/bin/python", "-u", f"{self.scripts_dir}/fetch.py"]
        args += ["--peer", peer] if peer else []
        if chain is not None:
            args += ["--chain", *(a for u in chain for a in ("--chain-from", u))]
            args += ["--chain-hub"] if chain_hub else []
            args += ["--chain-token-file", self.peer_token_file] if chain else []
            args += ["--chain-chunk-bytes", str(self.chain_chunk_bytes), "--chain-stall-s", str(self.chain_stall_s)]
        args += ["--hub", self.hub, "--repo", self.repo, "--revision", self.revision, "--dest", self.dest]
        for p in self.allow:
            args += ["--allow", p]
        for p in self.ignore:
            args += ["--ignore", p]
        hub_ok = chain_hub if chain is not None else not peer  # the hub's endpoint and token only where read
        if hub_ok and self.endpoint:
            args += ["--endpoint", self.endpoint]
        if hub_ok and self.token_file:
            args += ["--token-file", self.token_file]
        if peer:
            args += ["--token-file", self.peer_token_file]
        if self.deep_verify:
            args.append("--deep-verify")
        args += ["--max-workers", str(self.max_workers)]
        if self.prune_keep:
            args += ["--prune-keep", str(self.prune_keep)]
        return args

    @property
    def current_link(self) -> str:
        """What ``<dest>/current`` points at once this request is served."""
        return f"revisions/{self.revision.replace('/', '--')}"

    def matches(self, st: dict[str, Any]) -> bool:
        """True when the host's WeightsState shows this request served, complete and (deep) intact."""
        man = st.get("manifest") or {}
        return bool(
            st.get("current") == self.current_link
            and man.get("repo") == self.repo
            and self.revision in (man.get("revision"), man.get("commit"))
            and man.get("hub") == self.hub
            and list(man.get("allow") or []) == list(self.allow)
            and list(man.get("ignore") or []) == list(self.ignore)
            and not st.get("bad")
            and not st.get("error")
        )


def error_messages(req: FetchRequest, source: str) -> dict[int, str]:
    """fetch.py exit code -> the one line a failed host reports."""
    where = source or "the hub"
    return {
        fetch_script.EXIT_ERROR: f"unexpected error (journalctl -u {req.unit})",
        fetch_script.EXIT_USAGE: "bad arguments or unreadable token file (weights_* data, weights_token_secret)",
        fetch_script.EXIT_REPO_NOT_FOUND: f"repository {req.repo} not found at {where}",
        fetch_script.EXIT_REVISION_NOT_FOUND: f"revision {req.revision} of {req.repo} not found at {where}",
        fetch_script.EXIT_AUTH: f"{where} refused the token (401/403): check weights_token_secret",
        fetch_script.EXIT_UNREACHABLE: f"{where} unreachable or failing (connection, timeout, 5xx)",
        fetch_script.EXIT_NO_SPACE: f"not enough free disk space under {req.dest}",
        fetch_script.EXIT_VERIFY: "verification failed (bad files removed; a rerun fetches them again)",
        fetch_script.EXIT_PEER_MISMATCH: f"peer {where} serves another repository/revision/selection",
        fetch_script.EXIT_LOCKED: f"another fetch holds {req.dest}/.lock",
    }


_SUMMARY = r"^(LLMFLEET_WEIGHTS (plan|verify|reattach|current|pruned|unchanged|changed|error)|fetch\.py: )"


def run_fetch_sh(req: FetchRequest, peer: str | None, source: str, args: list[str] | None = None) -> str:
    """Shell that runs fetch.py (``args``, default ``req.argv(peer)``) as a transient unit, echoes its
    summary, and names a failure."""
    argv = " ".join(shlex.quote(a) for a in (args or req.argv(peer)))
    unit = shlex.quote(req.unit)
    cases = " ".join(
        f"{code}) msg={shlex.quote(text)};;" for code, text in error_messages(req, source).items()
    )
    return (
        "run=$(cat /proc/sys/kernel/random/uuid | tr -d -); "
        f"systemctl reset-failed {unit} 2>/dev/null; "
        f"systemd-run --unit={unit} --description={shlex.quote(f'llmfleet weights {req.repo}@{req.revision}')} "
        f"--wait --collect --quiet --service-type=exec -p LogExtraFields=LLMFLEET_RUN=$run -- {argv}; rc=$?; "
        f"journalctl --sync 2>/dev/null; journalctl -q -o cat --no-pager LLMFLEET_RUN=$run "
        f"| grep -E {shlex.quote(_SUMMARY)}; "
        f'case $rc in {cases} *) msg="fetch failed";; esac'
    )


def fetch_command(req: FetchRequest, peer: str | None, fallback_hub: bool,
                  chain: tuple[str, ...] | None = None) -> str:
    """The whole shell command of one host's fetch: hub, peer with an optional hub fallback, or a
    link of a chain (``chain``: its sources, nearest first, none for the head, which reads the hub;
    fetch.py re-attaches itself, to the hub last with ``fallback_hub``)."""
    hub_src = req.endpoint or req.hub
    fail = (
        'if [ $rc -ne 0 ]; then echo "llmfleet weights: $(hostname): $msg (fetch.py exit $rc; '
        f'journalctl -u {req.unit})" >&2; exit $rc; fi'
    )
    if chain is not None:
        args = req.argv(chain=chain, chain_hub=(fallback_hub or not chain) and req.hub == "huggingface")
        return f"{run_fetch_sh(req, None, chain[0] if chain else hub_src, args)}; {fail}"
    if not peer:
        return f"{run_fetch_sh(req, None, hub_src)}; {fail}"
    cmd = f"{run_fetch_sh(req, peer, peer)}"
    if fallback_hub:
        cmd += (
            f"; if [ $rc -eq {fetch_script.EXIT_UNREACHABLE} ] || [ $rc -eq {fetch_script.EXIT_PEER_MISMATCH} ]; then "
            f'echo "llmfleet weights: peer {peer}: $msg; falling back to {hub_src}"; '
            f"{run_fetch_sh(req, None, hub_src)}; fi"
        )
    return f"{cmd}; {fail}"




__all__ = ["FetchRequest", "PEER_TOKEN_DIR", "error_messages", "fetch_command", "model_dest", "model_dirname",
           "run_fetch_sh"]
