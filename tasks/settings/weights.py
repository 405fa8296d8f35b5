"""Weights settings (host data, prefix ``weights_``): read by tasks.weights.deploy."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tasks.settings.base import AbsPath, HttpUrl, Port, Positive, Settings, Version


class WeightsSettings(Settings):
    """Weights: every ``weights_*`` key of the host data. ``weights_fanout``, ``weights_fanout_mode``,
    ``weights_fanout_width``, ``weights_cache_host`` and ``weights_chain_chunk_bytes`` shape the whole
    fan-out: every host of a run must say the same
    (``tasks.weights.deploy.fleet_settings``)."""

    prefix: ClassVar[str] = "weights_"
    title: ClassVar[str] = "Weights"

    weights_root: AbsPath = Field(
        "/srv/models", description="parent of the model directories (``<root>/<owner>--<name>``)")
    weights_hf_endpoint: HttpUrl | None = Field(
        None, description="Hugging Face endpoint / mirror (HF_ENDPOINT), None = huggingface.co")
    weights_modelscope_endpoint: HttpUrl | None = Field(
        None, description="ModelScope endpoint / mirror, None = the client's default")
    weights_token_secret: str | None = Field(
        None, description="NAME of the token file under the control machine's ``secrets/`` "
                          "(``LLMFLEET_SECRETS_DIR``)")
    weights_secrets_dir: AbsPath = Field(
        "/etc/llmfleet/secrets", description="root-only (0700) directory the token is installed into (0600)")
    weights_fanout: bool = Field(
        False, description="spread copies host to host (one hub copy per group)")
    weights_fanout_mode: Literal["chain", "waves"] = Field(
        "chain", description="how copies spread: ``chain`` pipelines (a host passes on each verified chunk while it "
                             "still receives: N hosts in about one download), ``waves`` (a host sends once it holds the "
                             "whole copy: log2 N downloads); bench/weights_fanout.py measures both")
    weights_fanout_width: Positive = Field(
        1, description="receivers one sender feeds per wave (1 keeps each link at full speed); waves only")
    weights_chain_chunk_bytes: Positive = Field(
        1 << 20, description="chain: unit of verification and of passing on (each hop adds one chunk's transfer time)")
    weights_chain_stall_s: Positive = Field(
        60, description="chain: longest wait for a source's next chunk before re-attaching to the next source")
    weights_link_mbit: Positive | None = Field(
        None, description="the host's link speed; a chain runs from the fastest host to the slowest, so a slow host "
                          "is last and holds no one back; None = as fast as any")
    weights_fanout_group: str | None = Field(
        None, description="fan-out group of the host (set per inventory group: one hub copy per group); None = the "
                          "whole run is one group")
    weights_cache_host: str | None = Field(
        None, description="inventory host that fetches from the hub first (the only hub seed); None = one per group")
    weights_fanout_fallback_hub: bool = Field(
        True, description="a receiver whose sender is unreachable fetches from the hub instead")
    weights_peer_port: Port = Field(
        8765, description="port of ``peer_server.py`` on senders (open it between hosts)")
    weights_peer_address: str | None = Field(
        None, description="address other hosts reach this host's peer server at, and the only one it binds (names "
                          "are resolved on the control machine); None = ``ssh_hostname`` or the host name")
    weights_peer_max_s: Positive = Field(
        21600, description="RuntimeMaxSec of a peer server unit (safety net if a run is interrupted)")
    weights_deep_verify: bool = Field(
        False, description="re-hash every file at plan time; damaged files are fetched again (only those)")
    weights_prune_keep: Positive | None = Field(
        2, description="revisions kept after a switch (current + previous; the current revision counts); None: "
                       "never prune")
    weights_max_workers: Positive = Field(
        8, description="parallel file downloads per host")
    weights_venv: AbsPath = Field(
        "/opt/llmfleet/venv", description="venv llmfleet owns on the host (hub clients)")
    weights_scripts_dir: AbsPath = Field(
        "/opt/llmfleet/weights", description="where fetch.py and its siblings are uploaded")
    weights_pip_index_url: HttpUrl | None = Field(
        None, description="package index for the venv (internal mirror); None = pip's default")
    weights_pip_find_links: str | None = Field(
        None, description="wheel directory/URL; set without an index for air-gapped installs (``--no-index``)")
    weights_client_versions: dict[str, Version] = Field(
        {"huggingface_hub": "2.4.0", "modelscope": "1.40.2"}, description="pinned client versions")
